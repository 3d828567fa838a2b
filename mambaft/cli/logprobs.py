"""`mambaft logprobs`: the per-token log-probabilities of a text under a model (mambaft.evaluate.lm).

    mambaft logprobs --model PATH "The capital of France is"
"""
from __future__ import annotations

import argparse
from typing import Optional

from mambaft.evaluate.lm import load_lm


def main(argv: Optional[list] = None) -> None:
    p = argparse.ArgumentParser(prog="mambaft logprobs", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("text")
    a = p.parse_args(argv)
    lm = load_lm(a.model)
    ids = lm.encode(a.text)
    for t, lp in zip(ids[1:], lm.token_logprobs([ids])[0].tolist()):
        print(f"{lm.decode([t])!r:>20}  {lp:8.3f}")
