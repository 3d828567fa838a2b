"""`mambaft repetition`: the repeated n-gram and distinct-n rates of a text (mambaft.evaluate.metrics).

    mambaft repetition "the cat sat on the mat the cat sat on the mat"
"""
from __future__ import annotations

import argparse

from mambaft.evaluate.metrics import distinct_n, repeated_ngram_rate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mambaft repetition", description=__doc__.splitlines()[0])
    p.add_argument("text", nargs="*")
    a = p.parse_args(argv)
    text = " ".join(a.text) or "the cat sat on the mat the cat sat on the mat"
    print({f"rep_{n}": repeated_ngram_rate(text, n) for n in (1, 2, 3, 4)},
          {f"distinct_{n}": distinct_n([text], n) for n in (1, 2)})
    return 0
