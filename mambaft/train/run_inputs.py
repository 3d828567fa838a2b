"""A resume is the same run, or it says so (issue 28): the fingerprints of a run's inputs, recorded
in OUT/run_inputs.json when it starts and compared when it resumes.

    base     sha256 of the base weights (model.safetensors of a folder, the .pt file itself)
    data     sha256 over the prepared dataset's .arrow files (names and bytes): a re-prepare that
             changed one row changes it; one that wrote the same rows again does not
    config   the resolved config, compared key by key as canonical JSON (sorted keys), so only a
             real difference is ever named

Keys in RESUMABLE may change on a resume (how long to train and how often to look: the run is still
the same run, continued); every other difference is refused, each one named, unless the caller says
resume_anyway (the CLI's --resume-anyway).

    python -m pytest -q tests/test_resume_identity.py
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Optional, Union

from mambaft import durable
from mambaft.checkpoint import WEIGHTS_FILE
from mambaft.errors import UserError

RECORD = "run_inputs.json"
PathLike = Union[str, Path]
# what to train for and how often to save/evaluate: changing these continues the same run
# (max_steps also moves a cosine/linear schedule's end: said in the note, as before)
RESUMABLE = frozenset({"max_steps", "save_every", "keep_last", "eval_every", "eval_batches", "eval_replies",
                       "checkpoint_choice", "export_original", "num_gpus"})


class RunChangedError(UserError, ValueError):
    """A resume whose inputs differ from the run it would continue (the message names each)."""


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def base_fingerprint(base: PathLike) -> str:
    base = Path(base)
    f = base / WEIGHTS_FILE if base.is_dir() else base
    return durable.sha256_file(f) if f.is_file() else "missing"


def data_fingerprint(data_dir: PathLike) -> str:
    root = Path(data_dir)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.arrow")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(durable.sha256_file(p).encode())
    return h.hexdigest()


def fingerprints(base: PathLike, data_dir: PathLike, config: dict) -> dict:
    return {"base": {"path": str(base), "sha256": base_fingerprint(base)},
            "data": {"path": str(data_dir), "sha256": data_fingerprint(data_dir)},
            "config": json.loads(canonical(config))}


def write_record(out_dir: PathLike, record: dict) -> None:
    """Atomic and fsynced: a kill leaves the old record or the new one."""
    durable.write_atomic(Path(out_dir) / RECORD, json.dumps(record, indent=1, sort_keys=True) + "\n")


def read_record(out_dir: PathLike) -> Optional[dict]:
    """The recorded inputs; None for a run started before they were recorded. An unreadable record
    raises: without it a changed input could not be noticed."""
    path = Path(out_dir) / RECORD
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(d, dict) or not all(isinstance(d.get(k), dict) for k in ("base", "data", "config")):
            raise ValueError("not an object with base, data and config")
    except (ValueError, UnicodeDecodeError) as e:
        raise RunChangedError(f"{path}: unreadable ({type(e).__name__}), so this resume cannot be checked "
                              "against the run's inputs; pass --resume-anyway to resume regardless "
                              "(or --no-resume to start over)") from e
    return d


def differences(saved: dict, now: dict) -> tuple[list[str], list[str]]:
    """(refused, allowed): one line per input that differs."""
    refused, allowed = [], []
    for what in ("base", "data"):
        a, b = saved.get(what, {}), now[what]
        if a.get("sha256") != b["sha256"]:
            where = b["path"] if a.get("path") == b["path"] else f"{a.get('path')} -> {b['path']}"
            label = "the base weights" if what == "base" else "the prepared data"
            refused.append(f"{label} changed ({where}: "
                           f"sha256 {str(a.get('sha256'))[:12]} -> {b['sha256'][:12]})")
    old, new = saved.get("config", {}), now["config"]
    for k in sorted(set(old) | set(new)):
        if canonical(old.get(k)) != canonical(new.get(k)):
            line = f"{k} {old.get(k)!r} -> {new.get(k)!r}"
            (allowed if k in RESUMABLE else refused).append(line)
    return refused, allowed


def check_resume(out_dir: PathLike, now: dict, *, resume_anyway: bool, say: Callable[[str], None]) -> None:
    """Rank 0, before a resume: refuse one whose inputs differ (each named), unless resume_anyway."""
    saved = read_record(out_dir) if not resume_anyway else _read_or_none(out_dir)
    if saved is None:
        say(f"note: {Path(out_dir) / RECORD} is absent (a run started before inputs were recorded): "
            "this resume cannot be checked against them")
        return
    refused, allowed = differences(saved, now)
    if allowed:
        say("note: changed for this resume: " + ", ".join(allowed))
    if refused and not resume_anyway:
        raise RunChangedError(f"{out_dir}: this resume is not the same run: " + "; ".join(refused) +
                              ". Pass --resume-anyway to continue it with the new inputs, or --no-resume to "
                              "start over (the old run is moved aside)")
    if refused:
        say("--resume-anyway: resuming with changed inputs: " + "; ".join(refused))


def _read_or_none(out_dir: PathLike) -> Optional[dict]:
    try:
        return read_record(out_dir)
    except RunChangedError:
        return None
