"""What a run will do, printed before it starts: the arithmetic, where each value came from, warnings.

    global batch   = batch_size x grad_accum x processes      (rows per optimizer step)
    tokens/step   <= global batch x max_seq_len               (rows are padded per micro-batch, not packed)
    rows seen      = global batch x max_steps
    epochs/source  = rows seen x share of the source in the train split / rows of that source
                     (mambaft.data.plan_budget when present, else the same arithmetic on the prepared rows)

Warnings where the plan's numbers look wrong: more than 3 epochs of a source (quick: 4 x 8 x 6 x 10k =
1.92M rows of a 52k-row Alpaca = 37 epochs; recipes use 1-3), and an lr outside 5e-5..1e-4 for a model
of about 100M parameters (1e-5 is a value for multi-billion-parameter models).

    mambaft plan quick      # the plan of a preset, without data
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Optional

from mambaft.config import PRESETS, Config, make_config

MAX_EPOCHS = 3.0
SMALL_MODEL_LR = (5e-5, 1e-4)    # what ~100M-parameter fine-tuning recipes use


def provenance(cfg: Config, cli_overrides: Optional[dict] = None) -> dict:
    """field -> "default" | "preset <strategy>" | "override" | "override (<how>)".

    A value equal to the preset's is "preset" and one equal to the dataclass default (not in the
    preset) "default", even when a launcher passed it again with --set (the course passes every
    value); anything else was overridden (`cli_overrides` names how, e.g. "--max-steps")."""
    preset = PRESETS.get(cfg.strategy, {})
    ref = make_config(cfg.strategy)
    cli_overrides = cli_overrides or {}
    out = {}
    for f in dataclasses.fields(Config):
        name, value = f.name, getattr(cfg, f.name)
        if value != getattr(ref, name):
            out[name] = f"override ({cli_overrides[name]})" if name in cli_overrides else "override"
        elif name in preset:
            out[name] = f"preset {cfg.strategy}"
        else:
            out[name] = "default"
    return out


def epochs_per_source(train_sources: list, rows_seen: int) -> dict:
    """Epochs over each source when `rows_seen` rows are drawn uniformly from the train split
    (its mix already reflects the source weights of `prepare`)."""
    counts = Counter(train_sources)
    total = sum(counts.values())
    # rows_seen x (count / total) rows of the source / count rows = rows_seen / total, for each source
    return {src: rows_seen / total for src in sorted(counts)} if total else {}


def plan_lines(cfg: Config, *, world_size: int, train_sources: Optional[list] = None,
               stats: Optional[dict] = None, n_params: Optional[int] = None,
               cli_overrides: Optional[dict] = None) -> tuple[list[str], list[str]]:
    """(lines to print, warnings). `train_sources` = the `source` column of the train split."""
    prov = provenance(cfg, cli_overrides)
    G = cfg.batch_size * cfg.grad_accum * world_size
    rows_seen = G * cfg.max_steps
    lines = [f"strategy {cfg.strategy}: {cfg.max_steps:,} optimizer steps"
             f"   [max_steps: {prov['max_steps']}]"]
    lines.append(f"global batch = {cfg.batch_size} rows x {cfg.grad_accum} accumulation x {world_size} "
                 f"process(es) = {G} rows/step   [batch_size: {prov['batch_size']}, "
                 f"grad_accum: {prov['grad_accum']}]")
    if world_size != cfg.num_gpus:
        lines.append(f"  note: the plan assumes num_gpus={cfg.num_gpus} ({cfg.global_batch} rows/step); "
                     f"this launch has {world_size} process(es), so the real global batch is {G}")
    lines.append(f"tokens/step <= {G} x {cfg.max_seq_len} = {G * cfg.max_seq_len:,}"
                 f"   [max_seq_len: {prov['max_seq_len']}]")
    lines.append(f"rows seen = {G} x {cfg.max_steps:,} = {rows_seen:,}")
    lines.append(f"lr {cfg.lr:g} [{prov['lr']}], warmup {cfg.warmup_steps} [{prov['warmup_steps']}], "
                 f"{cfg.schedule} decay to {cfg.min_lr_ratio:g} x lr, weight decay {cfg.weight_decay:g} "
                 f"[{prov['weight_decay']}], clip {cfg.grad_clip:g}, precision {cfg.precision} "
                 f"[{prov['precision']}]")
    overridden = [f"{k}={getattr(cfg, k)!r}" for k, v in prov.items() if v.startswith("override")]
    if overridden:
        lines.append("overrides: " + ", ".join(overridden))
    warnings: list[str] = []

    budget = None
    if stats is not None:
        try:
            from mambaft.data import plan_budget
        except ImportError:
            plan_budget = None
        if plan_budget is not None:
            try:
                budget = plan_budget(cfg, stats, num_gpus=world_size)
            except Exception as e:  # a planner bug must not stop training: fall back to our arithmetic
                lines.append(f"  note: mambaft.data.plan_budget failed ({type(e).__name__}: {e}); "
                             "using the prepared rows instead")
    if budget is not None:
        epochs = dict(budget.get("epochs_per_source", {}))
        origin = "mambaft.data.plan_budget"
        warnings += [str(w) for w in budget.get("warnings", [])]
        if budget.get("tokens_seen"):
            lines.append(f"tokens seen (planner) = {int(budget['tokens_seen']):,}")
    else:
        epochs = epochs_per_source(train_sources or [], rows_seen)
        origin = "the prepared train split"
    if epochs:
        lines.append(f"epochs per source ({origin}): " +
                     ", ".join(f"{s} {e:.2f}" for s, e in sorted(epochs.items())))
        if budget is None:
            for s, e in sorted(epochs.items()):
                if e > MAX_EPOCHS:
                    warnings.append(f"{e:.1f} epochs of {s}: fine-tuning recipes use 1-{MAX_EPOCHS:g}; "
                                    "the model will memorise it (lower max_steps or add data)")
    if n_params:
        # disk before the first checkpoint fills it (mambaft.train.estimate); the time needs a measurement:
        # `mambaft plan` (notebook 03 runs it) times real steps, and the progress bar's ETA follows the run
        from .estimate import disk_bytes
        disk, note = disk_bytes(cfg, n_params, n_params)
        lines.append(f"disk: up to {disk / 1e9:.2f} GB in the run folder ({note}; every parameter counted "
                     "as trainable)")
    lo, hi = SMALL_MODEL_LR
    if n_params is not None and 30e6 <= n_params <= 1e9 and not lo <= cfg.lr <= hi:
        if not any("lr" in w for w in warnings):
            hint = ("1e-5 is a value for multi-billion-parameter models" if cfg.lr < lo
                    else "above what small-model recipes use")
            warnings.append(f"lr {cfg.lr:g} for a {n_params / 1e6:.0f}M-parameter model: {hint}; "
                            f"small-model recipes use {lo:g}..{hi:g}")
    return lines, warnings


# Share of a GPU's free memory the planner fills: allocator fragmentation, cuBLAS workspaces and the
# NCCL buffers take the rest (a rule of thumb, not measured on a GPU).
MEMORY_HEADROOM = 0.75


def micro_batch_for_memory(cfg: Config, *, free_bytes: float, n_params: int, n_trainable: int,
                           act_bytes_per_token: float, act_fixed_bytes: float = 0.0,
                           row_tokens: Optional[int] = None) -> tuple[int, int, str]:
    """(batch_size, grad_accum, why): the largest micro-batch that fits `free_bytes` x MEMORY_HEADROOM
    with the SAME rows per process and step (batch_size x grad_accum), so the global batch and the
    gradient (a token-weighted sum, mambaft.train.step) do not change; fewer, larger micro-batches
    keep a GPU busy where the plan's 2 x ~1000 tokens leave it waiting on kernel launches.

        memory = 4 B x params (fp32 weights) + 12 B x trainable (fp32 gradients + AdamW's two moments)
                 + act_fixed_bytes + batch_size x row_tokens x act_bytes_per_token"""
    rows = cfg.batch_size * cfg.grad_accum
    L = int(row_tokens or cfg.max_seq_len)
    static = 4 * n_params + 12 * n_trainable + act_fixed_bytes
    budget = free_bytes * MEMORY_HEADROOM - static
    fits = [b for b in range(1, rows + 1) if rows % b == 0 and b * L * act_bytes_per_token <= budget]
    if not fits:
        return 1, rows, (f"even 1 row x {L} tokens needs {(static + L * act_bytes_per_token) / 2**30:.1f} GiB of "
                         f"{free_bytes * MEMORY_HEADROOM / 2**30:.1f} GiB usable: batch_size=1 x grad_accum={rows}")
    b = max(fits)
    use = static + b * L * act_bytes_per_token
    return b, rows // b, (f"batch_size={b} x grad_accum={rows // b} (was {cfg.batch_size} x {cfg.grad_accum}; "
                          f"{rows} rows per process either way): {use / 2**30:.1f} of {free_bytes / 2**30:.1f} GiB "
                          f"({MEMORY_HEADROOM:.0%} usable) at {L} tokens a row, "
                          f"{act_bytes_per_token / 2**20:.2f} MiB of activations per token")
