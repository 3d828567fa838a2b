"""`mambaft info`: describe a checkpoint, or convert it (mambaft.checkpoint).

    mambaft info PATH                                # describe a checkpoint
    mambaft info PATH --to OUT [--format original|folder|hf]
"""
from __future__ import annotations

import argparse

from mambaft.checkpoint import load_checkpoint, save_checkpoint
from mambaft.model.kernels.swelu import LAM_FORMULAS


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="mambaft info", description=__doc__.splitlines()[0])
    p.add_argument("path")
    p.add_argument("--to", help="write a converted copy here")
    p.add_argument("--format", default="folder", choices=["folder", "original", "hf"])
    p.add_argument("--lam-formula", choices=sorted(LAM_FORMULAS))
    a = p.parse_args(argv)
    model, info = load_checkpoint(a.path, lam_formula=a.lam_formula)
    print(info.describe())
    if a.to:
        out = save_checkpoint(model, a.to, a.format, template=info.template, tokenizer=info.tokenizer,
                              step=info.step, epoch=info.epoch or 0, training=info.training)
        print(f"wrote {out} ({a.format})")
