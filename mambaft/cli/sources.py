"""`mambaft sources`: the table of instruction data sources, where each comes from and its licence (mambaft.data.sources).

    mambaft sources
"""
from __future__ import annotations

import argparse

from mambaft.data.sources import describe


def main(argv=None) -> int:
    argparse.ArgumentParser(prog="mambaft sources", description=__doc__.splitlines()[0]).parse_args(argv)
    print(describe())
    return 0
