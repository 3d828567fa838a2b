"""SWELU, the bounded activation of MambaSWELU.

    SWELU(z) = sign(z) * (1 - exp(-(|z| + 1e-8) ** k_eff)),   k_eff = |k| + 1e-6

One learnable scalar `k` per module (init 1.0). Odd, bounded in (-1, 1), saturating; for k < 1 it is
very steep near 0 (|z|**k with k ~ 0.4), which bf16 cannot resolve: it is always computed in fp32,
even under autocast. The op order mirrors the original so fp32 results match it bit for bit.

Later versions of the original project added a scale `lam`; the 124M checkpoint has none. Loading
`lam` keys requires naming the formula (`LAM_FORMULAS`): "scaled" is the one of the user's commit
049fe10 (src/swelu.py), computed in its op order, so fp32 values equal it bit for bit.

Speed (the pow/exp chain dominates the elementwise time of a training step): `swelu` runs a custom
autograd Function that keeps only its input (bf16 under autocast: 2 B/element instead of the ~5 fp32
intermediates autograd keeps for the composed ops: abs, pow base, pow result, exp result, sign) and
recomputes the chain in backward with in-place ops; `SWELU.gate` (the mixer's SWELU(x) * sigmoid(z))
does the same for the whole gated branch. Forward values are bit-identical to `swelu_reference` and
the plain ops (same ops, same order); gradients agree to fp32 rounding (tests/test_perf_kernels.py).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .switch import fused

# The `lam` variants of later SWELU versions; we never guess which one a checkpoint used.
# "scaled": commit 049fe10's src/swelu.py (lam_eff = |lam| + 1e-6, like k_eff); "outer" scales the
# output by lam as given, "inner" scales the input.
LAM_FORMULAS = {
    "scaled": "sign(z) * lam_eff * (1 - exp(-(|z| / lam_eff + 1e-8) ** k_eff)), lam_eff = |lam| + 1e-6 "
              "(commit 049fe10)",
    "outer": "lam * sign(z) * (1 - exp(-(|z| + 1e-8) ** k_eff))",
    "inner": "sign(z) * (1 - exp(-(|lam * z| + 1e-8) ** k_eff))",
}


def _compute_dtype(z: torch.Tensor) -> torch.dtype:
    return torch.float64 if z.dtype == torch.float64 else torch.float32  # never below fp32


def _swelu_forward(z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """SWELU values (fp32, or fp64 for fp64 z) with one full-size buffer, ops in the original order."""
    dtype = _compute_dtype(z)
    k_eff = torch.abs(k.to(dtype)) + 1e-6
    # |z| is exact in any dtype, so abs-then-upcast equals upcast-then-abs and skips an fp32 copy
    t = torch.abs(z).to(dtype)
    t.add_(1e-8).pow_(k_eff).neg_().exp_()                 # e = exp(-(|z| + 1e-8) ** k_eff)
    return t.neg_().add_(1.0).mul_(torch.sign(z))          # (1 - e) * sign(z): same rounding as 1.0 - e


def _swelu_backward(z: torch.Tensor, k: torch.Tensor, grad_out: torch.Tensor, needs: tuple):
    """(d/dz, d/dk) of sum(grad_out * SWELU(z; k)), recomputing the chain from z.

    With a = |z| + 1e-8, p = a ** k_eff, e = exp(-p), out = sign(z) * (1 - e):
        d out / d z     = sign(z)^2 * e * k_eff * p / a      (d|z|/dz = sign(z); 0 at z = 0, as autograd)
        d out / d k_eff = sign(z) * e * p * ln(a)
        d k_eff / d k   = sign(k)
    """
    dtype = _compute_dtype(z)
    k_eff = torch.abs(k.to(dtype)) + 1e-6
    a = torch.abs(z).to(dtype).add_(1e-8)                  # [*] a (a fresh buffer in every dtype)
    p = torch.pow(a, k_eff)                                # [*] p
    common = torch.neg(p).exp_().mul_(p).mul_(grad_out)    # [*] g * e * p
    s = torch.sign(z)                                      # [*] sign(z), in z's dtype (exact)
    common.mul_(s)                                         # g * d out/d k_eff / ln(a)
    grad_z = grad_k = None
    if needs[1]:
        ln_a = torch.log(a, out=p)                         # p is no longer needed: reuse its buffer
        # sum over every element of g * d out/d k_eff, then the chain through k_eff = |k| + 1e-6
        grad_k = torch.dot(common.reshape(-1), ln_a.reshape(-1)) * torch.sign(k.to(dtype))
        grad_k = grad_k.to(k.dtype).reshape(k.shape)
    if needs[0]:
        grad_z = common.mul_(s).mul_(k_eff).div_(a).to(z.dtype)
    return grad_z, grad_k


class _SweluFunction(torch.autograd.Function):
    """SWELU without `lam`: saves z (its own dtype) and k; recomputes the chain in backward."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z, k)
        return _swelu_forward(z, k)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        z, k = ctx.saved_tensors
        return _swelu_backward(z, k, grad_out, ctx.needs_input_grad[:2])


class _SweluGateFunction(torch.autograd.Function):
    """out = SWELU(x; k) * sigmoid(z), the mixer's gate, saving only x, z and k.

    Plain autograd would also keep SWELU(x) in fp32 and sigmoid(z) (12 bytes per channel and token
    under bf16 autocast: 150 MB per 2048 tokens at the 124M size); both are recomputed in backward.
    With a = SWELU(x), s = sigmoid(z):  d out/d x = g * s * a'(x),  d out/d z = g * a * s * (1 - s),
    d out/d k = sum(g * s * d a/d k).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, k, z)
        # sigmoid in z's own dtype, then the fp32 product: the same roundings as the plain ops
        return _swelu_forward(x, k).mul_(torch.sigmoid(z))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, k, z = ctx.saved_tensors
        s = torch.sigmoid(z).to(_compute_dtype(x))         # [*] s
        grad_z = None
        if ctx.needs_input_grad[2]:
            a = _swelu_forward(x, k)                        # [*] SWELU(x), recomputed
            grad_z = a.mul_(grad_out).mul_(s).mul_(1.0 - s).to(z.dtype)
        grad_x, grad_k = _swelu_backward(x, k, s.mul_(grad_out), ctx.needs_input_grad[:2])
        return grad_x, grad_k, grad_z


def swelu_reference(z: torch.Tensor, k: torch.Tensor, lam: Optional[torch.Tensor] = None,
                    lam_formula: Optional[str] = None) -> torch.Tensor:
    """The original op sequence under plain autograd (also the path for the `lam` variants)."""
    dtype = torch.float64 if z.dtype == torch.float64 else torch.float32  # never below fp32
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.to(dtype)
        k_eff = torch.abs(k.to(dtype)) + 1e-6
        if lam is not None and lam_formula == "scaled":       # 049fe10's ops, in its order
            lam_eff = torch.abs(lam.to(dtype)) + 1e-6
            power = torch.pow(torch.abs(z) / lam_eff + 1e-8, k_eff)
            return torch.sign(z) * (lam_eff * (1.0 - torch.exp(-power)))
        base = torch.abs(z)
        if lam is not None and lam_formula == "inner":
            base = torch.abs(lam.to(dtype) * z)
        activation = 1.0 - torch.exp(-torch.pow(base + 1e-8, k_eff))
        out = torch.sign(z) * activation
        if lam is not None and lam_formula == "outer":
            out = lam.to(dtype) * out
        return out


def swelu_gate(x: torch.Tensor, k: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SWELU(x; k) * sigmoid(z) (fp32 result), keeping only x, z, k for backward. x, z: same shape."""
    if fused():
        return _SweluGateFunction.apply(x, k, z)
    return swelu_reference(x, k) * torch.sigmoid(z)


def swelu(z: torch.Tensor, k: torch.Tensor, lam: Optional[torch.Tensor] = None,
          lam_formula: Optional[str] = None) -> torch.Tensor:
    """Functional SWELU in fp32 (fp64 for fp64 input); bf16/fp16 inputs give an fp32 result.
    z: any shape; k: 0-d. Same values as `swelu_reference`, with less memory and time in training."""
    if lam is not None or not fused():
        return swelu_reference(z, k, lam, lam_formula)
    return _SweluFunction.apply(z, k)


class SWELU(nn.Module):
    """SWELU with its learnable shape `k` (state-dict key `<name>.k`, a 0-d fp32 tensor)."""

    def __init__(self, k_init: float = 1.0, lam_formula: Optional[str] = None):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(float(k_init)))
        self.lam_formula = lam_formula
        if lam_formula is not None:
            if lam_formula not in LAM_FORMULAS:
                raise ValueError(f"lam_formula={lam_formula!r}: expected one of {sorted(LAM_FORMULAS)}")
            self.lam = nn.Parameter(torch.tensor(1.0))
        else:
            self.lam = None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return swelu(z, self.k, self.lam, self.lam_formula)

    def gate(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """self(x) * sigmoid(z), the mixer's gated branch, with the memory-saving fused Function."""
        if self.lam is not None:
            return self(x) * torch.sigmoid(z)
        return swelu_gate(x, self.k, z)

    def extra_repr(self) -> str:
        extra = f", lam={self.lam.item():.4f} ({self.lam_formula})" if self.lam is not None else ""
        return f"k={self.k.item():.4f}{extra}"
