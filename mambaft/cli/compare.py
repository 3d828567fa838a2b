"""`mambaft compare`: several models side by side, with a report (mambaft.evaluate.compare).

    mambaft compare base.pt runs/ckpt-5000 runs/ckpt-10000 runs/final --out runs/compare [--limit 20]
"""
from __future__ import annotations

from typing import Optional

from mambaft.cli.evaluate import build_parser, check_args, kwargs_from_args
from mambaft.evaluate.compare import compare_models, markdown_table


def main(argv: Optional[list] = None) -> int:
    p = build_parser("mambaft compare", one_model=False)
    p.description = "Compare several models side by side (table, plots, markdown + HTML report)."
    p.add_argument("models", nargs="+", help="checkpoints, model folders or results.json files")
    p.add_argument("--names", nargs="*", help="one label per model")
    a = p.parse_args(argv)
    check_args(p, a)
    if not a.out:
        p.error("--out DIR is required")
    from mambaft.runtime import seed_everything, set_threads
    set_threads(a.threads)
    seed_everything(a.seed)
    res = compare_models(a.models, a.out, names=a.names, reference=a.reference, **kwargs_from_args(a))
    print(markdown_table(res["rows"]))
    for k, v in res["files"].items():
        print(f"{k}: {v}")
    return 1 if any(r.get("errors") for r in res["results"]) else 0
