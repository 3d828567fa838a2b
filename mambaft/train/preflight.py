"""Pre-flight check before a multi-GPU run: GPUs visible, free memory, NCCL peer-to-peer.

RTX 4090s (consumer cards) often report peer-to-peer access that then hangs or corrupts NCCL
all-reduces on multi-GPU boxes; the standard workaround is `NCCL_P2P_DISABLE=1` (all-reduce through host
memory; about 10-20% slower for a 124M model, but correct). The check copies a tensor between every
pair of GPUs and compares it, and advises that setting when a copy fails or P2P is unavailable.

    mambaft preflight --num-processes 6        # exit status 1 when a check fails
    mambaft preflight --num-processes 6 --json # the same as one JSON object (what the course reads)

The report also carries `env`: the variables the launch should set (NCCL_P2P_DISABLE=1 where advised).
A failed P2P copy is fixed by that setting, so it is not `blocking`; too few GPUs or too little free
memory is. Notebook 03 runs this check in a subprocess, applies `env` and stops on `blocking`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

# 124M fine-tune, per GPU: fp32 weights 0.5 GB + AdamW moments 0.8 GB (trainable ~99M x 8 B) +
# gradients 0.4 GB + activations of 2 x 1024 tokens under bf16 (~2-3 GB): about 4-5 GB; ask for 8.
MIN_FREE_GB = 8.0


@dataclass
class PreflightReport:
    ok: bool = True
    lines: list = field(default_factory=list)
    advice: list = field(default_factory=list)
    p2p_failed: list = field(default_factory=list)   # (i, j) pairs
    env: dict = field(default_factory=dict)          # variables the launch should set
    blocking: list = field(default_factory=list)     # failures no environment variable fixes

    def fail(self, msg: str, fixed_by_env: bool = False) -> None:
        self.ok = False
        self.lines.append(f"FAIL  {msg}")
        if not fixed_by_env:
            self.blocking.append(msg)

    def good(self, msg: str) -> None:
        self.lines.append(f"ok    {msg}")

    def to_dict(self) -> dict:
        return {"ok": self.ok, "lines": self.lines, "advice": self.advice, "env": self.env,
                "blocking": self.blocking, "p2p_failed": [list(p) for p in self.p2p_failed]}

    def text(self) -> str:
        out = list(self.lines)
        out += [f"ADVICE {a}" for a in self.advice]
        out.append("pre-flight: " + ("all checks passed" if self.ok else "FAILED"))
        return "\n".join(out)


def _p2p_copy_ok(i: int, j: int) -> bool:
    """Copy 16 MB from GPU i to GPU j and compare (catches 'P2P reported but broken')."""
    src = torch.arange(4 * 1024 * 1024, dtype=torch.float32, device=f"cuda:{i}")
    dst = src.to(f"cuda:{j}")
    torch.cuda.synchronize(i)
    torch.cuda.synchronize(j)
    return bool(torch.equal(dst.cpu(), src.cpu()))


def preflight(num_processes: int = 0, min_free_gb: float = MIN_FREE_GB) -> PreflightReport:
    """Check the GPUs a launch of `num_processes` will use (0: all visible)."""
    rep = PreflightReport()
    if not torch.cuda.is_available():
        rep.fail("no CUDA GPU visible to torch (CPU-only build or driver missing); "
                 "CPU training works, multi-GPU launches do not")
        rep.lines.append(f"      torch {torch.__version__}, CUDA build: {torch.version.cuda}")
        return rep
    n = torch.cuda.device_count()
    want = num_processes or n
    if n < want:
        rep.fail(f"{n} GPU(s) visible, {want} processes requested "
                 f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    else:
        rep.good(f"{n} GPU(s) visible, {want} will be used")
    names = []
    for i in range(min(n, want)):
        name = torch.cuda.get_device_name(i)
        names.append(name)
        free, total = torch.cuda.mem_get_info(i)
        msg = f"cuda:{i} {name}: {free / 2**30:.1f} of {total / 2**30:.1f} GiB free"
        if free / 2**30 < min_free_gb:
            rep.fail(msg + f" (< {min_free_gb:g} GiB: another process holds this GPU?)")
        else:
            rep.good(msg)
        major, minor = torch.cuda.get_device_capability(i)
        if major < 8:
            rep.lines.append(f"      cuda:{i} has no bf16 (compute {major}.{minor}): precision auto -> fp16 "
                             "with a gradient scaler")
    used = min(n, want)
    if used >= 2:
        if os.environ.get("NCCL_P2P_DISABLE") == "1":
            rep.good("NCCL_P2P_DISABLE=1 is set: NCCL will not use peer-to-peer")
        for i in range(used):
            for j in range(used):
                if i == j:
                    continue
                can = torch.cuda.can_device_access_peer(i, j)
                try:
                    copied = _p2p_copy_ok(i, j)
                except RuntimeError as e:
                    copied = False
                    rep.lines.append(f"      copy cuda:{i} -> cuda:{j} raised {type(e).__name__}: {e}")
                if not copied:
                    rep.p2p_failed.append((i, j))
                elif not can and os.environ.get("NCCL_P2P_DISABLE") != "1":
                    rep.lines.append(f"      cuda:{i} -> cuda:{j}: no peer access (copies go through host)")
        if rep.p2p_failed:
            rep.fail(f"GPU-to-GPU copies failed for {len(rep.p2p_failed)} pair(s): {rep.p2p_failed[:6]}",
                     fixed_by_env=True)   # NCCL_P2P_DISABLE=1 routes NCCL around the broken path
        else:
            rep.good(f"GPU-to-GPU copies correct for all {used * (used - 1)} ordered pairs")
        consumer = any("4090" in nm or "4080" in nm or "3090" in nm for nm in names)
        if (rep.p2p_failed or consumer) and os.environ.get("NCCL_P2P_DISABLE") != "1":
            rep.advice.append("export NCCL_P2P_DISABLE=1 before `accelerate launch` (RTX 40xx boxes: "
                              "P2P is often reported but hangs or corrupts NCCL all-reduces)")
            rep.env["NCCL_P2P_DISABLE"] = "1"
    return rep
