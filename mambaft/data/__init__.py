"""Instruction and text data: registry packages, hub/local sources, one schema, rendering, mixing.

Public API (imported lazily, so `import mambaft.data` stays cheap and side-effect free):
    prepare(cfg, out_dir, sources=None, progress=True) -> stats      mambaft.data.prepare
    load_prepared(path) -> DatasetDict                               mambaft.data.prepare
    plan_budget(cfg, stats, num_gpus=None) -> dict                   mambaft.data.planner
    load_text_documents(name, limit=None, split="train") -> list     mambaft.data.text
    fetch(package) -> Path                                           mambaft.data.registry
    heldout_rows(val, "selection" | "test", seed) -> indices         mambaft.data.heldout

    mambaft prepare --strategy smoke --out outputs/data_smoke
"""
from __future__ import annotations

import importlib

_LAZY = {
    "prepare": "mambaft.data.prepare",
    "load_prepared": "mambaft.data.prepare",
    "plan_budget": "mambaft.data.planner",
    "load_text_documents": "mambaft.data.text",
    "TEXT_SOURCES": "mambaft.data.text",
    "fetch": "mambaft.data.registry",
    "PACKAGES": "mambaft.data.registry",
    "heldout_rows": "mambaft.data.heldout",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mambaft.data' has no attribute {name!r}")
