"""Reuse an evaluation when nothing it depends on changed: the model's bytes, the evaluation settings,
the data it reads. Notebook 04 evaluates three models (minutes each on a CPU); reopened or rerun with
the same parameters, it reads their results.json instead.

The key, stored beside the results (OUT/models/NAME/cache_key.json, with what went into it), is the
sha256 of: the sha256 of every file of the model (a folder's files, recursively, by relative path; or
the one .pt file), the settings (JSON, keys sorted), the sha256 of the data folder's small *.json
files (a `datasets` folder's state.json holds the fingerprint of its rows), and the mambaft version.
A change of the library's code within one version is not seen: delete OUT/models to evaluate again.

    python -m pytest -q tests/test_eval_cache.py
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Union

from ..durable import sha256_file
from .suite import RESULTS_FILE   # what evaluate_model writes into its out folder

KEY_FILE = "cache_key.json"


def file_digests(path: Union[str, Path], pattern: str = "*") -> dict:
    """{relative path: sha256} of a file (its own name) or of every file under a folder matching `pattern`."""
    path = Path(path)
    if path.is_file():
        return {path.name: sha256_file(path)}
    return {p.relative_to(path).as_posix(): sha256_file(p) for p in sorted(path.rglob(pattern)) if p.is_file()}


def evaluation_key(model: Union[str, Path], settings: dict) -> dict:
    """{"key": sha256 hex, "model": {file: sha256}, "settings": ..., "data": {file: sha256}, "version"}."""
    from mambaft import __version__

    settings = json.loads(json.dumps(settings, sort_keys=True, default=str))   # Paths, tuples -> JSON
    data = settings.get("data")
    record = {"model": file_digests(model), "settings": settings,
              "data": file_digests(data, "*.json") if data and Path(data).exists() else {},
              "version": __version__}
    blob = json.dumps(record, sort_keys=True).encode("utf-8")
    return {"key": hashlib.sha256(blob).hexdigest(), **record}


def cached_results(folder: Union[str, Path], key: dict) -> Optional[dict]:
    """The results in `folder` when its stored key equals `key`, else None (absent, unreadable, other)."""
    folder = Path(folder)
    try:
        stored = json.loads((folder / KEY_FILE).read_text(encoding="utf-8"))
        if stored.get("key") != key["key"]:
            return None
        return json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def forget(folder: Union[str, Path]) -> None:
    """Drop the stored key before evaluating again: results half-rewritten under an old key never hit."""
    (Path(folder) / KEY_FILE).unlink(missing_ok=True)


def remember(folder: Union[str, Path], key: dict) -> Path:
    """Store `key` beside the results just written (after them: a crash in between only misses)."""
    from mambaft import durable

    path = Path(folder) / KEY_FILE
    durable.write_atomic(path, json.dumps(key, indent=2, sort_keys=True) + "\n")
    return path
