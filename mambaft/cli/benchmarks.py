"""`mambaft benchmarks`: multiple-choice benchmarks by log-likelihood (mambaft.evaluate.benchmarks).

    mambaft benchmarks --model PATH --limit 100 [--source offline|hub|auto]
"""
from __future__ import annotations

import argparse
from typing import Optional

from mambaft.evaluate.benchmarks import BENCHMARKS, result_line, run_benchmarks


def main(argv: Optional[list] = None) -> None:
    from mambaft.evaluate.lm import load_lm

    p = argparse.ArgumentParser(prog="mambaft benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint path, or 'smollm2' for the reference")
    p.add_argument("--bench", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--source", default="auto")
    a = p.parse_args(argv)
    lm = load_lm(a.model)
    for name, r in run_benchmarks(lm, a.bench, a.limit, a.source, progress=True).items():
        print(f"{name:<10} {result_line(r)}")
