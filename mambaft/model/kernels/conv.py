"""The mixer's causal depthwise convolution (width K = 4) as K shifted multiply-adds.

    y[b, t, e] = bias[e] + sum_{s=0}^{K-1} w[e, K-1-s] * x[b, t-s, e]      (x[b, t<0, e] = 0)

This is exactly `nn.Conv1d(E, E, K, groups=E, padding=K-1)(x.transpose(1, 2))[..., :L]` (the
original's causal conv), computed in the [B, L, E] layout the projections produce, without the two
transposes and the padded copy. Why: torch's depthwise-conv backward on CPU took about 0.1-0.5 s per
layer for 512 x 2048 channels (more than the in_proj matmul of the same layer); this version
needs 2K elementwise passes backward and runs 3-4x faster (measured in /tmp during issue 9, see
benchmarks/README.md). It saves only x.

Precision: products and sums in fp32 (fp64 for fp64 input), and the result stays fp32 also for a bf16
input under autocast. Its consumer is SWELU_s, which computes in fp32 anyway: a bf16 result would
cost a rounding (the original's autocast conv1d rounded here) and four conversion passes per layer
(down, up, and both again in backward), for 2 bytes per channel and token of saved activation.
fp32 inputs give exactly Conv1d's numbers (same summation order).

Packing (several conversations in one row, `positions` [B, L] restarting at 0 at each one): tap s
reads token t-s only where positions[t] >= s, i.e. where t-s lies in the same conversation; the other
products are multiplied by 0, so each conversation gets exactly the numbers it gets alone (x * 1 = x
and y + 0 = y in floating point). positions=None is the unpacked path, unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .switch import fused


class _CausalDepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                positions=None) -> torch.Tensor:
        # x [B, L, E] (any strides, bf16/fp32/fp64), weight [E, K], bias [E] -> [B, L, E] fp32 (fp64)
        L, K = x.shape[1], weight.shape[1]
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        w = weight.to(acc)
        xa = x.to(acc)  # one upcast (bf16 under autocast): mixed-dtype ops would copy per tap
        # Start from the bias and fuse-multiply-add the taps oldest first: oneDNN's order, so fp32
        # results are bit-identical to Conv1d (the fixture's logits sit at the fp32 noise floor).
        # A fresh buffer: for x of shape [1, 1, E] `bias.expand(x.shape).contiguous()` is bias itself
        # (size-1 dims need no copy) and the in-place taps below would add into the conv's bias.
        y = torch.empty(x.shape, dtype=acc, device=x.device).copy_(bias)   # [B, L, E]
        for s in range(K - 1, -1, -1):
            if s < L:
                xs = xa[:, :L - s]
                if positions is not None and s > 0:
                    xs = xs * _tap_mask(positions, s, acc)
                y[:, s:].addcmul_(xs, w[:, K - 1 - s])      # token t-s (rows t < s see zeros)
        ctx.save_for_backward(x, weight, positions)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, weight, positions = ctx.saved_tensors
        L, K = x.shape[1], weight.shape[1]
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        w = weight.to(acc)
        g = g.to(acc)  # one upcast; bf16 x bf16 products are then exact in fp32
        gx = gw = gb = None
        # packed: g[t] * mask_s[t] (zero where token t-s belongs to another conversation)
        gs = {s: g[:, s:] if positions is None or s == 0 else g[:, s:] * _tap_mask(positions, s, acc)
              for s in range(min(K, L))}
        if ctx.needs_input_grad[0]:
            gx = torch.mul(g, w[:, K - 1])                  # dy[t]/dx[t]
            for s in range(1, min(K, L)):
                gx[:, :L - s].addcmul_(gs[s], w[:, K - 1 - s])  # x[t] also feeds y[t+s]
            gx = gx.to(x.dtype)
        if ctx.needs_input_grad[1]:
            xa = x.to(acc)
            gw = torch.zeros(weight.shape, dtype=acc, device=weight.device)
            for s in range(min(K, L)):
                # sum over batch and time of g[t] * x[t-s], per channel: [E]
                gw[:, K - 1 - s] = torch.mul(gs[s], xa[:, :L - s]).sum(dim=(0, 1))
            gw = gw.to(weight.dtype)
        if ctx.needs_input_grad[2]:
            gb = g.sum(dim=(0, 1), dtype=acc).to(weight.dtype)
        return gx, gw, gb, None


def _tap_mask(positions: torch.Tensor, s: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, L-s, 1]: 1 where token t-s is in token t's conversation (positions[t] >= s), else 0."""
    return (positions[:, s:] >= s).to(dtype)[..., None]


def causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          positions=None) -> torch.Tensor:
    """x [B, L, E], weight [E, K] (Conv1d's [E, 1, K] squeezed), bias [E] -> [B, L, E] in fp32
    (fp64 for fp64 x). positions [B, L] (packed rows, restarting at 0 per conversation): no tap
    crosses a conversation boundary; None = one sequence per row."""
    if fused():
        return _CausalDepthwiseConv.apply(x, weight, bias, positions)
    return causal_depthwise_conv_reference(x, weight, bias, positions)


def causal_depthwise_conv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                                    positions=None) -> torch.Tensor:
    """The twin under plain autograd: the original's `conv1d(x.transpose(1, 2))[..., :L]`, in fp32
    (fp64); packed rows as the K taps, each masked at the conversation boundaries it would cross."""
    B, L, E = x.shape
    K = weight.shape[1]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xa, w, b = x.to(acc), weight.to(acc), bias.to(acc)
    if positions is None:
        y = F.conv1d(xa.transpose(1, 2), w.unsqueeze(1), b, padding=K - 1, groups=E)   # [B, E, L+K-1]
        return y[..., :L].transpose(1, 2)                                              # [B, L, E]
    y = b.expand(B, L, E)
    for s in range(min(K, L)):
        tap = xa[:, :L - s] * w[:, K - 1 - s]                                          # token t-s
        if s > 0:
            tap = tap * _tap_mask(positions, s, acc)
        y = y + F.pad(tap, (0, 0, s, 0))                                               # [B, L, E]
    return y
