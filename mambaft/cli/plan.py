"""`mambaft plan`: what a run will do, before it starts: a strategy's training plan and data budget, or a
prepared dataset's, and how long it takes and how much disk it needs (mambaft.train.plan,
mambaft.data.planner, mambaft.train.estimate).

    mambaft plan quick                  # the plan of a preset, without data (sizes: the published ones)
    mambaft plan quick --budget cpu     # the same under the course's CPU budget
    mambaft plan outputs/data           # the data budget of a prepared dataset (its stats.json)
    mambaft plan quick --budget cpu --base final_model.pt --data runs/quick/01_data_preparation/data \\
        --measure-steps 3               # + the time on this machine, measured on 3 real steps

Every estimate line says where its seconds come from: measured here, or the GPU table (nominal peak x
an assumed MFU, not measured on a GPU). The plan's own box (num_gpus x RTX 4090) is always printed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mambaft.config import BUDGETS, make_config, parse_overrides
from mambaft.data.planner import format_plan, plan_budget
from mambaft.train.plan import plan_lines

PARAMS_124M = 124_104_719   # the user's base model (docs/mambaswelu.md): what the plan's lr check assumes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mambaft plan", description=__doc__.splitlines()[0])
    p.add_argument("target", nargs="?", default="conversational", help="a strategy, or a prepared data folder")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config fields (values read as JSON)")
    p.add_argument("--budget", default="plan", choices=BUDGETS)
    p.add_argument("--base", default=None, help="the base model to time (default: a random 124M model)")
    p.add_argument("--data", default=None, help="a prepared data folder: time the run's own batches")
    p.add_argument("--num-processes", type=int, default=1, help="processes of the run on this machine")
    p.add_argument("--measure-steps", type=int, default=0,
                   help="time this many real optimizer steps here (0: do not measure; 3 takes ~4 step times)")
    p.add_argument("--device", default=None, help="device to measure on (default: cuda when present, else cpu)")
    p.add_argument("--gpu", default="RTX 4090", help="the card of the plan's box, for the table estimate")
    p.add_argument("--no-eval-at-start", action="store_true", help="the run skips its step-0 evaluation")
    p.add_argument("--fit-gpu-memory", type=float, default=0, metavar="GIB",
                   help="also pick the micro-batch for GPUs with this much free memory (activations measured "
                        "here, in bf16; ~1 min at 124M on CPU)")
    return p


def main(argv=None) -> int:
    p = build_parser()
    # intermixed: KEY=VALUE may come before or after --budget (`plan quick --budget cpu base=X`);
    # plain parse_args stops filling the positionals at the first option and rejects what follows
    a = p.parse_intermixed_args(argv)
    overrides = parse_overrides(a.overrides)
    if a.measure_steps < 0 or a.num_processes < 1:
        p.error("--measure-steps must be >= 0 and --num-processes >= 1")
    if Path(a.target).is_dir():
        stats = json.loads((Path(a.target) / "stats.json").read_text(encoding="utf-8"))
        c = make_config(stats.get("strategy", "conversational"), a.budget, **overrides)
        print(format_plan(plan_budget(c, stats)))
        return 0
    c = make_config(a.target, a.budget, **overrides)
    world = a.num_processes if (a.measure_steps or a.data or a.base) else c.num_gpus
    lines, warns = plan_lines(c, world_size=world, n_params=PARAMS_124M)
    print("\n".join(lines))
    print("\n".join(f"WARNING: {w}" for w in warns))
    print(format_plan(plan_budget(c)))
    print("\n".join(estimate_lines(c, a, plan_config(a.target, overrides))))
    return 0


def plan_config(strategy: str, overrides: dict):
    """The config of the plan's own box: the preset with the user's overrides, minus the values that
    are only the CPU budget's (the course passes every value of its CPU-budget config, and the six
    GPUs would otherwise be estimated on the CPU's 300 steps)."""
    cpu = make_config(strategy, "cpu", base=overrides.get("base", ""))
    preset = make_config(strategy)
    mine = {k: v for k, v in overrides.items()
            if not (getattr(cpu, k, object()) == v and getattr(preset, k, object()) != v)}
    return make_config(strategy, **mine)


def _model(base):
    """(model on CPU, where from): the base to time, or a random model of the 124M size."""
    import torch

    from mambaft.checkpoint import load_checkpoint
    from mambaft.model.mambaswelu import MambaSWELU, MambaSWELUConfig
    if base:
        model, _ = load_checkpoint(base)
        return model, str(base)
    torch.manual_seed(0)
    return MambaSWELU(MambaSWELUConfig()), "a random model of the 124M size (--base to time yours)"


def estimate_lines(cfg, a, plan_cfg) -> list[str]:
    """This machine (measured, when asked) and the plan's box (table)."""
    import torch

    from mambaft.train import estimate as est
    model, what = _model(a.base)
    if cfg.architecture == "selective" and model.config.architecture == "original":
        from mambaft.model.selective import upgrade_to_selective
        model = upgrade_to_selective(model, ssm_state=cfg.ssm_state)
    if hasattr(model, "freeze_dead"):
        model.freeze_dead()
    n_params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out = [f"time and disk of {what} ({n_params:,} parameters, {trainable:,} trainable):"]
    train, probes, heldout, replies, val_size = None, 0, 0, 0, None
    if a.data:
        from mambaft.data import load_prepared
        from mambaft.evaluate.probes import PROBES
        d = Path(a.data) / ("phase1" if cfg.strategy == "specialized" else "")
        dd = load_prepared(d)
        train = dd["train"].select_columns(["input_ids", "labels"])
        probes, heldout = len(PROBES), 8192        # what `mambaft finetune` evaluates by default
        val_size = len(dd["val"]) if "val" in dd else 0
        if "val" in dd and "messages" in dd["val"].column_names:
            replies = cfg.eval_replies               # greedy replies to val questions at each evaluation
    if a.measure_steps:
        device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        m = est.measure(model, cfg, train, device=device, steps=a.measure_steps + 1, world_size=a.num_processes)
        where = f"this machine ({device.type}{', ' + torch.cuda.get_device_name(0) if device.type == 'cuda' else ''}, " \
                f"{a.num_processes} process(es))"
        e = est.measured_estimate(cfg, m, where=where, n_params=n_params, n_trainable=trainable,
                                  world_size=a.num_processes, eval_replies=replies,
                                  n_probes=probes, heldout_tokens=heldout, eval_at_start=not a.no_eval_at_start,
                                  original_arch=model.config.architecture == "original", val_size=val_size)
        if train is None:
            e.notes.append(f"timed on random full-length rows ({cfg.max_seq_len} tokens): an upper bound; "
                           "--data times the run's own batches")
        out += e.lines()
    else:
        disk, note = est.disk_bytes(cfg, n_params, trainable, model.config.architecture == "original")
        out.append(f"estimate on this machine: not measured (--measure-steps 3 times 3 real steps); "
                   f"disk up to {disk / 1e9:.2f} GB ({note})")
    six = est.table_estimate(plan_cfg, model.config, a.gpu, n_params=n_params, n_trainable=trainable)
    out += six.lines()
    if a.fit_gpu_memory:
        from mambaft.train.plan import micro_batch_for_memory
        per_token, fixed = est.activation_bytes(model, precision="bf16")
        b, acc, why = micro_batch_for_memory(plan_cfg, free_bytes=a.fit_gpu_memory * 2**30, n_params=n_params,
                                             n_trainable=trainable, act_bytes_per_token=per_token,
                                             act_fixed_bytes=fixed)
        out.append(f"micro-batch for {a.fit_gpu_memory:g} GiB per GPU: {why}; pass batch_size={b} grad_accum={acc}")
    return out
