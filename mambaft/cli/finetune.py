"""`mambaft finetune`: fine-tune a MambaSWELU base model on a prepared dataset (mambaft.train.run).

    mambaft finetune --strategy smoke --base data/demo_base --data outputs/smoke/data --out outputs/smoke/run
    accelerate launch --config_file configs/accelerate/6x4090.yaml -m mambaft.finetune \\
        --strategy conversational --base final_model.pt --data data/conv --out runs/conv
    python -m mambaft.finetune ... --no-resume --set lr=1e-4 --set max_steps=5000
    mambaft finetune ... --lr-sweep          # a short lr sweep (mambaft.train.sweep) instead of training

Running the same command again on the same --out resumes from the newest complete checkpoint.
"""
from __future__ import annotations

import argparse

from mambaft.config import ConfigError, make_config, parse_overrides
from mambaft.train.run import finetune


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mambaft finetune", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategy", required=True, help="quick | conversational | specialized | smoke")
    p.add_argument("--base", help="original .pt or mambaft model folder (default: cfg.base / demo base)")
    p.add_argument("--data", required=True, help="folder written by `mambaft prepare`")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, final/)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--save-every", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--keep", type=int, help="checkpoints to keep (plus the best by val loss)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config field")
    p.add_argument("--no-resume", action="store_true",
                   help="start over: OUT's previous run is moved into OUT/replaced-<time>/")
    p.add_argument("--force", action="store_true", help="OUT holds files that are not a run's: move it "
                   "aside to OUT.replaced-<time> first (nothing is deleted)")
    p.add_argument("--resume-anyway", action="store_true", help="resume although the base, the data or "
                   "the config differ from the run's (each difference is still said)")
    p.add_argument("--trust-legacy-checkpoints", action="store_true", help="resume from a checkpoint "
                   "without manifest.json (written before mambaft wrote them)")
    p.add_argument("--allow-world-size-change", action="store_true",
                   help="resume a checkpoint saved with another number of processes")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, help="CPU threads per process")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is visible")
    p.add_argument("--heldout", default="auto", help="comma-separated text sources for held-out "
                   "perplexity (mambaft.data.text), 'auto' or 'none'")
    p.add_argument("--no-probes", action="store_true")
    p.add_argument("--probe-tokens", type=int, default=64)
    p.add_argument("--no-eval-at-start", action="store_true")
    p.add_argument("--tensorboard", action="store_true", help="also log through accelerate's tensorboard tracker")
    p.add_argument("--lr-sweep", action="store_true", help="run a short lr sweep (lr_sweep) instead of training")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    overrides = parse_overrides(a.set)
    how = {k: "--set" for k in overrides}
    for flag, key in (("max_steps", "max_steps"), ("save_every", "save_every"),
                      ("eval_every", "eval_every"), ("keep", "keep_last")):
        value = getattr(a, flag)
        if value is not None:
            flag_name = "--" + flag.replace("_", "-")
            if key in overrides and overrides[key] != value:   # one of them would be dropped silently
                raise ConfigError(f"{flag_name} {value} and --set {key}={overrides[key]} disagree: give one")
            overrides[key] = value
            how[key] = flag_name
    cfg = make_config(a.strategy, **overrides)
    if a.lr_sweep:
        from mambaft.train.sweep import lr_sweep
        res = lr_sweep(cfg, a.base, a.data, a.out, progress=not a.no_progress, threads=a.threads)
        print(f"lr sweep: best lr {res['best_lr']:g}; plot {res['plot']}")
        return 0
    if a.heldout == "auto":
        heldout = None
    elif a.heldout == "none":
        heldout = {}
    else:
        from mambaft.train.evaluation import load_heldout_texts
        heldout, note = load_heldout_texts([n.strip() for n in a.heldout.split(",") if n.strip()])
        print(note)
    finetune(cfg, a.base, a.data, a.out, resume=not a.no_resume, progress=not a.no_progress,
             threads=a.threads, device="cpu" if a.cpu else None, heldout_texts=heldout,
             probes=[] if a.no_probes else None, probe_tokens=a.probe_tokens,
             eval_at_start=not a.no_eval_at_start, tensorboard=a.tensorboard, cli_overrides=how,
             allow_world_size_change=a.allow_world_size_change, force=a.force,
             resume_anyway=a.resume_anyway, trust_legacy=a.trust_legacy_checkpoints)
    return 0
