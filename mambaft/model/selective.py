"""The context repair: MambaSWELU plus a real Mamba selective state-space path, function-preserving.

The as-trained mixer sees K-1 = 3 earlier tokens; six blocks see 19 (../shared/docs/mambaswelu.md).
The upgrade adds, inside every mixer, the selective scan that mamba-ssm would have run, behind a
per-channel gate that starts at zero, so at initialization the upgraded model computes exactly
(bit for bit in fp32) what the original computes, and training opens the long-range path.

Glossary (code name -> Mamba paper symbol), beyond mambaswelu.py's:
    N            ssm_state (16): state size per channel
    R            dt_rank = ceil(D / 16) (Mamba's rule): rank of the step-size projection
    a            [B, L, E] SWELU_s(conv(x)): the original gated branch AND the scan input u
                 (Mamba feeds its scan the activated conv output; SWELU_s is this model's activation)
    dbc_proj     Linear E -> R + 2N: [delta_r, B_t, C_t] = dbc_proj(a)    (Mamba's x_proj)
    delta_proj   Linear R -> E (bias): Delta_t = softplus(delta_proj(delta_r))  (Mamba's dt_proj)
    A_log        [E, N]: A = -exp(A_log), initialised to -(1..N) per channel (S4D-real)
    D            [E]: skip term, init 1
    gate         [E]: per-channel gate g, init 0
    y            [B, L, E] scan output (scan.py): h_t = exp(Delta_t A) h_{t-1} + Delta_t a_t B_t,
                 y_t = C_t . h_t + D a_t

Mixer:  original  out_proj(a * sigmoid(z))
        upgraded  out_proj((a + g * y) * sigmoid(z))
With g = 0 the sum is a + 0 = a exactly. d out/d g = y * sigmoid(z) (through out_proj) is not zero,
so the gate gets a gradient at initialization; the scan's own parameters get theirs once g != 0
(zero at step 0, as with LoRA's zero-initialised B). AdamW moves each gate channel by about lr per
step whatever the gradient's scale, so a higher learning rate for the new parameters
(`new_parameter_names`) opens the path sooner.

Deliberate decisions (read before changing):
    * The dead `x_proj` (E -> 16) and `dt_proj` (E -> E) are NOT reused. They hold untrained random
      values (nothing learned to keep), their shapes do not fit Mamba (x_proj would need R + 2N = 96
      outputs at the 124M size, and a full-rank E x E delta projection is 4.2M parameters where the
      low-rank one is R x E + E = 133k), and they are part of the original key set: leaving them
      untouched makes the upgraded state dict exactly "original keys + `.selective.` keys", so the
      original weights load into it unchanged and `freeze_dead()` still takes them out of training.
      The new modules carry different names (`dbc_proj`, `delta_proj`) so `dead_parameters()` (which
      matches `x_proj`/`dt_proj`) never freezes them. Cost: 25.4M frozen parameters stay in memory.
    * The scan runs in fp32 (exp of Delta*A over 1024 steps), also under autocast, like SWELU.
    * Past max_seq_len: the original crops its input and restarts positions at 0, which a recurrent
      state cannot reproduce in O(1) (it would rescan the last 1024 tokens per token). The upgraded
      model keeps its recurrent state over the whole conversation and clamps the position at
      max_seq_len-1 (the last learned position): `prefill`/`step` equal the full forward run with
      positions min(t, max_seq_len-1) (see `features(ids, positions=...)`). Training rows stay
      <= max_seq_len, as before.
    * `save_checkpoint(format="original")` refuses a selective model: the original code has no
      selective path and its strict load would fail on the `.selective.` keys.

    model = upgrade_to_selective(load_checkpoint("final_model.pt")[0])      # then train as usual
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .mambaswelu import DecodeState, MambaSWELU, MambaSWELUConfig, SimplifiedMamba
from .scan import selective_scan, selective_step

SELECTIVE_KEY = ".selective."


def dt_rank(d_model: int) -> int:
    """Mamba's rank for the step-size projection: ceil(d_model / 16) (64 at d_model 1024)."""
    return math.ceil(d_model / 16)


class SelectiveSSM(nn.Module):
    """The selective state-space path of one mixer (parameters + scan), gated per channel."""

    def __init__(self, d_inner: int, d_state: int, rank: int):
        super().__init__()
        self.d_inner, self.d_state, self.rank = d_inner, d_state, rank
        self.dbc_proj = nn.Linear(d_inner, rank + 2 * d_state, bias=False)
        self.delta_proj = nn.Linear(rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))
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
        E, N, R = self.d_inner, self.d_state, self.rank
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
        d_r, Bm, Cm = self.dbc_proj(a).split([self.rank, self.d_state, self.d_state], dim=-1)
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


class SelectiveMamba(SimplifiedMamba):
    """The as-trained mixer (same keys, same numbers) + the gated selective path."""

    def __init__(self, cfg: MambaSWELUConfig):
        super().__init__(cfg)
        self.selective = SelectiveSSM(cfg.d_inner, cfg.ssm_state, dt_rank(cfg.d_model))

    def forward(self, u: torch.Tensor, cache: Optional[list] = None,
                positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """u: [B, L, D] -> [B, L, D]. A `_PrefillCache` gets the pre-conv x [B, L, E] and the last
        SSM state [B, E, N] appended (and supplies the padding mask). positions [B, L]: packed rows
        (conv window and scan state restart at every position 0)."""
        x, z = self.in_proj(u).chunk(2, dim=-1)                               # [B, L, E] each
        a = self.ssm_activation(self.conv(x, positions))                      # [B, L, E] fp32
        y, last = self.selective(a, mask=getattr(cache, "mask", None), positions=positions)
        if cache is not None:
            cache.extend([x, last])
        return self.out_proj(self.selective.mix(a, y) * torch.sigmoid(z))

    def step(self, u: torch.Tensor, conv_state: torch.Tensor, ssm_state: Optional[torch.Tensor] = None):
        """One token. u: [B, D]; conv_state: [B, E, K-1]; ssm_state: [B, E, N] or None.
        Returns (out [B, D], conv_state, ssm_state): O(1) in the sequence length."""
        x, z = self.in_proj(u).chunk(2, dim=-1)                               # [B, E] each
        window = torch.cat([conv_state, x.unsqueeze(-1)], dim=-1)             # [B, E, K]
        w = self.conv1d.weight.squeeze(1)                                     # [E, K]
        x_conv = (window * w.to(window.dtype)).sum(-1) + self.conv1d.bias.to(window.dtype)
        a = self.ssm_activation(x_conv)                                       # [B, E] fp32
        y, ssm_state = self.selective.step(a, ssm_state)
        out = self.out_proj(self.selective.mix(a, y) * torch.sigmoid(z))
        return out, window[..., 1:], ssm_state


class _PrefillCache(list):
    """What prefill hands each block: collects [x, last_state]; `mask` [B, L] marks real tokens."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.mask = mask


class SelectiveMambaSWELU(MambaSWELU):
    """MambaSWELU whose mixers carry the selective path (architecture="selective")."""

    def __init__(self, cfg: MambaSWELUConfig):
        if cfg.architecture != "selective":
            raise ValueError(f"architecture={cfg.architecture!r}: SelectiveMambaSWELU needs 'selective'")
        if cfg.ssm_state <= 0:
            raise ValueError(f"ssm_state={cfg.ssm_state}: must be > 0")
        super().__init__(cfg)
        for layer in self.mamba_stack.layers:
            layer.mamba = SelectiveMamba(cfg)
            layer.mamba.apply(self._init_weights)       # the original's init for the original parts
            layer.mamba.selective.reset_parameters()     # Mamba's for the new ones (gate = 0)

    def new_parameter_names(self) -> list:
        """Names of the parameters the upgrade added (for a separate learning rate)."""
        return [n for n, _ in self.named_parameters() if SELECTIVE_KEY in n]

    def gates(self) -> torch.Tensor:
        """[n_layers, E] the per-channel gates (0 at upgrade; how far training opened the path)."""
        return torch.stack([layer.mamba.selective.gate.detach() for layer in self.mamba_stack.layers])

    def clamped_positions(self, L: int, device=None) -> torch.Tensor:
        """Positions 0..L-1 clamped at max_seq_len-1: what decoding uses past the position table."""
        return torch.arange(L, device=device).clamp(max=self.config.max_seq_len - 1)

    @torch.no_grad()
    def prefill(self, rows: list) -> tuple[torch.Tensor, DecodeState]:
        """Run prompts (B id lists of any lengths, even past max_seq_len) in parallel.
        Returns (next-token logits [B, V], state with conv [B, E, K-1] and ssm [B, E, N] per block).
        Nothing is cropped: positions past max_seq_len are clamped (module docstring)."""
        dev, K = self.token_embedding.weight.device, self.config.d_conv
        if any(len(r) == 0 for r in rows):
            raise ValueError("every prompt needs at least one token")
        lengths = torch.tensor([len(r) for r in rows], device=dev)
        Lmax = int(lengths.max())
        ids = torch.zeros(len(rows), Lmax, dtype=torch.long, device=dev)     # right-padded
        for b, r in enumerate(rows):
            ids[b, :len(r)] = torch.tensor(r, device=dev)
        mask = torch.arange(Lmax, device=dev)[None] < lengths[:, None]       # [B, Lmax]
        caches = [_PrefillCache(mask) for _ in self.mamba_stack.layers]
        f = self.features(ids, positions=self.clamped_positions(Lmax, dev), caches=caches)
        last = lengths - 1
        logits = self._logits(f[torch.arange(len(rows), device=dev), last])  # [B, V]
        conv, ssm = [], []
        for x, h in caches:                                                  # x: [B, Lmax, E]
            xp = F.pad(x, (0, 0, K - 1, 0))                                  # [B, Lmax+K-1, E]
            idx = last[:, None] + 1 + torch.arange(K - 1, device=dev)[None]  # [B, K-1] in xp coords
            cols = xp.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))  # [B, K-1, E]
            conv.append(cols.transpose(1, 2).contiguous())                   # [B, E, K-1]
            ssm.append(h)
        tail = torch.zeros(len(rows), 0, dtype=torch.long, device=dev)       # no window recompute
        return logits, DecodeState(conv=conv, ssm=ssm, pos=lengths.clone(), tail=tail)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """Feed one token per row (tokens [B]) -> next-token logits [B, V]. O(1) per token at any
        length: conv and SSM states roll forward, the position is clamped at max_seq_len-1."""
        M = self.config.max_seq_len
        h = self.token_embedding(tokens) + self.position_embedding(state.pos.clamp(max=M - 1))  # [B, D]
        for i, layer in enumerate(self.mamba_stack.layers):
            out, state.conv[i], state.ssm[i] = layer.mamba.step(layer.norm(h), state.conv[i], state.ssm[i])
            h = h + layer.activation(out).to(h.dtype)
        state.pos = state.pos + 1
        return self._logits(self.head(h))


def build_selective(cfg: MambaSWELUConfig) -> SelectiveMambaSWELU:
    """A fresh selective model for a config with architecture="selective" (used by load_checkpoint)."""
    return SelectiveMambaSWELU(cfg)


def upgrade_to_selective(model: MambaSWELU, d_state: int = 16) -> SelectiveMambaSWELU:
    """A new model that computes exactly what `model` computes, plus a closed selective path.

    Every original weight is copied (the input model is left untouched); the new `.selective.`
    parameters get Mamba's initialisation with gate = 0. Device, dtype, train/eval mode and
    requires_grad flags (e.g. `freeze_dead()`) carry over."""
    cfg = model.config
    if cfg.architecture != "original":
        raise ValueError(f"model architecture is {cfg.architecture!r}: only an 'original' model can be "
                         "upgraded")
    if d_state <= 0:
        raise ValueError(f"d_state={d_state}: must be > 0")
    new = SelectiveMambaSWELU(replace(cfg, architecture="selective", ssm_state=int(d_state)))
    ref = model.token_embedding.weight
    new.to(device=ref.device, dtype=ref.dtype)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    wrong = [k for k in missing if SELECTIVE_KEY not in k]
    if unexpected or wrong:
        raise ValueError(f"upgrade_to_selective: the model's keys do not match MambaSWELU "
                         f"(unexpected {unexpected[:5]}, missing {wrong[:5]})")
    flags = dict(model.named_parameters())
    for name, p in new.named_parameters():
        if name in flags:
            p.requires_grad_(flags[name].requires_grad)
    return new.train(model.training)
