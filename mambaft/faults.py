"""Fault injection for the crash tests: MAMBAFT_FAULT="<point>=<step>" (or "<point>") kills this
process with a real SIGKILL at that point, so nothing (no finally, no atexit) runs after it.

Points: after_step, save_model (model folder written, trainer state not yet), in_save (every file
written, not yet renamed), after_rename (committed, not yet rotated or logged), prepare_saved
(the dataset written into the temp folder, not yet moved into place).
"""
from __future__ import annotations

import os
import signal
from typing import Optional


def inject(point: str, step: Optional[int] = None) -> None:
    spec = os.environ.get("MAMBAFT_FAULT", "")
    if spec and spec == (point if step is None else f"{point}={step}"):
        os.kill(os.getpid(), signal.SIGKILL)
