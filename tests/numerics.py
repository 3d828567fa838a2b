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
