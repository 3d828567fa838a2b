"""bf16 weights for generation: half the bytes each decoded token reads, and what it changes.

Decoding one token reads every live weight once (in_proj, out_proj, the dense head and the tied
lm_head: 103M of the 124M model's parameters, 412 MB in fp32), so at batch 1 its time is set by memory
bandwidth, not FLOPs. `with_bf16_weights` returns a copy whose Linear and Embedding weights are bf16
(206 MB per token at 124M); LayerNorm, the conv and the SWELU shapes stay fp32 (tiny, and SWELU needs
fp32 range). It runs under `decode_autocast(model)` (bf16 autocast: the matmuls take the bf16 weights
as they are; the norms, SWELU and the logits run in fp32 as in training under autocast).

Whether it is faster depends on the CPU (bf16 GEMV kernels, AMX or not), and the greedy tokens may
differ from fp32 once two candidates are within bf16 rounding: `greedy_difference` measures both on
the same prompts, and `python -m mambaft.bench generate --weights fp32,bf16` reports them.

    fast = with_bf16_weights(model)
    with decode_autocast(fast):
        out = generate(fast, prompts, max_new_tokens=64)
"""
from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn


def with_bf16_weights(model: nn.Module) -> nn.Module:
    """A copy of `model` (eval mode) with every Linear and Embedding weight (and bias) in bf16."""
    fast = copy.deepcopy(model).eval()
    for mod in fast.modules():
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            mod.to(torch.bfloat16)
    return fast


def has_bf16_weights(model: nn.Module) -> bool:
    return any(p.dtype == torch.bfloat16 for p in model.parameters())


def decode_autocast(model: nn.Module):
    """The context generation must run in: bf16 autocast for a `with_bf16_weights` model, else none."""
    if not has_bf16_weights(model):
        return contextlib.nullcontext()
    dev = next(model.parameters()).device.type
    return torch.autocast(dev, dtype=torch.bfloat16)


def decode_weight_bytes(model: nn.Module) -> int:
    """Bytes of weights one decode step reads: every parameter except the dead projections
    (x_proj, dt_proj: never used) and the position table (one row per token); the token embedding
    is read whole, by the tied lm_head."""
    dead = {id(p) for _, p in getattr(model, "dead_parameters", lambda: [])()}
    skip = dead | {id(model.position_embedding.weight)}
    seen: set = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or id(p) in skip:
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
    return total


@torch.no_grad()
def greedy_difference(reference: nn.Module, other: nn.Module, prompts: list, new_tokens: int) -> dict:
    """Greedy continuations of `prompts` (lists of ids) by both models. Returns the fraction of
    prompts whose continuations are identical, the mean index of the first differing new token
    (new_tokens when identical), and the fraction of new-token positions that agree."""
    from mambaft.generate import generate
    ref = generate(reference, prompts, max_new_tokens=new_tokens, temperature=0.0)
    with decode_autocast(other):
        got = generate(other, prompts, max_new_tokens=new_tokens, temperature=0.0)
    same, first, agree, total = 0, [], 0, 0
    for p, a, b in zip(prompts, ref, got):
        a, b = a[len(p):], b[len(p):]
        n = max(len(a), len(b))
        diff = next((i for i in range(n) if i >= len(a) or i >= len(b) or a[i] != b[i]), n)
        same += diff == n
        first.append(diff)
        agree += sum(x == y for x, y in zip(a, b))
        total += n
    return {"prompts": len(prompts), "new_tokens": new_tokens, "identical_fraction": same / len(prompts),
            "mean_first_difference": sum(first) / len(first), "token_agreement": agree / max(1, total)}
