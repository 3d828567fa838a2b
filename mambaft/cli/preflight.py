"""`mambaft preflight`: check GPUs, free memory and NCCL peer-to-peer before a multi-GPU launch (mambaft.train.preflight).

    mambaft preflight --num-processes 6        # exit status 1 when a check fails
    mambaft preflight --num-processes 6 --json # one JSON object: ok, lines, advice, env, blocking
"""
from __future__ import annotations

import argparse
import json

from mambaft.train.preflight import MIN_FREE_GB, preflight


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mambaft preflight", description=__doc__.splitlines()[0])
    p.add_argument("--num-processes", type=int, default=0, help="GPUs the launch will use (0: all)")
    p.add_argument("--min-free-gb", type=float, default=MIN_FREE_GB)
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    a = p.parse_args(argv)
    rep = preflight(a.num_processes, a.min_free_gb)
    print(json.dumps(rep.to_dict()) if a.json else rep.text())
    return 0 if rep.ok else 1
