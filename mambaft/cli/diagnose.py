"""`mambaft diagnose`: diagnose a base model: reach, dead parameters, end token, symptoms (mambaft.evaluate.diagnosis).

    mambaft diagnose --model PATH [--out runs/diagnosis]
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from mambaft.evaluate.diagnosis import diagnose, write_report


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="mambaft diagnose", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="original .pt checkpoint or mambaft model folder")
    p.add_argument("--out", help="folder for diagnosis.json and diagnosis.md")
    p.add_argument("--max-new", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trials", type=int, default=3, help="random sequences for the receptive field")
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    from mambaft.runtime import seed_everything, set_threads
    set_threads(a.threads)
    seed_everything(a.seed)
    d = diagnose(a.model, max_new_tokens=a.max_new, seed=a.seed, trials=a.trials)
    print(d["verdict"])
    if a.out:
        for f in write_report(d, Path(a.out)):
            print(f"wrote {f}")
    return 0
