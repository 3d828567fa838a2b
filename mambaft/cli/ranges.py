"""`mambaft ranges`: the measured ranges of demo course runs, min-max over run folders (mambaft.course.ranges).

    mambaft ranges outputs/runs/*                 # print the table and the ranges
    mambaft ranges outputs/runs/* --markdown ranges.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from mambaft.course.ranges import RunFolderError, bounds_line, markdown, ranges, read_run


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="mambaft ranges", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders written by `mambaft course`")
    p.add_argument("--markdown", help="also write the table to this file")
    p.add_argument("--json", help="also write the records and ranges to this file")
    a = p.parse_args(argv)
    try:
        records = [read_run(r) for r in a.runs]
    except (RunFolderError, json.JSONDecodeError) as e:
        print(f"mambaft ranges: {e}", file=sys.stderr)
        return 2
    text = markdown(records)
    print(text, end="")
    if a.markdown:
        Path(a.markdown).write_text(text, encoding="utf-8")
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": records, "ranges": ranges(records)}, indent=2) + "\n",
                                encoding="utf-8")
    bad = [r["run"] for r in records if not r["meets_bounds"]]
    if bad:
        print(f"outside the bounds: {', '.join(bad)}")
        for r in records:
            if not r["meets_bounds"]:
                print(f"  {r['run']}: fails {', '.join(r['fails'])}")
        print(bounds_line())
    return 0
