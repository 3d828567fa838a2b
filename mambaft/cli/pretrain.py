"""`mambaft pretrain`: pretrain the small demo base model on offline plain text (mambaft.recipes.pretrain).

    mambaft pretrain --out data/demo_base                                # rebuild the shipped demo base
    mambaft pretrain --steps 20 --out /tmp/try --no-card                 # measure speed
    mambaft pretrain --init-from data/demo_base --architecture selective --out /tmp/sel   # context repair
"""
from __future__ import annotations

import argparse
import sys

from mambaft.recipes.pretrain import DEFAULT_SOURCES, PretrainConfig, pretrain


def parse_args(argv=None) -> tuple[PretrainConfig, bool]:
    d = PretrainConfig()
    p = argparse.ArgumentParser(prog="mambaft pretrain", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=d.out)
    p.add_argument("--source", action="append", default=None, metavar="NAME=WEIGHT",
                   help=f"plain-text source and its weight (default: {DEFAULT_SOURCES})")
    p.add_argument("--text-file", action="append", default=[], help="a local UTF-8 text file")
    p.add_argument("--max-docs-per-source", type=int, default=None)
    for name in ("d_model", "n_layers", "d_conv", "expand", "dense_hidden_dim", "max_seq_len",
                 "seq_len", "batch_size", "warmup_steps", "threads", "seed", "eval_every",
                 "eval_batches", "log_every", "ssm_state", "save_every"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--steps", type=int, default=d.max_steps)
    p.add_argument("--minutes", type=float, default=0.0,
                   help="time budget: choose --steps from the speed of the first steps")
    for name in ("dropout", "lr", "min_lr_ratio", "weight_decay", "grad_clip", "val_fraction"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--precision", default=d.precision, choices=["auto", "bf16", "fp32"])
    p.add_argument("--save-dtype", default=d.save_dtype, choices=["bf16", "fp32"])
    p.add_argument("--init-from", default="")
    p.add_argument("--architecture", default="original", choices=["original", "selective"])
    p.add_argument("--state-dir", default="",
                   help="where the resume state goes (default: OUT.resume); a killed run started again "
                        "with the same settings resumes there exactly")
    p.add_argument("--no-card", action="store_true", help="do not write MODEL_CARD.md")
    a = p.parse_args(argv)
    sources = dict(DEFAULT_SOURCES)
    if a.source is not None or a.text_file:
        sources = {}
        for item in a.source or []:
            name, _, w = item.partition("=")
            try:
                sources[name] = float(w) if w else 1.0
            except ValueError:
                p.error(f"--source {item!r}: expected NAME=WEIGHT with a number")
    cfg = PretrainConfig(out=a.out, sources=sources, text_files=tuple(a.text_file),
                         max_docs_per_source=a.max_docs_per_source, max_steps=a.steps, minutes=a.minutes,
                         precision=a.precision, save_dtype=a.save_dtype, init_from=a.init_from,
                         architecture=a.architecture, state_dir=a.state_dir,
                         **{k: getattr(a, k) for k in ("d_model", "n_layers", "d_conv", "expand",
                                                       "dense_hidden_dim", "max_seq_len", "seq_len",
                                                       "batch_size", "warmup_steps", "threads", "seed",
                                                       "eval_every", "eval_batches", "log_every",
                                                       "ssm_state", "save_every", "dropout", "lr",
                                                       "min_lr_ratio",
                                                       "weight_decay", "grad_clip", "val_fraction")})
    return cfg, not a.no_card


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, card = parse_args(argv)
    try:
        cfg.validate()
    except ValueError as e:
        print(f"mambaft pretrain: {e}", file=sys.stderr)
        return 2
    from mambaft import runtime

    # A user types `mambaft pretrain` in a plain shell: restart with the launcher environment
    # (runtime.LAUNCH_ENV: 2.2x the tokens/s of glibc's defaults here, benchmarks/README.md).
    runtime.relaunch_in_launch_env(["-c", "import sys; from mambaft.cli import main; sys.exit(main())",
                                    "pretrain", *argv])
    summary = pretrain(cfg, argv=argv, write_card=card)
    return 0 if summary else 1
