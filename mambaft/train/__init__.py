"""Fine-tuning: the step (step.py), optimizer and schedule (optim.py), batches (batches.py), the loop
(loop.py), a run's resumable state (run_state.py), evaluation (evaluation.py), the plan printout
(plan.py), pre-flight (preflight.py), lr sweep (sweep.py) and one whole run (run.py: `finetune`).

Public API (imported lazily: `import mambaft.train` loads neither accelerate nor datasets):
    finetune(cfg, base, data_dir, out_dir, *, resume=True, progress=True, ...) -> dict
    lr_sweep(cfg, base, data_dir, out_dir, *, lrs=..., steps=None) -> dict
    preflight(num_processes=0) -> PreflightReport
    micro_step(...), optimizer_step(...)                  the exact training step (benchmarks)

    mambaft finetune --strategy smoke --base PATH --data DIR --out DIR      (mambaft.cli.finetune)
"""
from __future__ import annotations

import importlib

_LAZY = {
    "finetune": "mambaft.train.run",
    "lr_sweep": "mambaft.train.sweep",
    "preflight": "mambaft.train.preflight",
    "micro_step": "mambaft.train.step",
    "optimizer_step": "mambaft.train.step",
    "count_trained_tokens": "mambaft.train.step",
    "TrainingDiverged": "mambaft.train.metrics",
    "read_metrics": "mambaft.train.metrics",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mambaft.train' has no attribute {name!r}")
