"""The selective scan of Mamba: exact, memory-bounded on CPU, the `mamba_ssm` kernel on CUDA.

Glossary (code name -> Mamba paper symbol):
    B, L, E, N   batch, sequence length, channels (d_inner), state size (d_state)
    x            [B, L, E]  the scan input u_t (here: SWELU_s(conv(x)), see selective.py)
    delta        [B, L, E]  the step size Delta_t (already positive: softplus applied by the caller)
    A            [E, N]     the (negative) state matrix, diagonal per channel: A = -exp(A_log)
    Bm, Cm       [B, L, N]  the input-dependent B_t and C_t
    D            [E]        the skip term
    h            [B, E, N]  the state

    keep         [B, L]     packed rows only: 0 where a new conversation starts, else 1 (None: all 1)

Recurrence (zero-order hold for A, Euler for B, as in Mamba):
    h_t = keep_t * exp(delta_t A) * h_{t-1} + (delta_t x_t) B_t        h_{-1} = 0
    y_t = h_t . C_t + D x_t
keep_t = 0 resets the state at a conversation boundary: h_t is then (delta_t x_t) B_t, exactly what
the conversation computes alone from h_{-1} = 0 (0 * h adds an exact 0), and no gradient flows back
across it (the adjoint is multiplied by the same 0).

Paths:
    selective_scan_ref   a plain loop under autograd: the definition the others are tested against.
    selective_scan       CUDA + mamba_ssm installed: its fused kernel. Otherwise `_ChunkedScan`: the
                         sequential loop as a torch.autograd.Function with a hand-written backward.
    selective_step       one token (O(1)): the recurrent form used by generation.

Why `_ChunkedScan` (cpu-performance.md, mamba-130m sizes, fp32, training tokens/s at 1 x 512): the
autograd loop 53, a hand-written-backward loop 96; transformers' loop 1.5. It never holds the
[B, L, E, N] tensor: the time axis is cut into chunks of T steps with T * B * E * N <= `budget`
elements (2^18 = 1 MiB of fp32 per tensor, so the ~5 chunk tensors of backward stay in L2 cache),
e.g. B=4, E=2048, N=16 -> 131,072 per step -> T = 2; B=1, E=1536 -> T = 10. Inside a chunk the
exp/products are vectorized and the loop does ONE in-place addcmul per step each way. Forward keeps
only the state at each chunk start ([L/T, B, E, N]); backward recomputes the chunk's states from it.
Measured here (scan alone, forward + backward, 1 x 512 x 1536 x 16, 2 shared cores): reference loop
45 tok/s, this 2,900 tok/s at budget 2^18 (1,540 at 2^20, 610 at 2^21: bigger chunks fall out of
cache). We deliberately do not use the cumsum-of-log-decay (parallel) form: in fp32 exp(+cumsum)
overflows unless each chunk is capped by its decay, and the loop is exact.

    mambaft scan        # check against the reference loop and time both
"""
from __future__ import annotations

from typing import Optional

import torch

try:  # the fused CUDA kernel of state-spaces/mamba (pip install mamba-ssm), when present
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_ssm_scan
except Exception:  # ImportError, or a build that does not match this torch/CUDA
    _mamba_ssm_scan = None

HAS_MAMBA_SSM = _mamba_ssm_scan is not None
DEFAULT_BUDGET = 1 << 18   # elements of one [T, B, E, N] chunk tensor (1 MiB in fp32: stays in L2)


def selective_scan_ref(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor,
                       Cm: torch.Tensor, D: torch.Tensor, h0: Optional[torch.Tensor] = None,
                       keep: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition, one step at a time under autograd. Returns (y [B, L, E], h_last [B, E, N])."""
    Bsz, L, E = x.shape
    h = x.new_zeros(Bsz, E, A.shape[1]) if h0 is None else h0
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, t, :, None] * A)                              # [B, E, N]
        if keep is not None:
            dA = dA * keep[:, t, None, None]
        h = dA * h + (delta[:, t] * x[:, t])[..., None] * Bm[:, t, None, :]   # [B, E, N]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + D * x[:, t])              # [B, E]
    return torch.stack(ys, dim=1), h


def selective_step(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor,
                   Cm: torch.Tensor, D: torch.Tensor, h: Optional[torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One token. x, delta: [B, E]; Bm, Cm: [B, N]; h: [B, E, N] or None (= zeros).
    Returns (y [B, E], new h [B, E, N])."""
    dBx = (delta * x)[..., None] * Bm[:, None, :]                             # [B, E, N]
    dA = torch.exp(delta[..., None] * A)                                      # [B, E, N]
    h = dBx if h is None else torch.addcmul(dBx, h, dA)
    y = torch.bmm(h, Cm[..., None]).squeeze(-1) + D * x                       # [B, E]
    return y, h


def chunk_length(Bsz: int, L: int, E: int, N: int, budget: int = DEFAULT_BUDGET) -> int:
    """Steps per chunk so that one [T, B, E, N] tensor holds at most `budget` elements."""
    return max(1, min(L, budget // max(1, Bsz * E * N)))


def _chunk_states(h0: torch.Tensor, x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                  Bm: torch.Tensor, keep: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """States of one chunk. h0: [B, E, N] (state before it); x, delta: [B, T, E]; Bm: [B, T, N];
    keep: [B, T] or None. Returns (dA [T, B, E, N], H [T, B, E, N]) with H[t] = h at step t."""
    dt = delta.transpose(0, 1)                                                # [T, B, E]
    dA = torch.exp(dt[..., None] * A)                                         # [T, B, E, N]
    if keep is not None:
        dA.mul_(keep.transpose(0, 1)[:, :, None, None])                       # 0 at a boundary
    H = (dt * x.transpose(0, 1))[..., None] * Bm.transpose(0, 1)[:, :, None, :]  # dBx: [T, B, E, N]
    H[0].addcmul_(h0, dA[0])
    for t in range(1, H.shape[0]):                                            # the sequential part:
        H[t].addcmul_(H[t - 1], dA[t])                                        # one op per step
    return dA, H


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, A, Bm, Cm, D, budget: int, keep=None):
        Bsz, L, E = x.shape
        N = A.shape[1]
        T = chunk_length(Bsz, L, E, N, budget)
        h = x.new_zeros(Bsz, E, N)
        y = torch.empty_like(x)
        starts = []                                                           # state before each chunk
        for s in range(0, L, T):
            e = min(s + T, L)
            starts.append(h)
            _, H = _chunk_states(h, x[:, s:e], delta[:, s:e], A, Bm[:, s:e],
                                 None if keep is None else keep[:, s:e])
            ct = Cm[:, s:e].transpose(0, 1)                                   # [T, B, N]
            yc = torch.einsum("tben,tbn->tbe", H, ct)                         # [T, B, E]
            y[:, s:e] = yc.transpose(0, 1) + D * x[:, s:e]
            h = H[-1].clone()                                                 # drop the chunk, keep h
        ctx.save_for_backward(x, delta, A, Bm, Cm, D, torch.stack(starts), keep)
        ctx.T = T
        return y, h

    @staticmethod
    def backward(ctx, gy, gh_last):
        # Adjoint of the state: G_t = gy_t (x) C_t + dA_{t+1} * G_{t+1}, walked backwards in time.
        # Then with a_t = exp(delta_t A) and b_t = delta_t x_t B_t:  dL/d(delta_t A) = G_t h_{t-1} a_t,
        # dL/db_t = G_t, dL/dC_t = sum_e gy_t h_t, dL/dx_t = D gy_t + delta_t (G_t . B_t).
        x, delta, A, Bm, Cm, D, starts, keep = ctx.saved_tensors
        T = ctx.T
        L = x.shape[1]
        gy = gy.contiguous()
        gx = gy * D
        gdelta = torch.empty_like(delta)
        gB = torch.empty_like(Bm)
        gC = torch.empty_like(Cm)
        gA = torch.zeros_like(A)
        gD = (gy * x).sum((0, 1))
        carry = gh_last if gh_last is not None else None                      # dL/dh_{e-1} from the future
        for c in reversed(range(starts.shape[0])):
            s, e = c * T, min(c * T + T, L)
            xc, dc, bc = x[:, s:e], delta[:, s:e], Bm[:, s:e]
            dA, H = _chunk_states(starts[c], xc, dc, A, bc,                   # recompute: [T, B, E, N]
                                  None if keep is None else keep[:, s:e])
            gyc = gy[:, s:e].transpose(0, 1)                                  # [T, B, E]
            bt, ct = bc.transpose(0, 1), Cm[:, s:e].transpose(0, 1)           # [T, B, N]
            gC[:, s:e] = torch.einsum("tbe,tben->tbn", gyc, H).transpose(0, 1)
            G = gyc[..., None] * ct[:, :, None, :]                            # [T, B, E, N]
            if carry is not None:
                G[-1] += carry
            for t in range(G.shape[0] - 2, -1, -1):
                G[t].addcmul_(G[t + 1], dA[t + 1])
            carry = G[0] * dA[0]
            # dL/d(delta A) = G_t * h_{t-1} * dA_t, built in place in H's storage (h_{t-1} = H[t-1]).
            H[1:] = H[:-1] * G[1:] * dA[1:]
            H[0] = starts[c] * G[0] * dA[0]
            gdA = H                                                           # [T, B, E, N]
            dtc, xtc = dc.transpose(0, 1), xc.transpose(0, 1)                 # [T, B, E]
            GB = torch.einsum("tben,tbn->tbe", G, bt)                         # [T, B, E]
            gA += torch.einsum("tben,tbe->en", gdA, dtc)
            gdelta[:, s:e] = (torch.einsum("tben,en->tbe", gdA, A) + xtc * GB).transpose(0, 1)
            gx[:, s:e] += (dtc * GB).transpose(0, 1)
            gB[:, s:e] = torch.einsum("tben,tbe->tbn", G, dtc * xtc).transpose(0, 1)
        return gx, gdelta, gA, gB, gC, gD, None, None


def selective_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor,
                   Cm: torch.Tensor, D: torch.Tensor, *, use_kernel: Optional[bool] = None,
                   budget: int = DEFAULT_BUDGET, keep: Optional[torch.Tensor] = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact selective scan, fp32. Shapes in the module docstring. Returns (y [B, L, E], h_last
    [B, E, N]); h_last carries no gradient on the kernel path (only prefill uses it, under no_grad).

    use_kernel: None = the mamba_ssm kernel when installed and the tensors are on CUDA (not for
    packed rows: `selective_scan_fn` has no state reset, so `keep` takes the exact loop)."""
    if use_kernel is None:
        use_kernel = HAS_MAMBA_SSM and x.is_cuda and keep is None
    if use_kernel and keep is not None:
        raise ValueError("the mamba_ssm kernel cannot reset the state inside a row (packed rows)")
    if use_kernel:
        if not HAS_MAMBA_SSM:
            raise RuntimeError("use_kernel=True but mamba_ssm is not installed (pip install mamba-ssm)")
        # The kernel wants channels before time: u, delta [B, E, L]; B, C [B, N, L].
        y, last = _mamba_ssm_scan(x.transpose(1, 2).contiguous(), delta.transpose(1, 2).contiguous(),
                                  A.contiguous(), Bm.transpose(1, 2).contiguous(),
                                  Cm.transpose(1, 2).contiguous(), D.contiguous(), None, None, False,
                                  True)
        return y.transpose(1, 2), last
    return _ChunkedScan.apply(x.contiguous(), delta.contiguous(), A, Bm.contiguous(), Cm.contiguous(),
                              D, budget, None if keep is None else keep.to(x.dtype).contiguous())
