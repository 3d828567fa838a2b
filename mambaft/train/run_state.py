"""Run state: training checkpoints that survive a crash: atomic writes, exact resume, rotation (newest K + best).

Layout of one run folder:

    OUT/checkpoints/step_0001000/
        model/               a mambaft model folder (weights, config, tokenizer.json, chat_template.json)
        model.pt             the original .pt format (only with cfg.export_original)
        trainer_state.pt     optimizer, step, data position, best val loss, divergence-guard state
        rng_rank{R}.pt       every RNG of rank R (python, numpy, torch CPU, CUDA)
        config.json          the resolved mambaft.config.Config of the run
    OUT/checkpoints/.tmp-step_0001000/   being written; never counted as a checkpoint

A checkpoint is written into `.tmp-step_N/`, given a manifest.json (size and sha256 of every file),
fsynced, and renamed to `step_N/` (mambaft.durable). A rename is atomic on POSIX filesystems, so a
SIGKILL at any moment leaves either no `step_N/` or a complete one; leftover `.tmp-*` folders are
removed on the next start. A resume verifies the newest checkpoint against its manifest; a damaged
one (a power loss, a bad disk) is renamed `damaged-step_N/`, kept, reported in one line, and the
newest intact one is used instead. A full disk during a save removes the half-written folder and
stops with a DiskFullError that lists the intact checkpoints.

    python -m pytest tests/test_train_units.py -k rotation
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from mambaft import durable
from mambaft.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError
from mambaft.errors import DiskFullError

CKPT_DIRNAME = "checkpoints"
STATE_FILE = "trainer_state.pt"
MODEL_DIRNAME = "model"
ORIGINAL_FILE = "model.pt"
_NAME = re.compile(r"^step_(\d{7,})$")
REQUIRED = (STATE_FILE, CONFIG_FILE, f"{MODEL_DIRNAME}/{CONFIG_FILE}", f"{MODEL_DIRNAME}/{WEIGHTS_FILE}")


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


def restore_rng(state: dict) -> list[str]:
    """Restore every RNG of `state`; returns notes on what could not be restored (said by the caller)."""
    notes = []
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
        else:
            notes.append(f"CUDA RNG saved for {len(cuda)} device(s), {torch.cuda.device_count()} visible: "
                         "not restored (CUDA draws, e.g. dropout on the GPU, differ from here on)")
    return notes


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
        try:
            meta = json.loads((child / MODEL_DIRNAME / CONFIG_FILE).read_text(encoding="utf-8"))
            val = (meta.get("training") or {}).get("val_loss")
            val = None if val is None else float(val)
        except (ValueError, AttributeError, TypeError, UnicodeDecodeError):  # damaged: verify() says so
            val = None
        records.append(CheckpointRecord(step=int(m.group(1)), path=child, val_loss=val))
    return sorted(records, key=lambda r: r.step)


def latest_checkpoint(out_dir: Union[str, Path]) -> Optional[CheckpointRecord]:
    records = list_checkpoints(out_dir)
    return records[-1] if records else None


def best_checkpoint(records: list[CheckpointRecord]) -> Optional[CheckpointRecord]:
    """Lowest validation loss; ties go to the earlier step. A NaN/inf loss is never the best."""
    scored = [r for r in records if r.val_loss is not None and math.isfinite(r.val_loss)]
    return min(scored, key=lambda r: (r.val_loss, r.step)) if scored else None


def verify(path: Union[str, Path], *, trust_legacy: bool = False) -> list[str]:
    """Problems with one checkpoint folder ([] = intact), checked against its manifest. A checkpoint
    without one (written before manifests existed, or with it deleted) is unverified: ["no
    manifest.json"], unless `trust_legacy`, which accepts it when its required files are non-empty."""
    path = Path(path)
    if (path / durable.MANIFEST).is_file():
        problems = durable.verify_manifest(path)
        if not problems:
            listed = durable.read_manifest(path)
            problems = [f"{f} is not in the manifest" for f in REQUIRED if f not in listed]
        return problems
    if not trust_legacy:
        return [f"no {durable.MANIFEST}"]
    return [f"{f} is missing or empty" for f in REQUIRED
            if not (path / f).is_file() or (path / f).stat().st_size == 0]


UNVERIFIED = "unverified-"


def set_aside(record: CheckpointRecord, why: str, prefix: str = "damaged-") -> str:
    """Rename a checkpoint `PREFIXstep_N/` (kept for inspection, never counted again); the line to say."""
    dest, n = record.path.with_name(prefix + record.path.name), 1
    while dest.exists():
        n += 1
        dest = record.path.with_name(f"{prefix.rstrip('-')}{n}-{record.path.name}")
    os.replace(record.path, dest)
    return f"{record.path.name} is {prefix.rstrip('-')} ({why}), kept as {dest.name}"


def resume_point(out_dir: Union[str, Path], say: Callable[[str], None], *,
                 trust_legacy: bool = False) -> Optional[CheckpointRecord]:
    """Rank 0: the newest checkpoint that verifies. Each newer one that does not is renamed
    `damaged-step_N/` (or `unverified-step_N/` when it has no manifest), kept, never counted again,
    and said in one line. `trust_legacy` first gives earlier `unverified-` ones their names back.
    Raises CheckpointError when checkpoints exist but none verifies."""
    root = Path(out_dir) / CKPT_DIRNAME
    if trust_legacy and root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(UNVERIFIED) and _NAME.match(child.name[len(UNVERIFIED):]):
                target = child.with_name(child.name[len(UNVERIFIED):])
                if not target.exists():
                    os.replace(child, target)
    records = list_checkpoints(out_dir)
    skipped = []
    for r in reversed(records):
        problems = verify(r.path, trust_legacy=trust_legacy)
        if not problems:
            if skipped:
                say(f"resuming from the newest intact checkpoint {r.path.name}: " + "; ".join(skipped))
            return r
        why = f"{problems[0]}{' ...' if len(problems) > 1 else ''}"
        unverified = problems == [f"no {durable.MANIFEST}"]
        skipped.append(set_aside(r, why, UNVERIFIED if unverified else "damaged-"))
    if skipped:
        legacy = any(UNVERIFIED in s for s in skipped)
        raise CheckpointError(f"{Path(out_dir)}: no intact checkpoint to resume from: " + "; ".join(skipped)
                              + ". Run with --no-resume to start over (the old run is moved aside)"
                              + (", or --trust-legacy-checkpoints to resume from one without a manifest "
                                 "(written before mambaft wrote them)" if legacy else "") + ".")
    return None


def trim_metrics(out_dir: Union[str, Path], step: int, say: Callable[[str], None]) -> None:
    """Rank 0, before a resume from `step`: metrics.jsonl keeps its readable rows up to `step` (the
    ones after it are logged again by the resumed run). Unreadable lines (cut by a kill, not JSON,
    not an object, not UTF-8) never block the resume: they go, byte for byte, to
    metrics.jsonl.bad-lines, and one line says how many and where they were."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    keep, bad, later = [], [], 0
    raw = path.read_bytes().split(b"\n")
    for i, line in enumerate(raw, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
            row_step = int(row["step"]) if isinstance(row, dict) and "step" in row else None
        except (ValueError, UnicodeDecodeError, TypeError, OverflowError):
            row_step = None
        if row_step is None:
            bad.append((i, line))
        elif row_step > step:
            later += 1
        else:
            keep.append(line)
    if not bad and not later:
        return
    if bad:
        with open(path.with_name("metrics.jsonl.bad-lines"), "ab") as f:
            f.write(b"".join(l + b"\n" for _, l in bad))
        lines = ", ".join(str(i) for i, _ in bad[:5]) + (" ..." if len(bad) > 5 else "")
        say(f"note: {path}: {len(bad)} unreadable line(s) ({lines}) moved to metrics.jsonl.bad-lines")
    durable.write_atomic(path, b"".join(l + b"\n" for l in keep))


# half-written files a killed or disk-full run leaves in OUT itself (final/'s copy, the .pt, records)
_RUN_LEFTOVERS = (".tmp-final", ".final_model.pt.tmp", ".metrics.jsonl.tmp", "metrics.jsonl.tmp",
                  ".metrics.jsonl.*.tmp", ".run_inputs.json.*.tmp", ".result.json.*.tmp")


def clean_partial(out_dir: Union[str, Path]) -> list[Path]:
    """Remove half-written `.tmp-*` / `.trash-*` / `.old-*` folders left by a killed process (also
    after a full disk: they would keep it full), and OUT's own half-written files."""
    root = Path(out_dir) / CKPT_DIRNAME
    removed = []
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith((".tmp-", ".trash-", ".old-")):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    for pattern in _RUN_LEFTOVERS:
        for child in Path(out_dir).glob(pattern):
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
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


def _disk_full(out_dir: Union[str, Path], step: int, e: BaseException) -> DiskFullError:
    """Remove the half-written folder; say where, how much room there is and needs, which
    checkpoints are intact, and how to go on."""
    shutil.rmtree(tmp_dir(out_dir, step), ignore_errors=True)
    records = list_checkpoints(out_dir)
    intact = [r.path.name for r in records]
    need = durable.tree_bytes(records[-1].path) if records else None
    root = Path(out_dir) / CKPT_DIRNAME
    return DiskFullError(28, f"disk full while writing checkpoint {step_dirname(step)} in {root} "
                         f"({durable.mb(max(durable.free_bytes(root), 0))} free"
                         + (f", a checkpoint needs about {durable.mb(need)}" if need else "") +
                         f"); the half-written folder was removed, intact checkpoints: {', '.join(intact) or 'none'}. "
                         "Free some space and run the same command again to resume.")


def begin(out_dir: Union[str, Path], step: int) -> Path:
    """Rank 0: an empty temp folder for step `step`."""
    tmp = tmp_dir(out_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise _disk_full(out_dir, step, e) if durable.is_disk_full(e) else e
    return tmp


def write_rng(tmp: Path, rank: int) -> None:
    """Every rank: its RNG states."""
    try:
        torch.save(capture_rng(), tmp / f"rng_rank{rank}.pt")
    except Exception as e:   # torch.save reports ENOSPC as a RuntimeError from its writer
        if _is_full(e, tmp):
            raise _disk_full(tmp.parent.parent, int(tmp.name.rsplit("_", 1)[1]), e) from e
        raise


def _is_full(e: BaseException, where: Optional[Path] = None) -> bool:
    """ENOSPC from any writer of a checkpoint (mambaft.durable.is_full_error)."""
    return durable.is_full_error(e, where)


def commit(out_dir: Union[str, Path], step: int, model: torch.nn.Module, *, trainer_state: dict,
           config: dict, template, tokenizer, training_meta: dict, export_original: bool,
           fault: Optional[Callable[[str], None]] = None) -> Path:
    """Rank 0: write the model and trainer state into the temp folder, add the manifest, fsync, then
    rename it into place. `fault(point)` is called at the points the crash tests kill at
    (mambaft.faults: save_model, in_save, after_rename)."""
    from mambaft.checkpoint import save_checkpoint

    fault = fault or (lambda point: None)
    tmp = tmp_dir(out_dir, step)
    final = Path(out_dir) / CKPT_DIRNAME / step_dirname(step)
    try:
        save_checkpoint(model, tmp / MODEL_DIRNAME, template=template, tokenizer=tokenizer, step=step,
                        training=training_meta)
        fault("save_model")
        if export_original:
            save_checkpoint(model, tmp / ORIGINAL_FILE, format="original", step=step)
        torch.save(trainer_state, tmp / STATE_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        durable.write_manifest(tmp)
        durable.fsync_tree(tmp)
        fault("in_save")
        # the same step written again (a resumed run passing it a second time): swapped atomically
        durable.replace_dir(tmp, final)
    except Exception as e:
        if _is_full(e, tmp):
            raise _disk_full(out_dir, step, e) from e
        raise
    fault("after_rename")
    return final


def _load(f: Path):
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{f}: cannot be read (truncated or corrupt?): {first}") from e


def load_trainer_state(path: Union[str, Path]) -> dict:
    return _load(Path(path) / STATE_FILE)


def load_rng(path: Union[str, Path], rank: int) -> Optional[dict]:
    f = Path(path) / f"rng_rank{rank}.pt"
    return _load(f) if f.is_file() else None
