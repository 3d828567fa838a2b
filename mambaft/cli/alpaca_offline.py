"""`mambaft alpaca-offline`: an Alpaca-format file built from real offline data, for the epoch bench (mambaft.bench.alpaca_offline).

    mambaft alpaca-offline --rows 3000 --out outputs/alpaca_offline.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mambaft.bench.alpaca_offline import alpaca_records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mambaft alpaca-offline", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=3000, help="records to write")
    p.add_argument("--out", required=True, help="the .json file to write")
    a = p.parse_args(argv)
    recs = alpaca_records(a.rows)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(recs, ensure_ascii=False, indent=0), encoding="utf-8")
    print(f"wrote {len(recs)} Alpaca-format records (ShareGPT V3 first exchanges) to {a.out}", file=sys.stderr)
    return 0
