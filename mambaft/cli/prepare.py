"""Build the training dataset of a strategy: load, clean, render, deduplicate, split, mix, save.

    mambaft prepare --strategy smoke --out outputs/data_smoke
    mambaft prepare --strategy quick --source alpaca=./alpaca_data.json --out outputs/data_quick
    mambaft prepare --strategy specialized --set domain=code --out outputs/data_code

The library is mambaft.data.prepare (`prepare(cfg, out_dir, sources)`; what it writes is described there).
"""
from __future__ import annotations

import argparse

from mambaft.data.planner import format_plan
from mambaft.data.prepare import prepare, summary
from mambaft.data.sources import SOURCES


def main(argv=None) -> int:
    from mambaft.config import STRATEGIES, make_config, parse_overrides

    ap = argparse.ArgumentParser(prog="mambaft prepare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--strategy", choices=STRATEGIES, default="conversational")
    ap.add_argument("--source", action="append", default=[], metavar="NAME=HUB_ID_OR_PATH",
                    help=f"override or add a source; names: {', '.join(SOURCES)}")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--force", action="store_true",
                    help="OUT is another command's or holds other files: move it aside to OUT.replaced-<time>")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    srcs = {}
    for item in a.source:
        if "=" not in item:
            ap.error(f"--source {item!r}: expected NAME=HUB_ID_OR_PATH")
        k, v = item.split("=", 1)
        srcs[k] = v
    cfg = make_config(a.strategy, **parse_overrides(a.set))
    stats = prepare(cfg, a.out, sources=srcs, progress=not a.quiet, force=a.force)
    print(summary(stats))
    print(format_plan(stats["plan"]))
    print(f"wrote {a.out}")
    return 0
