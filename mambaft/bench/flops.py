"""FLOP counts of the MambaSWELU training step and the machine's measured matmul peak.

Model FLOPs (the same count for both implementations, so utilisation compares like for like):
a matmul of [n, a] x [a, b] costs 2*n*a*b; training costs 3x the forward (backward = 2 matmuls per
forward matmul). Per token, with D = d_model, E = 2D, H = dense width, V = vocabulary:

    mixers   n_layers * (D*2E + E*D)     in_proj + out_proj        6 * 6.3M = 37.7M
    head     D*H + H*H + H*D             dense1..3                 8.4M
    lm_head  D*V                         (L-1 positions per row)    51.5M
    conv     n_layers * K*E              depthwise, tiny           49k

so about 6 * 97.6M = 586 MFLOP per trained token at the 124M config (the dead projections and the
embedding lookups cost nothing). Elementwise work (SWELU, norms, softmax) is not counted: it is
memory-bound time, which is exactly what utilisation should expose.
"""
from __future__ import annotations

import time
from typing import Optional

import torch

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' spec sheets, FLOP/s. Used only to
# report utilisation against the chip's nominal figure next to the measured GEMM peak.
NOMINAL_BF16_PEAK = {  # matched in order against torch.cuda.get_device_name: specific names first
    "H200": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12,  # "H100 80GB HBM3" = SXM
    "A100": 312e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12, "A10G": 70e12, "A10": 125e12,
    "RTX 4090": 165e12,   # with fp32 accumulation (what torch uses); 330e12 with fp16 accumulation
    "RTX 3090": 71e12,
}


def train_flops(batch: int, seq: int, d_model: int, n_layers: int, vocab: int, dense: int,
                d_conv: int = 4, expand: int = 2) -> float:
    """Model FLOPs of one forward+backward over [batch, seq] with every position trained."""
    e = expand * d_model
    per_token = n_layers * (d_model * 2 * e + e * d_model + d_conv * e) \
        + d_model * dense + dense * dense + dense * d_model
    fwd = 2.0 * (batch * seq * per_token + batch * (seq - 1) * d_model * vocab)
    return 3.0 * fwd


def forward_flops(tokens: int, d_model: int, n_layers: int, vocab: int, dense: int,
                  logits_positions: Optional[int] = None, expand: int = 2) -> float:
    """Model FLOPs of a forward over `tokens` positions, with lm_head on `logits_positions`."""
    e = expand * d_model
    per_token = n_layers * (d_model * 2 * e + e * d_model) + d_model * dense + dense * dense + dense * d_model
    lp = tokens if logits_positions is None else logits_positions
    return 2.0 * (tokens * per_token + lp * d_model * vocab)


def gemm_shape(device: torch.device, tokens: int, d_model: int) -> tuple:
    """The GEMM the peak is measured on: the in_proj of up to 2048 tokens ([tokens, D] x [D, 4D],
    17 GFLOP at the 124M size) on CPU; 8192^3 on CUDA (big enough for a GPU's tensor cores)."""
    if device.type == "cuda":
        return (8192, 8192, 8192)
    return (min(2048, tokens), d_model, 4 * d_model)


def matmul_peak(device: torch.device, dtype: torch.dtype, shape: Optional[tuple] = None,
                repeats: int = 5) -> float:
    """Best FLOP/s of one GEMM [m, k] x [k, n] (default: `gemm_shape` at the 124M size). Best, not
    median: noise only ever slows a GEMM down."""
    m, k, n = shape or gemm_shape(device, 2048, 1024)
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    best = float("inf")
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        (a @ b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:  # the first two warm caches and pick kernels
            best = min(best, time.perf_counter() - t0)
    return 2.0 * m * k * n / best


def copy_bandwidth(device: torch.device, mbytes: int = 256, repeats: int = 5) -> float:
    """Best bytes/s of `dst.copy_(src)` over a buffer far bigger than the caches, counting bytes read
    plus bytes written (STREAM's "Copy" convention): the memory bandwidth decoding is bound by."""
    n = mbytes * 1024 * 1024 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 1:  # the first touches the pages
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n * 4 / best


def nominal_bf16_peak(device: torch.device) -> tuple[Optional[str], Optional[float]]:
    """(card name, spec-sheet dense bf16 FLOP/s) for a known CUDA card, else (name or None, None)."""
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    for key, peak in NOMINAL_BF16_PEAK.items():
        if key in name:
            return name, peak
    return name, None
