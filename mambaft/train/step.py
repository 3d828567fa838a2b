"""The exact training step the fine-tuning loop runs, as plain functions (the benchmarks time these).

One optimizer step over a global batch of R rows split into micro-batches (accumulation) and ranks:

    n_global = sum over every micro-batch of every rank of count_trained_tokens(labels)
    for each micro-batch:  micro_step(model, ids, labels, autocast_ctx=ctx, loss_scale=1 / n_global)
    optimizer_step(model, optimizer, lr=lr, grad_clip=1.0)

Each micro-step back-propagates `loss_sum * loss_scale`, so the accumulated gradient is
d(sum of token losses of the global batch)/d(theta) / n_global: the mean over the global batch's trained
tokens, the same however the batch is split. (Averaging per micro-batch means instead would weight a
token in a 10-token micro-batch 50x more than one in a 500-token micro-batch.)

Under DDP, whose all-reduce AVERAGES gradients over the W ranks, the loop passes loss_scale =
W / n_global so that the average of the ranks' sums is again sum / n_global.

    python -m pytest tests/test_train_step.py
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Optional

import torch

from mambaft.template import IGNORE_INDEX


def count_trained_tokens(labels: torch.Tensor) -> int:
    """Tokens a batch trains on: labels [B, L] ids or -100; the shift happens inside the model, so
    position 0 never counts (it has no previous position to predict it from)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def micro_step(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, *,
               autocast_ctx=None, loss_scale: float,
               backward: Optional[Callable[[torch.Tensor], None]] = None,
               positions: Optional[torch.Tensor] = None, sync: bool = True,
               label_index: Optional[torch.Tensor] = None) -> tuple[float, int]:
    """Forward + backward of one micro-batch; gradients ACCUMULATE into .grad.

    Args:
        model: a MambaSWELU (or a DDP wrapper of one) taking (input_ids, labels=, return_logits=,
            loss_reduction=).
        input_ids: [B, L] token ids, right-padded.
        labels: [B, L] ids or -100 (padding and prompt tokens are -100).
        autocast_ctx: a context manager from mambaft.runtime.autocast (None: no autocast).
        loss_scale: multiplies the summed loss before backward: 1 / trained tokens of the whole global
            batch (W / that under DDP averaging, see the module docstring).
        backward: how to back-propagate a scalar (accelerator.backward, a GradScaler's
            `lambda l: scaler.scale(l).backward()`); default `loss.backward()`.
        positions: [B, L] for packed micro-batches (mambaft.train.batches.collate_packed), else None.
        sync: True returns the loss as a Python float, which waits for the GPU (a host sync per
            micro-batch: with 16 micro-batches per step, 16 stalls of the launch queue). False returns
            the detached 0-dim fp32 tensor instead; the loop adds them on the device and reads the
            step's total once, in the all-reduce it does anyway.
        label_index: `mambaft.model.kernels.loss.label_index` of the HOST labels, moved to the
            device: with it (and sync=False) the micro-step reads no device value at all
            (tests/test_train_step.py runs it on the meta device, which has no values to read).
    Returns:
        (summed token loss of this micro-batch as a float, or a tensor when sync=False, its number of
        trained tokens).
        A micro-batch with no trained token returns (0.0, 0) and still runs backward on a zero that
        depends on every trainable parameter, so DDP ranks stay in step.
    """
    ctx = autocast_ctx if autocast_ctx is not None else contextlib.nullcontext()
    with ctx:
        extra = {} if positions is None else {"positions": positions}
        if label_index is not None:
            extra["label_index"] = label_index
        out = model(input_ids, labels=labels, return_logits=False, loss_reduction="sum", **extra)
    loss_sum, n_tokens = out["loss"], int(out["n_tokens"])
    if loss_sum is None:  # pragma: no cover - the model always returns a loss when labels are given
        raise RuntimeError("the model returned no loss although labels were given")
    scaled = loss_sum.float() * float(loss_scale)
    if backward is None:
        scaled.backward()
    else:
        backward(scaled)
    loss = loss_sum.detach().float()
    return (float(loss) if sync else loss), n_tokens


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, lr: float,
                   grad_clip: float, scaler=None) -> float:
    """Set lr (times each group's lr_mult) on every param group, clip the global grad norm, step, zero_grad(set_to_none=True).

    Args:
        grad_clip: max global L2 norm (plan: 1.0); 0 -> no clipping (the norm is still measured).
        scaler: a torch.amp.GradScaler when training in fp16 (unscales before clipping).
    Returns:
        the global gradient norm BEFORE clipping. When it is NaN/inf the step is skipped (weights and
        optimizer moments untouched, gradients cleared) and the non-finite norm is returned, so the
        caller can log it and count consecutive failures.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)  # lr_mult: see optim.build_optimizer
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    max_norm = grad_clip if grad_clip and grad_clip > 0 else float("inf")
    if params:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, error_if_nonfinite=False)
        grad_norm = float(norm)
    else:
        grad_norm = 0.0
    if scaler is not None:
        # the scaler itself skips the step on inf/NaN and lowers its scale: it owns that case
        scaler.step(optimizer)
        scaler.update()
    elif math.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
