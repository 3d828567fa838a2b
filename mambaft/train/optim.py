"""AdamW and the learning-rate schedule (linear warmup, then cosine or linear decay to a floor)."""
from __future__ import annotations

import math
from typing import Optional

import torch


def lr_at(step: int, *, lr: float, warmup_steps: int, max_steps: int, schedule: str = "cosine",
          min_lr_ratio: float = 0.1) -> float:
    """Learning rate for optimizer step `step` (0-based).

    warmup: lr * (step + 1) / warmup_steps, so step 0 already moves (lr / warmup, not 0);
    decay: from lr at the end of warmup to min_lr_ratio * lr at max_steps (cosine or linear)."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = lr * min_lr_ratio
    if schedule == "linear":
        return floor + (lr - floor) * (1.0 - progress)
    if schedule == "cosine":
        return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule={schedule!r}: expected cosine, linear or constant")


def build_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float,
                    betas: tuple = (0.9, 0.95), new_lr_mult: float = 1.0) -> torch.optim.AdamW:
    """AdamW over trainable parameters only (frozen dead projections get no state: 2 x 25.4M fp32
    moments = 203 MB saved at 124M). Weight decay on matrices and embeddings; none on biases, norms,
    the SWELU shape scalars k (decaying k would pull every activation towards k = 0) and parameters
    marked `_no_weight_decay` (the selective path's A_log, D and gate).

    `new_lr_mult` scales the lr of the parameters an upgrade added (`model.new_parameter_names()`):
    the selective gates start at 0 and, at the fine-tuning lr, barely open (|gate| ~0.009 after 250
    steps at x1 vs ~0.08 at x10, measured on a small demo). Each group carries its `lr_mult`;
    `mambaft.train.step.optimizer_step` applies it.
    fused=True: 79 ms vs 382 ms per step for 129M parameters on this CPU (cpu-performance.md)."""
    new = set(model.new_parameter_names()) if hasattr(model, "new_parameter_names") else set()
    groups: dict = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.dim() >= 2 and not getattr(p, "_no_weight_decay", False)
        mult = new_lr_mult if name in new else 1.0
        key = (decay, mult)
        groups.setdefault(key, {"params": [], "weight_decay": weight_decay if decay else 0.0,
                                "lr_mult": mult, "lr": lr * mult})["params"].append(p)
    param_groups = [groups[k] for k in sorted(groups, key=lambda k: (not k[0], k[1]))]
    try:
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError):  # pragma: no cover - a device without a fused kernel
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas)


def run_optimizer(model: torch.nn.Module, cfg, lr: Optional[float] = None) -> torch.optim.AdamW:
    """The fine-tuning run's AdamW from its config (`mambaft.config.Config`): the one place the loop
    and the lr sweep get their parameter groups (weight decay, betas, the selective lr multiplier).
    `lr`: the base lr to use instead of cfg.lr (the sweep's candidates)."""
    return build_optimizer(model, lr=cfg.lr if lr is None else lr, weight_decay=cfg.weight_decay,
                           betas=(cfg.beta1, cfg.beta2), new_lr_mult=cfg.selective_lr_mult)
