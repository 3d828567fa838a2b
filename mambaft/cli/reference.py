"""`mambaft reference`: greedy replies of the SmolLM2-135M-Instruct reference model (mambaft.evaluate.reference).

    mambaft reference "What is the capital of France?"
"""
from __future__ import annotations

import argparse
from typing import Optional

from mambaft.evaluate.reference import load_reference


def main(argv: Optional[list] = None) -> None:
    p = argparse.ArgumentParser(prog="mambaft reference", description=__doc__.splitlines()[0])
    p.add_argument("questions", nargs="+")
    p.add_argument("--new", type=int, default=48)
    a = p.parse_args(argv)
    lm = load_reference()
    for q, r in zip(a.questions, lm.replies([[{"role": "user", "content": q}] for q in a.questions], a.new)):
        print(f"User: {q}\nAssistant: {r.answer}   [{r.stopped_by}, {r.n_new} tokens]")
