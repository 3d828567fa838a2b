"""The selective state-space path of one mixer (architecture="selective"): its parameters and scan,
gated per channel. What it adds to the as-trained model, and why each choice: mambaft.model.selective.

    python -m pytest tests/test_selective.py
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .kernels.scan import selective_scan, selective_step

SELECTIVE_KEY = ".selective."


def dt_rank(d_model: int) -> int:
    """Mamba's rank for the step-size projection: ceil(d_model / 16) (64 at d_model 1024)."""
    return math.ceil(d_model / 16)


class SelectiveSSM(nn.Module):
    """The selective state-space path of one mixer (parameters + scan), gated per channel."""

    def __init__(self, d_inner: int, ssm_state: int, rank: int):
        super().__init__()
        self.d_inner, self.ssm_state, self.rank = d_inner, ssm_state, rank
        self.dbc_proj = nn.Linear(d_inner, rank + 2 * ssm_state, bias=False)
        self.delta_proj = nn.Linear(rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, ssm_state))
        self.D = nn.Parameter(torch.empty(d_inner))
        self.gate = nn.Parameter(torch.zeros(d_inner))
        # Mamba excludes these from weight decay (decay would pull A towards -1 and D towards 0);
        # an optimizer builder that honours `_no_weight_decay` keeps them out of the decay group.
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.gate._no_weight_decay = True
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """Mamba's initialisation; the gate goes back to 0 (function-preserving)."""
        E, N, R = self.d_inner, self.ssm_state, self.rank
        nn.init.kaiming_uniform_(self.dbc_proj.weight, a=math.sqrt(5))      # torch's Linear default
        nn.init.uniform_(self.delta_proj.weight, -R ** -0.5, R ** -0.5)
        # Step sizes log-uniform in [1e-3, 0.1]: memory from ~10 to ~1000 tokens (1/Delta) at start.
        dt = torch.exp(torch.rand(E) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=1e-4)
        self.delta_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))        # softplus^-1(dt)
        self.A_log.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).expand(E, N))
        self.D.fill_(1.0)
        self.gate.zero_()

    def project(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """a [..., E] -> (delta [..., E], B [..., N], C [..., N]), fp32."""
        # a is fp32 (SWELU): in the weights' dtype for the matmul (a no-op for fp32 weights)
        d_r, Bm, Cm = self.dbc_proj(a.to(self.dbc_proj.weight.dtype)).split([self.rank, self.ssm_state, self.ssm_state], dim=-1)
        delta = F.softplus(self.delta_proj(d_r).float())
        return delta, Bm.float(), Cm.float()

    def forward(self, a: torch.Tensor, mask: Optional[torch.Tensor] = None,
                positions: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """a: [B, L, E] -> (y [B, L, E] fp32, last state [B, E, N]).
        mask: [B, L] bool, False on right padding: delta = 0 there, so exp(0 * A) = 1 and the input
        term is 0, and the last state equals the state after each row's last real token.
        positions: [B, L] for packed rows: the state restarts from 0 wherever the position is 0."""
        delta, Bm, Cm = self.project(a)
        if mask is not None:
            delta = delta * mask[..., None].to(delta.dtype)
        A = -torch.exp(self.A_log.float())                                    # [E, N] < 0
        with torch.autocast(device_type=a.device.type, enabled=False):
            keep = None if positions is None else (positions != 0)
            return selective_scan(a.float(), delta, A, Bm, Cm, self.D.float(), keep=keep)

    def step(self, a: torch.Tensor, h: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One token: a [B, E], h [B, E, N] or None -> (y [B, E], h)."""
        delta, Bm, Cm = self.project(a)
        A = -torch.exp(self.A_log.float())
        return selective_step(a.float(), delta, A, Bm, Cm, self.D.float(), h)

    def mix(self, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """a + g * y; with g = 0 this is a, bit for bit."""
        return a + self.gate * y
