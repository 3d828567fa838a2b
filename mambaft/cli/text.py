"""`mambaft text`: the plain-text sources, or a few documents of one (mambaft.data.text).

    mambaft text                        # the sources: language, offline or hub, licence
    mambaft text wiki_fr 3 heldout      # print 3 held-out documents
"""
from __future__ import annotations

import argparse

from mambaft.data.text import TEXT_SOURCES, load_text_documents


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mambaft text", description=__doc__.splitlines()[0])
    p.add_argument("name", nargs="?", help="a text source, file or folder (none: list the sources)")
    p.add_argument("n", nargs="?", type=int, default=3, help="documents to print")
    p.add_argument("split", nargs="?", default="train", choices=["train", "heldout", "all"])
    a = p.parse_args(argv)
    if not a.name:
        for s in TEXT_SOURCES.values():
            print(f"{s.name:<12} {s.lang}  {'offline' if s.offline else 'hub    '}  {s.license:<28} {s.what}")
        return 0
    for d in load_text_documents(a.name, a.n, split=a.split):
        print(f"--- {d['id']} [{d['lang']}, {d['license']}] {len(d['text'])} chars\n{d['text'][:400]}")
    return 0
