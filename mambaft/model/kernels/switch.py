"""The one switch between the fused kernels and their plain-PyTorch twins, checked here only.

    MAMBAFT_KERNELS=fused       (default) the memory- and time-saving custom autograd Functions
    MAMBAFT_KERNELS=reference   the original op sequences under plain autograd: nn.Conv1d's conv,
                                SWELU as the user's src/swelu.py writes it, the full logits and
                                F.cross_entropy. Slower and hungrier; for reading, and for checking
                                the fused path against (tests/test_perf_kernels.py).

`fused()` reads the variable at every call, so `reference_kernels()` can switch one block of code.
"""
from __future__ import annotations

import contextlib
import os

ENV = "MAMBAFT_KERNELS"
CHOICES = ("fused", "reference")
_forced: list = []          # reference_kernels() nesting: the innermost choice wins


def fused() -> bool:
    """Whether the model's conv, SWELU, gate and loss run their fused kernels (see the docstring)."""
    if _forced:
        return _forced[-1] == "fused"
    value = os.environ.get(ENV, "fused").strip().lower() or "fused"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={value!r}: expected one of {', '.join(CHOICES)}")
    return value == "fused"


@contextlib.contextmanager
def reference_kernels(on: bool = True):
    """Inside this block the model runs the plain-PyTorch twins (on=False: the fused kernels)."""
    _forced.append("reference" if on else "fused")
    try:
        yield
    finally:
        _forced.pop()
