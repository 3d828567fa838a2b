"""Cross-entropy over a 50257-word vocabulary without holding the full logits.

The fp32 logits of one 4 x 1024 batch are 4096 x 50257 x 4 B = 0.82 GB, and their gradient as much
again. `linear_cross_entropy` takes the head features instead and walks the positions in chunks:
for each chunk it computes the logits, the loss AND the gradients (softmax - onehot) right away,
keeping only d(loss)/d(features) [N, D] and d(loss)/d(weight) [V, D]. Backward then only scales
them. That is 3 matmuls per chunk (logits, grad_h, grad_W) against 4 for a recompute-in-backward
scheme, and the peak is one chunk of logits (chunk x 50257 x 4 B = 103 MB at chunk 512).
Only positions with a label are computed at all (instruction tuning masks most prompt tokens).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ...template import IGNORE_INDEX
from .switch import fused
_VOCAB_BLOCK = 8192     # rows of d(loss)/d(weight) accumulated at a time under bf16


def _compute_dtype() -> torch.dtype:
    """The autocast dtype in force on this thread (bf16/fp16), else fp32."""
    for dev in ("cuda", "cpu"):
        try:
            if torch.is_autocast_enabled(dev):
                return torch.get_autocast_dtype(dev)
        except (TypeError, RuntimeError):  # pragma: no cover - older torch signatures
            pass
    return torch.float32


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, chunk: int, dtype: torch.dtype):
        # h: [N, D] features, weight: [V, D], targets: [N] (all valid). Returns the summed loss.
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(dtype)
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk):
            hc = h[s:s + chunk].to(dtype)
            tc = targets[s:s + chunk]
            rows = torch.arange(tc.shape[0], device=tc.device)
            logits = (hc @ w.t()).float()                       # [n, V] fp32
            target_logit = logits[rows, tc]                     # [n]
            # log-sum-exp by hand, in place (torch.logsumexp would allocate another [n, V] buffer)
            mx = logits.amax(dim=-1, keepdim=True)              # [n, 1]
            e = logits.sub_(mx).exp_()                          # exp(logit - max): [n, V]
            sumexp = e.sum(dim=-1, keepdim=True)                # [n, 1]
            total += (mx.squeeze(1) + sumexp.log().squeeze(1) - target_logit).sum()  # lse - target
            if want_h or want_w:
                probs = e.div_(sumexp)                          # softmax, in place: [n, V]
                probs[rows, tc] -= 1.0                          # d(sum CE)/d(logits)
                g = probs.to(dtype)
                del logits, e, probs                            # bf16: frees the fp32 [n, V] buffer
                if want_h:
                    if dtype == h.dtype:                        # write straight into the rows
                        torch.mm(g, w, out=grad_h[s:s + chunk])  # [n, D]
                    else:
                        grad_h[s:s + chunk] = g @ w
                if want_w:
                    if dtype == torch.float32:                  # accumulate in place: no [V, D] temp
                        grad_w.addmm_(g.t(), hc)
                    else:
                        # a bf16 [V, D] product would be upcast whole before the add (100 + 200 MB
                        # at the 124M size): add it in vocabulary blocks of 8192 rows (16 + 32 MB)
                        for v in range(0, grad_w.shape[0], _VOCAB_BLOCK):
                            grad_w[v:v + _VOCAB_BLOCK].add_(g[:, v:v + _VOCAB_BLOCK].t() @ hc)
        ctx.save_for_backward(grad_h if want_h else None, grad_w if want_w else None)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        # Scaled in place: no second [V, D] fp32 buffer (200 MB at the 124M size). A second backward
        # through the same graph (retain_graph=True) is refused by autograd's version check.
        gh = grad_h.mul_(grad_out.to(grad_h.dtype)) if grad_h is not None else None
        gw = grad_w.mul_(grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None


def label_index(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices b * L + t (into [B * L]) of the positions whose next label is trained: the
    feature rows the loss reads, in row-major order. Computed where the labels are: on the host, the
    batch builder knows them before the GPU does, so the count is a shape, not a device read."""
    B, L = labels.shape
    bt = (labels[:, 1:] != IGNORE_INDEX).nonzero()             # [N, 2]: (b, t), row-major
    return bt[:, 0] * L + bt[:, 1]


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         chunk: int = 512, reduction: str = "mean",
                         index: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy of `h @ weight.T` against labels shifted by one, in chunks.

    Args:
        h: [B, L, D] features before the vocabulary projection.
        weight: [V, D] the (tied) output projection.
        labels: [B, L] token ids or -100; position t is predicted from h[:, t-1] (shift inside,
            as the original model does).
        reduction: "mean" over trained tokens (the original's semantics) or "sum" (for weighting
            by trained tokens across accumulation steps and ranks).
        index: `label_index(labels)`, computed from the host's copy of the labels (on `h`'s device).
            Given, nothing here reads a tensor's values on the host: the token count is
            index.numel(), a shape, so a GPU step never waits for the device (without it, finding
            the trained positions of GPU labels is one host sync per micro-batch).
    Returns:
        (loss, number of trained tokens)
    """
    if index is None:
        index = label_index(labels)
    n = index.numel()
    feats = h.reshape(-1, h.shape[-1]).index_select(0, index)              # [N, D]
    targets = labels.reshape(-1).index_select(0, index + 1)                # label t + 1 of row b
    if n == 0:
        zero = h.sum() * 0.0  # keeps the graph connected, so every rank runs the same backward
        return (zero if reduction == "sum" else zero / 0.0), 0
    if not fused():   # the twin: the full [N, V] logits in fp32, then F.cross_entropy
        total = F.cross_entropy((feats @ weight.t()).float(), targets, reduction="sum")
        return (total if reduction == "sum" else total / n), n
    dtype = _compute_dtype() if h.device.type in ("cpu", "cuda") else torch.float32
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        total = _LinearCrossEntropy.apply(feats, weight, targets, chunk, dtype)
    else:
        with torch.no_grad():
            total = _LinearCrossEntropy.forward(_NoCtx(), feats, weight, targets, chunk, dtype)
    return (total if reduction == "sum" else total / n), n


class _NoCtx:
    """Stand-in for autograd's ctx when no gradient is wanted (evaluation)."""
    needs_input_grad = (False, False, False, False, False)

    def save_for_backward(self, *args):
        pass
