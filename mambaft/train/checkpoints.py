"""Training checkpoints that survive a crash: atomic writes, exact resume, rotation (newest K + best).

Layout of one run folder:

    OUT/checkpoints/step_0001000/
        model/               a mambaft model folder (weights, config, tokenizer.json, chat_template.json)
        model.pt             the original .pt format (only with cfg.export_original)
        trainer_state.pt     optimizer, step, data position, best val loss, divergence-guard state
        rng_rank{R}.pt       every RNG of rank R (python, numpy, torch CPU, CUDA)
        config.json          the resolved mambaft.config.Config of the run
    OUT/checkpoints/.tmp-step_0001000/   being written; never counted as a checkpoint

A checkpoint is written into `.tmp-step_N/` and renamed to `step_N/` only when every file is in
place. A rename is atomic on POSIX filesystems, so a SIGKILL at any moment leaves either no
`step_N/` or a complete one; leftover `.tmp-*` folders are removed on the next start.

    python -m pytest tests/test_train_units.py -k rotation
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch

CKPT_DIRNAME = "checkpoints"
STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "config.json"
MODEL_DIRNAME = "model"
ORIGINAL_FILE = "model.pt"
_NAME = re.compile(r"^step_(\d{7,})$")
REQUIRED = (STATE_FILE, CONFIG_FILE, f"{MODEL_DIRNAME}/config.json", f"{MODEL_DIRNAME}/model.safetensors")


def step_dirname(step: int) -> str:
    return f"step_{step:07d}"


@dataclass
class CheckpointRecord:
    step: int
    path: Path
    val_loss: Optional[float]


# --- RNG -----------------------------------------------------------------------------------------
def capture_rng() -> dict:
    """Every RNG this process draws from, as plain tensors/lists (loads with weights_only=True)."""
    version, internal, gauss = random.getstate()
    state = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state()}
    try:
        import numpy as np
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# --- listing -------------------------------------------------------------------------------------
def _is_complete(path: Path) -> bool:
    return all((path / f).is_file() for f in REQUIRED)


def list_checkpoints(out_dir: Union[str, Path]) -> list[CheckpointRecord]:
    """Complete checkpoints of a run folder, oldest first."""
    root = Path(out_dir) / CKPT_DIRNAME
    if not root.is_dir():
        return []
    records = []
    for child in root.iterdir():
        m = _NAME.match(child.name)
        if not (m and child.is_dir() and _is_complete(child)):
            continue
        meta = json.loads((child / MODEL_DIRNAME / "config.json").read_text(encoding="utf-8"))
        val = (meta.get("training") or {}).get("val_loss")
        records.append(CheckpointRecord(step=int(m.group(1)), path=child,
                                        val_loss=None if val is None else float(val)))
    return sorted(records, key=lambda r: r.step)


def latest_checkpoint(out_dir: Union[str, Path]) -> Optional[CheckpointRecord]:
    records = list_checkpoints(out_dir)
    return records[-1] if records else None


def best_checkpoint(records: list[CheckpointRecord]) -> Optional[CheckpointRecord]:
    """Lowest validation loss; ties go to the earlier step."""
    scored = [r for r in records if r.val_loss is not None]
    return min(scored, key=lambda r: (r.val_loss, r.step)) if scored else None


def clean_partial(out_dir: Union[str, Path]) -> list[Path]:
    """Remove half-written `.tmp-*` / `.trash-*` folders left by a killed process."""
    root = Path(out_dir) / CKPT_DIRNAME
    removed = []
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return removed


def _remove(path: Path) -> None:
    """Rename first (atomic), then delete: a half-deleted folder never looks like a checkpoint."""
    trash = path.with_name(".trash-" + path.name)
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def rotate(out_dir: Union[str, Path], keep_last: int) -> list[Path]:
    """Keep the newest `keep_last` checkpoints plus the best by validation loss; delete the rest.
    Returns the deleted paths."""
    records = list_checkpoints(out_dir)
    keep = {r.step for r in records[-keep_last:]} if keep_last > 0 else set()
    best = best_checkpoint(records)
    if best is not None:
        keep.add(best.step)
    removed = []
    for r in records:
        if r.step not in keep:
            _remove(r.path)
            removed.append(r.path)
    return removed


# --- writing (the loop coordinates ranks: tmp dir, each rank's RNG, then rank 0 commits) -----------
def tmp_dir(out_dir: Union[str, Path], step: int) -> Path:
    return Path(out_dir) / CKPT_DIRNAME / f".tmp-{step_dirname(step)}"


def begin(out_dir: Union[str, Path], step: int) -> Path:
    """Rank 0: an empty temp folder for step `step`."""
    tmp = tmp_dir(out_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def write_rng(tmp: Path, rank: int) -> None:
    """Every rank: its RNG states."""
    torch.save(capture_rng(), tmp / f"rng_rank{rank}.pt")


def commit(out_dir: Union[str, Path], step: int, model: torch.nn.Module, *, trainer_state: dict,
           config: dict, template, tokenizer, training_meta: dict, export_original: bool,
           before_rename: Optional[Callable[[], None]] = None) -> Path:
    """Rank 0: write the model and trainer state into the temp folder, then rename it into place.
    `before_rename` runs when every file is written but not yet committed (the crash tests kill there)."""
    from mambaft.checkpoint import save_checkpoint

    tmp = tmp_dir(out_dir, step)
    save_checkpoint(model, tmp / MODEL_DIRNAME, template=template, tokenizer=tokenizer, step=step,
                    training=training_meta)
    if export_original:
        save_checkpoint(model, tmp / ORIGINAL_FILE, format="original", step=step)
    torch.save(trainer_state, tmp / STATE_FILE)
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if before_rename is not None:
        before_rename()
    final = Path(out_dir) / CKPT_DIRNAME / step_dirname(step)
    if final.exists():  # the same step written again (a resumed run passing it a second time)
        _remove(final)
    os.replace(tmp, final)
    return final


def load_trainer_state(path: Union[str, Path]) -> dict:
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)


def load_rng(path: Union[str, Path], rank: int) -> Optional[dict]:
    f = Path(path) / f"rng_rank{rank}.pt"
    return torch.load(f, map_location="cpu", weights_only=True) if f.is_file() else None
