"""`mambaft preflight`: check GPUs, free memory and NCCL peer-to-peer before a multi-GPU launch (mambaft.train.preflight).

    mambaft preflight --num-processes 6        # exit status 1 when a check fails
"""
from __future__ import annotations

import argparse

from mambaft.train.preflight import MIN_FREE_GB, preflight


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mambaft preflight", description=__doc__.splitlines()[0])
    p.add_argument("--num-processes", type=int, default=0, help="GPUs the launch will use (0: all)")
    p.add_argument("--min-free-gb", type=float, default=MIN_FREE_GB)
    a = p.parse_args(argv)
    rep = preflight(a.num_processes, a.min_free_gb)
    print(rep.text())
    return 0 if rep.ok else 1
