"""Float tolerances of the tests, derived from error bounds that hold on every CPU.

Kernels differ between CPUs: ATen's DEFAULT / AVX2 / AVX512 code paths and oneDNN's sum in different
orders and vector widths, so an fp32 result is only reproducible to within its rounding-error bound.
Tests that compare fp32 results use the bounds below (or say why they use less); tests about
arithmetic (masking, averaging, bookkeeping) run in float64 where the answer is exact to ~1e-15.
CI runs the tests marked `numerics` a second time with the kernels forced down to the lowest ISA
(`make test`), so a tolerance that only holds on one kernel cannot land.

u is the unit roundoff: a correctly rounded operation errs by at most u relative.
A sum of n terms, in ANY order, errs by at most (n - 1) u sum|x_i| (Higham, Accuracy and Stability
of Numerical Algorithms, 2nd ed., section 4.2), to first order in u.
"""
from __future__ import annotations

FP32_U = 2.0 ** -24      # 5.96e-8
FP64_U = 2.0 ** -53      # 1.11e-16


def sum_rel_error(n: int, u: float = FP32_U) -> float:
    """Worst-case error of a sum of n terms, relative to sum|x_i|, for any summation order."""
    return (n - 1) * u


def log_softmax_abs_error(vocab: int, value: float = 0.0, u: float = FP32_U) -> float:
    """Worst-case absolute error of one log-softmax entry x_i - m - ln S over `vocab` logits, where
    S = sum exp(x_j - m) lies in [1, vocab]: the sum's relative error (vocab - 1) u, plus one rounding
    each for exp (vectorised exp is within 1 ulp: 2u) and ln, becomes an absolute error of ln S; the two
    subtractions add 2u |value| (value: the log-probability's size).
    For GPT-2's 50,257 tokens in fp32: (50,256 + 3) x 5.96e-8 = 3.0e-3 nats. Kernels measured so far
    differ by ~5e-5 on the tests' stub (AVX-512 vs ATEN_CPU_CAPABILITY=default), 60x inside it."""
    return sum_rel_error(vocab, u) + 3 * u + 2 * u * abs(value)


def dot_abs_error(n: int, u: float = FP32_U) -> float:
    """gamma_n = n u / (1 - n u): a dot product of n terms (products rounded, then summed in any order)
    is within gamma_n * sum|a_i b_i| of the exact value (Higham, section 3.1)."""
    return n * u / (1 - n * u)


def assert_within_dot_bound(actual, expected, n: int, scale, u: float = FP32_U) -> None:
    """`actual` and `expected` are two evaluations, by any kernels, of the same n-term dot products
    whose |terms| sum to `scale` (elementwise: the same op applied to |inputs|, in float64). Each is
    within gamma_n * scale of the exact value, so they differ by at most 2 gamma_n * scale."""
    import torch

    diff = (actual.double() - expected.double()).abs()
    bound = 2 * dot_abs_error(n, u) * scale.double()
    worst = int(torch.argmax(diff - bound))
    assert bool((diff <= bound).all()), (f"|diff| {diff.flatten()[worst]:.3e} > bound {bound.flatten()[worst]:.3e} "
                                         f"(2 gamma_{n} x scale) at flat index {worst}")


# --- parity with tests/fixtures/mambaswelu_tiny/reference.pt ---------------------------------------
# The reference holds fp32 logits (|x| up to 19.9) computed by the original code on its author's CPU.
# A deep nonlinear forward pass has no useful a-priori bound (SWELU's slope is unbounded at 0 for
# k < 1), so these two are measured, on the kernels that sum in the most different orders:
# REFERENCE_TOL, the reference's own fp32 rounding: a float64 evaluation of the same weights (its error
#   ~1e-13 on any CPU) is at most 0.89 of it away (max |diff| 1.19e-5).
# FP32_FORWARD_TOL, our fp32 forward against the reference: 0 on AVX-512 and with ATEN_CPU_CAPABILITY=avx2
#   or ONEDNN_MAX_CPU_ISA=AVX2 (the reference's kernels), 3.5e-5 = 0.35 of it with
#   ATEN_CPU_CAPABILITY=default (scalar kernels, sequential sums: the longest rounding chains torch has).
REFERENCE_TOL = dict(atol=1e-5, rtol=1e-5)
FP32_FORWARD_TOL = dict(atol=1e-4, rtol=1e-5)

# Two fp32 paths to the tiny model's mean cross-entropy (full logits + F.cross_entropy vs the chunked
# linear_cross_entropy, or a "sum" reduction / n): the same features; logits from different matmul
# kernels differ by <= 2 gamma_64 x 37.5 (max sum|h w| at its 64-wide lm_head) = 2.9e-4, a token's loss
# by twice that; plus two fp32 log-softmaxes over 512 logits (2 x 3.1e-5) and a mean of <= 78 losses
# (each < 20) summed in two orders (2 x 77 u x 20 = 1.8e-4): 8.1e-4. Measured: <= 2.0e-6 on every
# kernel; a chunking bug (a token dropped or counted twice) moves the mean by ~14 / 60 = 0.2.
TINY_LOSS_PATHS_TOL = (2 * 2 * dot_abs_error(64) * 37.5 + 2 * log_softmax_abs_error(512, 20)
                       + 2 * sum_rel_error(78) * 20)

# Decoding (prefill + one step at a time) against the full parallel forward, fp32: the same function
# summed in different orders (conv window, recurrence vs scan). Measured max |diff| 5.5e-5 = 0.39 of
# this (ATen DEFAULT kernels; 0.13-0.16 on AVX-512 / AVX2), logits up to |20|.
STEP_TOL = dict(atol=1e-4, rtol=1e-5)
