"""The one place that sets seeds, threads, device and precision (nothing happens on import)."""
from __future__ import annotations

import contextlib
import os
import platform
import random
from typing import Optional

import torch

# glibc returns big blocks to the OS and page-faults them back on every step; these settings keep
# them (1.3-2.7x faster CPU training steps measured here, 25-40% more peak memory). They only work in
# the environment of a NEW process, so launchers (course, notebook 03) pass them to their children.
FAST_MALLOC_ENV = {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"}
# What mambaft's launchers (course kernels, training subprocesses, benchmark workers) add to a CPU
# child's environment. OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning at
# barriers; on a shared 2-core box one demo training step took 11.5 s spinning vs 2.0 s passive, a
# 124M decode step 145-195 ms vs 44-50 ms, a 124M 1 x 1024 bf16 training step 10.5-10.9 s vs 8.3-8.6 s.
LAUNCH_ENV = {**FAST_MALLOC_ENV, "OMP_WAIT_POLICY": "PASSIVE"}


def relaunch_in_launch_env(argv: list) -> None:
    """Restart this process (`python argv...`) with LAUNCH_ENV added where the environment lacks it,
    for entry points a user starts by hand (`mambaft pretrain`, benchmarks/profile_step.py). The
    user's own values win. Returns only when nothing was missing (the restarted process, or a caller
    that set them); MAMBAFT_NO_RELAUNCH=1 turns it off."""
    import sys

    missing = {k: v for k, v in LAUNCH_ENV.items() if k not in os.environ}
    if missing and os.environ.get("MAMBAFT_NO_RELAUNCH") != "1":
        os.execve(sys.executable, [sys.executable, *argv], {**os.environ, **missing})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def set_threads(threads: Optional[int] = None) -> int:
    """Use `threads` intra-op threads (default: every core this process may run on)."""
    if threads:
        n = threads
    elif hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - macOS
        n = os.cpu_count() or 1
    torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()


def pick_device(device: Optional[str] = None) -> torch.device:
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


# ATen's vector kernels and oneDNN each pick an instruction set on their own, and each has its own cap
# (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA). An AVX2-only x86 CPU (AMD EPYC before Zen 4) reports one of
# these to ATen and has no bf16 matmul in oneDNN; bf16 there is emulated, slower than fp32.
_X86_BELOW_AVX512 = {"DEFAULT", "NO AVX", "AVX2"}


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 / AMX make bf16 matmuls 5-6x faster than fp32 on this class of CPU. Either cap
    (ATEN_CPU_CAPABILITY=avx2 or ONEDNN_MAX_CPU_ISA=AVX2) makes an AVX-512 machine answer as an
    AVX2-only one does: False."""
    try:
        if (platform.machine().lower() in ("x86_64", "amd64")
                and torch.backends.cpu.get_cpu_capability() in _X86_BELOW_AVX512):
            return False
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover - older builds
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> bf16 where the hardware runs it natively, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_bf16():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """Autocast context for a resolved precision ("fp32" -> no-op). SWELU stays fp32 inside."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)
