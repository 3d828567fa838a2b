"""Exact resume for `mambaft pretrain`: everything a killed run needs to go on as if never stopped.

A pretraining run of the demo base takes hours on 2 cores, so it saves its state every `save_every`
steps into a state folder beside its output (`<out>.resume/`, removed once the model folder is
written):

    state.pt            model (fp32), AdamW moments, the step, the chosen max_steps, the batch
                        stream (epoch, cursor, this epoch's order, its generator), torch's RNG,
                        the log history, the last val loss, the training seconds so far
    pretrain.log        the human log, appended across restarts
    pretrain_log.jsonl  the records, rewritten from the state's history on resume (so a kill between
                        a save and the next log line leaves no line twice)

The data rows are rebuilt from the sources and the seed (deterministic), not stored. A state is only
resumed by the same run: `fingerprint(cfg)` covers every setting that changes the numbers, and a
different one is refused with the differing fields named.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from mambaft.errors import UserError

STATE_FILE = "state.pt"
# Settings a resume may change: where things go, how often to log or save, the time budget (its
# choice of max_steps is in the state), and the thread count. Reductions can round differently at
# another thread count, so a resume on other threads is exact only up to that rounding; each start
# logs its threads.
_NOT_FINGERPRINTED = ("out", "state_dir", "log_every", "save_every", "threads", "minutes")


def state_dir(cfg) -> Path:
    return Path(cfg.state_dir) if cfg.state_dir else Path(str(cfg.out).rstrip("/") + ".resume")


def fingerprint(cfg) -> dict:
    """The settings a resumed run must share with the saved one (canonical: JSON round-trip)."""
    d = {k: v for k, v in asdict(cfg).items() if k not in _NOT_FINGERPRINTED}
    return json.loads(json.dumps(d, sort_keys=True, default=list))


def save_state(folder: Path, *, model, optimizer, step: int, max_steps: int, batches, history: list,
               val_loss: float, train_s: float, cfg) -> None:
    """Write state.pt atomically (a temporary file, fsync, rename): a kill mid-write keeps the last one."""
    state = {
        "fingerprint": fingerprint(cfg), "step": step, "max_steps": max_steps,
        "model": {k: v.detach().to(torch.float32).clone() if v.is_floating_point() else v
                  for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "batches": {"epoch": batches.epoch, "cursor": batches.cursor, "order": batches.order.clone(),
                    "gen": batches.gen.get_state()},
        "torch_rng": torch.get_rng_state(), "history": list(history),
        "val_loss": val_loss, "train_s": train_s,
    }
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (STATE_FILE + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / STATE_FILE)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_state(folder: Path, cfg):
    """The saved state of this same run, or None when there is none. A state of another run (other
    settings) is refused, naming each differing field; an unreadable one too (never half-resumed)."""
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable state is the same answer for the user
        raise UserError(f"{path}: unreadable resume state ({type(e).__name__}: {e}); delete {folder} "
                        f"to start over") from None
    saved, now = state.get("fingerprint", {}), fingerprint(cfg)
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        shown = "; ".join(f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in diff[:6])
        raise UserError(f"{folder} holds a run with other settings ({shown}); resume with the same "
                        f"settings, or delete {folder} to start over")
    return state


def restore(state: dict, *, model, optimizer, batches) -> None:
    """Put a loaded state back into a freshly built model, optimizer and batch stream."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    b = state["batches"]
    batches.epoch, batches.cursor, batches.order = b["epoch"], b["cursor"], b["order"]
    batches.gen.set_state(b["gen"])
    torch.set_rng_state(state["torch_rng"])
