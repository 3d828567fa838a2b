"""`mambaft info`: describe a checkpoint, or convert it (mambaft.checkpoint).

    mambaft info PATH                                # describe a checkpoint
    mambaft info PATH --to OUT [--format original|folder|hf]
"""
from __future__ import annotations

import argparse

from mambaft.checkpoint import load_checkpoint
from mambaft.outdir import claim_model_output, write_model
from mambaft.model.kernels.swelu import LAM_FORMULAS


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="mambaft info", description=__doc__.splitlines()[0])
    p.add_argument("path")
    p.add_argument("--to", help="write a converted copy here")
    p.add_argument("--format", default="folder", choices=["folder", "original", "hf"])
    p.add_argument("--lam-formula", choices=sorted(LAM_FORMULAS))
    p.add_argument("--force", action="store_true", help="--to exists and is not an earlier output of "
                   "this command: move it aside to TO.replaced-<time> (nothing is deleted)")
    a = p.parse_args(argv)
    if a.to:   # checked before the (possibly long) load, and before anything is written
        claim_model_output(a.to, "info", a.path, force=a.force)
    # describing a damaged model is what info is for: NaN/inf weights are named, a conversion refused
    model, info = load_checkpoint(a.path, lam_formula=a.lam_formula, allow_nonfinite=not a.to)
    print(info.describe())
    if a.to:
        out = write_model(a.to, model, a.format, template=info.template, tokenizer=info.tokenizer,
                              step=info.step, epoch=info.epoch or 0, training=info.training)
        print(f"wrote {out} ({a.format})")
