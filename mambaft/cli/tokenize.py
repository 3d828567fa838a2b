"""`mambaft tokenize`: the GPT-2 token ids of a text, and the text they decode to (mambaft.tokenizer).

    mambaft tokenize "Hello world"       # -> [15496, 995]
"""
from __future__ import annotations

import argparse

from mambaft.tokenizer import load_tokenizer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mambaft tokenize", description=__doc__.splitlines()[0])
    p.add_argument("text", nargs="*")
    a = p.parse_args(argv)
    t = load_tokenizer()
    ids = t.encode(" ".join(a.text) or "Hello world")
    print(ids)
    print(repr(t.decode(ids)))
    return 0
