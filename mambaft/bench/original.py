"""The original MambaSWELU computation, re-implemented plainly for side-by-side benchmarks.

Written from ../shared/docs/mambaswelu.md, independently of mambaft.model (which the benchmarks
measure against it), with every choice the original code made:

    * SWELU as composed autograd ops (abs, add, pow, neg, exp, rsub, sign, mul), in fp32;
    * the causal depthwise conv as `nn.Conv1d(padding=K-1)` on the transposed input, then crop;
    * the dead `x_proj` / `dt_proj` exist (same keys) and are never used;
    * the loss: full fp32 [B, L, V] logits, then `F.cross_entropy(logits[:, :-1], labels[:, 1:])`;
    * training: all parameters in one default `torch.optim.AdamW` (lr 3e-4, betas (0.9, 0.95),
      weight decay 0.1 on everything, the for-loop implementation torch picks on CPU), fp32, no clip;
    * generation: re-run the whole sequence for every new token, cropped to the last max_seq_len
      tokens (positions restart at 0 inside the window), greedy argmax of the last logits.

tests/test_bench_original.py checks it against the fixture the original code wrote (logits, loss,
greedy tokens also past max_seq_len), so the benchmark's "original" is the real computation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OriginalSWELU(nn.Module):
    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(1.0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        k_eff = torch.abs(self.k) + 1e-6
        return torch.sign(z) * (1.0 - torch.exp(-torch.pow(torch.abs(z) + 1e-8, k_eff)))


class OriginalMixer(nn.Module):
    """The fallback "SimplifiedMamba" that ran: in_proj, causal depthwise conv, SWELU x sigmoid gate."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        e = expand * d_model
        self.in_proj = nn.Linear(d_model, 2 * e, bias=False)
        self.conv1d = nn.Conv1d(e, e, kernel_size=d_conv, groups=e, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(e, d_state, bias=False)     # dead
        self.dt_proj = nn.Linear(e, e, bias=True)            # dead
        self.ssm_activation = OriginalSWELU()
        self.out_proj = nn.Linear(e, d_model, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        L = u.shape[1]
        x, z = self.in_proj(u).chunk(2, dim=-1)                               # [B, L, E] each
        x = self.conv1d(x.transpose(1, 2))[..., :L].transpose(1, 2)         # causal: first L outputs
        return self.out_proj(self.ssm_activation(x) * torch.sigmoid(z))


class OriginalBlock(nn.Module):
    def __init__(self, d_model: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mamba = OriginalMixer(d_model)
        self.activation = OriginalSWELU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.dropout(self.activation(self.mamba(self.norm(h))))


class OriginalStack(nn.Module):
    def __init__(self, d_model: int, n_layers: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(OriginalBlock(d_model, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)


class OriginalMambaSWELU(nn.Module):
    """Same state-dict keys as the original checkpoint (so it loads the fixture strictly)."""

    def __init__(self, vocab_size: int = 50257, d_model: int = 1024, n_layers: int = 6,
                 max_seq_len: int = 1024, dense_hidden_dim: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(max_seq_len, d_model)
        self.dropout = nn.Dropout(dropout)
        self.mamba_stack = OriginalStack(d_model, n_layers, dropout)
        h = dense_hidden_dim
        self.dense1, self.swelu1, self.dropout1 = nn.Linear(d_model, h), OriginalSWELU(), nn.Dropout(dropout)
        self.dense2, self.swelu2, self.dropout2 = nn.Linear(h, h), OriginalSWELU(), nn.Dropout(dropout)
        self.dense3, self.swelu3 = nn.Linear(h, d_model), OriginalSWELU()
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        for m in self.modules():                                   # N(0, 0.02), zero biases
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        self.lm_head.weight = self.token_embedding.weight          # tied

    def forward(self, input_ids: torch.Tensor, labels=None) -> dict:
        """ids [B, L] -> {"logits": [B, L, V] fp32, "loss": mean CE of logits[:, :-1] vs labels[:, 1:]}."""
        L = input_ids.shape[1]
        if L > self.max_seq_len:
            raise ValueError(f"Sequence length {L} exceeds maximum {self.max_seq_len}")
        pos = torch.arange(L, device=input_ids.device)
        h = self.dropout(self.token_embedding(input_ids) + self.position_embedding(pos))
        for layer in self.mamba_stack.layers:
            h = layer(h)
        h = self.mamba_stack.norm(h)
        h = self.dropout1(self.swelu1(self.dense1(h)))
        h = self.dropout2(self.swelu2(self.dense2(h)))
        h = self.swelu3(self.dense3(h))
        logits = self.lm_head(h)                                   # [B, L, V]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return {"logits": logits, "loss": loss}

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy: the whole (cropped) sequence through the model for every new token."""
        ids = input_ids
        for _ in range(max_new_tokens):
            window = ids if ids.shape[1] <= self.max_seq_len else ids[:, -self.max_seq_len:]
            logits = self(window)["logits"][:, -1, :]              # [B, V] of a [B, L, V] forward
            ids = torch.cat([ids, logits.argmax(dim=-1, keepdim=True)], dim=1)
        return ids


def original_optimizer(model: nn.Module) -> torch.optim.AdamW:
    """The pretraining recipe's optimizer: every parameter, weight decay 0.1, default implementation."""
    return torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)


def original_train_step(model: OriginalMambaSWELU, optimizer: torch.optim.Optimizer,
                        micro_batches: list) -> float:
    """For each (input_ids, labels) micro-batch: forward (fp32 logits), mean cross-entropy / number of
    micro-batches, backward; then AdamW step and zero_grad. Returns the mean loss."""
    total = 0.0
    for input_ids, labels in micro_batches:
        loss = model(input_ids, labels=labels)["loss"] / len(micro_batches)
        loss.backward()
        total += float(loss.detach())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total
