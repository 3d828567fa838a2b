"""`metrics.jsonl` (the source of truth for every plot) and the NaN / loss-spike guard.

One JSON object per line, always with `step`:
    training rows   {"step", "loss", "lr", "grad_norm", "tokens_per_s", "trained_tokens", "tokens",
                     "epoch", "elapsed_s"}
    eval rows       {"step", "val_loss", "val_loss/<source>", "val_ppl", "heldout_ppl",
                     "heldout_ppl/<name>", "probe_pass_rate", "probe_stop_rate"}
    event rows      {"step", "event": "start"|"resume"|"nonfinite"|"loss_spike"|"checkpoint", ...}
                    (never with "loss"/"grad_norm" keys, so a plot of "loss" sees training rows only)

    python -m pytest tests/test_train_units.py -k guard
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

from mambaft import durable
from mambaft.errors import UserError


def finite_or_none(obj):
    """NaN/inf floats -> None, recursively: strict JSON has no NaN (json.dumps would write a bare NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


class MetricsLog:
    """Append-only JSON lines, flushed per row so a live plot (or a crash) sees every step.
    Only the process with `enabled=True` (rank 0) writes."""

    def __init__(self, path: Union[str, Path], enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clean = finite_or_none(row)
        if any(isinstance(v, float) and not math.isfinite(v) for v in row.values()):
            clean["nonfinite"] = sorted(k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v))
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")

    def truncate_after(self, step: int) -> int:
        """Drop rows with step > `step` (written by a run that died after its last checkpoint), so the
        resumed run does not log those steps twice. Atomic rewrite. Returns how many were dropped."""
        if not (self.enabled and self.path.is_file()):
            return 0
        keep, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:   # a line cut by the kill
                dropped += 1
                continue
            if int(row.get("step", 0)) > step:
                dropped += 1
            else:
                keep.append(line)
        durable.write_atomic(self.path, "".join(l + "\n" for l in keep))
        return dropped


def read_metrics(path: Union[str, Path]) -> list[dict]:
    """All rows of a metrics.jsonl, in file order. A half-written last line (a writer still running,
    or killed mid-line) is ignored; any other unreadable line is skipped with a warning naming it.
    (mambaft.plots wraps the rows as a `Metrics`; its MetricsReader follows a file still growing.)"""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file (training writes OUT/metrics.jsonl)")
    rows, bad = [], []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for i, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i < len(lines) and line.strip():
                bad.append(f"line {i} ({e.msg})")
    if bad:
        warnings.warn(f"{path}: skipped {len(bad)} unreadable line(s), first: {bad[0]}")
    return rows


class TrainingDiverged(UserError, RuntimeError):
    """Too many consecutive optimizer steps had a NaN/inf loss or gradient."""


@dataclass
class DivergenceGuard:
    """Skips non-finite steps (the caller does not apply them), stops after `max_bad` in a row, and
    raises an alarm when a loss exceeds `spike_factor` x its running average.

    The running average is an EMA with weight `ema_decay` (0.95: about the last 20 steps); alarms
    start after `warmup` good steps, when that average means something."""
    max_bad: int = 5
    spike_factor: float = 2.0
    ema_decay: float = 0.95
    warmup: int = 20
    ema: Optional[float] = None
    good_steps: int = 0
    consecutive_bad: int = 0
    total_bad: int = 0

    def check(self, step: int, loss: float, grad_norm: float) -> str:
        """-> "ok", "nonfinite" (skip this step) or "spike" (applied, but alarming)."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.consecutive_bad += 1
            self.total_bad += 1
            if self.consecutive_bad >= self.max_bad:
                raise TrainingDiverged(
                    f"step {step}: {self.consecutive_bad} optimizer steps in a row had a NaN/inf loss or "
                    f"gradient (loss={loss}, grad_norm={grad_norm}). Training stopped; the newest "
                    "checkpoint is intact. Lower the lr, use precision=bf16 instead of fp16, or check "
                    "the data rows of these steps.")
            return "nonfinite"
        self.consecutive_bad = 0
        verdict = "ok"
        if self.ema is not None and self.good_steps >= self.warmup and loss > self.spike_factor * self.ema:
            verdict = "spike"
        self.ema = loss if self.ema is None else self.ema_decay * self.ema + (1 - self.ema_decay) * loss
        self.good_steps += 1
        return verdict

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, v)
