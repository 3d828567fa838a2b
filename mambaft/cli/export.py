"""`mambaft export MODEL --to DIR --format hf`: a folder that transformers loads without mambaft (mambaft.hf.export).

    mambaft export outputs/quick/03_finetune_multi_gpu/run/final --to /tmp/hf_model
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mambaft.hf.export import FORMATS, run_facts
from mambaft.outdir import claim_model_output, write_model


def main(argv=None) -> None:
    from mambaft.checkpoint import load_checkpoint

    p = argparse.ArgumentParser(prog="mambaft export", description=__doc__.splitlines()[0])
    p.add_argument("model", help="an original .pt, a mambaft model folder or an exported folder")
    p.add_argument("--to", required=True, help="the folder to write (absent, empty or an earlier export)")
    p.add_argument("--force", action="store_true", help="--to holds other files: move it aside to "
                   "TO.replaced-<time> (nothing is deleted)")
    p.add_argument("--format", default="hf", choices=FORMATS)
    p.add_argument("--evaluation", help="a markdown file with an evaluation table for the model card")
    p.add_argument("--base-model", help="the model card's base_model (a Hub id)")
    a = p.parse_args(argv)
    claim_model_output(a.to, "export", a.model, force=a.force)
    card = run_facts(a.model)
    if a.evaluation:
        card["evaluation"] = Path(a.evaluation).read_text(encoding="utf-8")
    if a.base_model:
        card["base_model"] = a.base_model
    model, info = load_checkpoint(a.model)
    out = write_model(a.to, model, a.format, template=info.template, tokenizer=info.tokenizer,
                          step=info.step, epoch=info.epoch or 0, training=info.training, card=card)
    print(f"wrote {out} (transformers format: AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True))")
