"""SWELU, the bounded activation of MambaSWELU.

    SWELU(z) = sign(z) * (1 - exp(-(|z| + 1e-8) ** k_eff)),   k_eff = |k| + 1e-6

One learnable scalar `k` per module (init 1.0). Odd, bounded in (-1, 1), saturating; for k < 1 it is
very steep near 0 (|z|**k with k ~ 0.4), which bf16 cannot resolve: it is always computed in fp32,
even under autocast. The op order mirrors the original so fp32 results match it bit for bit.

Later versions of the original project added a scale `lam` with two different formulas; the 124M
checkpoint has none. Loading `lam` keys requires naming the formula (`LAM_FORMULAS`).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

# The two `lam` variants of later SWELU versions. "outer" is the one in the public repository's
# later src/swelu.py; "inner" scales the input instead. We never guess which one a checkpoint used.
LAM_FORMULAS = {
    "outer": "lam * sign(z) * (1 - exp(-(|z| + 1e-8) ** k_eff))",
    "inner": "sign(z) * (1 - exp(-(|lam * z| + 1e-8) ** k_eff))",
}


def swelu(z: torch.Tensor, k: torch.Tensor, lam: Optional[torch.Tensor] = None,
          lam_formula: Optional[str] = None) -> torch.Tensor:
    """Functional SWELU in fp32 (fp64 for fp64 input); bf16/fp16 inputs give an fp32 result."""
    dtype = torch.float64 if z.dtype == torch.float64 else torch.float32  # never below fp32
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.to(dtype)
        k_eff = torch.abs(k.to(dtype)) + 1e-6
        base = torch.abs(z)
        if lam is not None and lam_formula == "inner":
            base = torch.abs(lam.to(dtype) * z)
        activation = 1.0 - torch.exp(-torch.pow(base + 1e-8, k_eff))
        out = torch.sign(z) * activation
        if lam is not None and lam_formula == "outer":
            out = lam.to(dtype) * out
        return out


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

    def extra_repr(self) -> str:
        extra = f", lam={self.lam.item():.4f} ({self.lam_formula})" if self.lam is not None else ""
        return f"k={self.k.item():.4f}{extra}"
