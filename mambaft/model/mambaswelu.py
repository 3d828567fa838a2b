"""MambaSWELU as it was actually trained (Powwpol/SWELU_LLM at commit 5c61e3d, 757,500 steps).

Glossary (code name -> meaning; see ../shared/docs/mambaswelu.md):
    B, L        batch size, sequence length
    D           d_model (1024 in the 124M model)
    E           d_inner = expand * D (2048): width of the mixer
    K           d_conv (4): depthwise causal conv width, so each block sees K-1 = 3 earlier tokens
    V           vocab_size (50257, GPT-2)
    H           dense_hidden_dim (2048): width of the dense head
    RF          receptive field = 1 + n_layers * (K - 1) = 19 tokens: nothing else carries information
                along the sequence except the absolute position embedding

Forward:  h = tok_emb(ids) + pos_emb(0..L-1)
          h = h + Dropout(SWELU_a(Mixer(LayerNorm(h))))                    x n_layers
          Mixer(u): x, z = in_proj(u).chunk(2); x = conv1d(x)[:L]; out_proj(SWELU_s(x) * sigmoid(z))
          f = SWELU(dense3(SWELU(dense2(SWELU(dense1(LayerNorm(h)))))))     (no residual: f in (-1, 1))
          logits = f @ tok_emb.weight.T                                    (tied lm_head)

Where each part mirrors the original (Powwpol/SWELU_LLM at 5c61e3d, file:line):
    MambaSWELUConfig / original_config   src/model.py:45-60 (the constructor's arguments)
    SimplifiedMamba.__init__             src/mamba_block.py:137-156 (in_proj, conv1d, x_proj, dt_proj, out_proj)
    SimplifiedMamba.forward, gate_out    src/mamba_block.py:171-189 (chunk, causal conv, SWELU x sigmoid)
    MambaBlock.forward                   src/mamba_block.py:100-116 (pre-norm, residual)
    MambaSWELU.embed                     src/model.py:150-158 (token + learned position embedding)
    MambaSWELU.head                      src/model.py:164-173 (dense1-3 with SWELU), final norm 250
    MambaSWELU.forward (loss)            src/model.py:176-190 (tied lm_head, shifted cross-entropy)
    prefill / step past max_seq_len      src/model.py:224 (the crop to the last max_seq_len tokens)
    SWELU (kernels/swelu.py)             src/swelu.py:51-61

Deliberate differences from the original code (none change a number in fp32):
    * `x_proj` and `dt_proj` are kept (same keys, so the original loads what we save) but never used,
      as in the original forward; `freeze_dead()` takes them out of training.
    * SWELU runs in fp32 under autocast; the original cast nothing.
    * `forward(..., return_logits=False)` computes the loss in chunks without the [B, L, V] logits.
    * `prefill`/`step` decode in O(1) per token (rolling conv state); the original re-ran the whole
      sequence for every new token. Past max_seq_len both give the same tokens (see `step`).
    * bf16/fp16 weights without autocast: SWELU and the conv compute in fp32, so their results are
      cast to the next Linear's dtype (`as_input`; a no-op for fp32 weights and under autocast).
    * `build()` creates the submodules (so transformers' adapter in an exported folder can build this
      same model on itself), and `gradient_checkpointing` recomputes each block in backward when
      transformers turns it on (TRL's default).
    * Packed rows (`forward(ids, positions=[B, L])`, several conversations per row, positions
      restarting at 0 at each): the conv (and the selective scan) never reach across a restart, so
      each conversation gets the logits it gets alone (kernels/conv.py, kernels/scan.py; tests/test_packing.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .kernels.conv import causal_depthwise_conv
from .kernels.loss import linear_cross_entropy
from .ssm import SELECTIVE_KEY, SelectiveSSM, dt_rank
from .kernels.swelu import SWELU
from ..template import IGNORE_INDEX, pad_ids

ARCHITECTURES = ("original", "selective")


@dataclass
class MambaSWELUConfig:
    vocab_size: int = 50257
    d_model: int = 1024
    n_layers: int = 6
    d_state: int = 16          # only sizes the dead x_proj (E -> d_state)
    d_conv: int = 4
    expand: int = 2
    max_seq_len: int = 1024    # the original constructor default was 2048; the 124M run saved 1024
    dense_hidden_dim: int = 2048
    dropout: float = 0.1
    tie_embeddings: bool = True
    swelu_lam_formula: Optional[str] = None  # only for later SWELU versions with `lam` keys
    architecture: str = "original"           # "selective" after upgrade_to_selective
    ssm_state: int = 16                       # state size of the selective path (selective only)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def receptive_field(self) -> int:
        """Tokens one output can depend on: the current one plus K-1 per block (1 + 6 x 3 = 19)."""
        return 1 + self.n_layers * (self.d_conv - 1)

    def original_config(self) -> dict:
        """Every argument of the original constructor (src/model.py `MambaSWELU.__init__`), so the
        user's `MambaSWELU(**checkpoint["config"])` (their demo_chat.py) builds this model's shapes.
        The original Trainer saved only five (vocab_size, d_model, n_layers, max_seq_len,
        tie_embeddings): the others fell back to the constructor's defaults, which fit the 124M model
        but not a smaller one (dense1 2048 x 1024 against a demo model's 256 x 128)."""
        keys = ("vocab_size", "d_model", "n_layers", "d_state", "d_conv", "expand", "max_seq_len",
                "dense_hidden_dim", "dropout", "tie_embeddings")
        # swelu_k only sets k's initial value before the state dict loads; 1.0 is its default
        return {**{k: getattr(self, k) for k in keys}, "swelu_k": 1.0}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MambaSWELUConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"model config: unknown field(s) {sorted(unknown)}")
        return cls(**d)


def as_input(x: torch.Tensor, linear: nn.Module) -> torch.Tensor:
    """x in the dtype of `linear`'s weight. SWELU and the conv compute in fp32, so with bf16/fp16
    weights (no autocast) their results must come down before the next matmul; with fp32 weights,
    or under autocast (which casts again anyway, with the same rounding), this is a no-op."""
    return x.to(linear.weight.dtype)


class SimplifiedMamba(nn.Module):
    """The mixer. As trained (architecture "original"), the fallback that actually ran: in_proj ->
    causal depthwise conv -> SWELU x sigmoid gate; no selective scan, no recurrence, no SSM state.
    With architecture "selective" it also carries the gated selective path (`self.selective`,
    mambaft.model.ssm; else None): the same conv and gate, the scan output added before the gate."""

    def __init__(self, cfg: MambaSWELUConfig, selective: bool = False):
        super().__init__()
        E, K = cfg.d_inner, cfg.d_conv
        self.d_inner, self.d_conv = E, K
        self.in_proj = nn.Linear(cfg.d_model, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, kernel_size=K, groups=E, padding=K - 1, bias=True)
        self.x_proj = nn.Linear(E, cfg.d_state, bias=False)   # dead: never used by forward
        self.dt_proj = nn.Linear(E, E, bias=True)              # dead: never used by forward
        self.ssm_activation = SWELU(lam_formula=cfg.swelu_lam_formula)
        self.out_proj = nn.Linear(E, cfg.d_model, bias=False)
        self.selective = SelectiveSSM(E, cfg.ssm_state, dt_rank(cfg.d_model)) if selective else None

    def conv(self, x: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Causal depthwise conv. x: [B, L, E] -> [B, L, E] (padding K-1, keep the first L outputs).
        Same numbers as self.conv1d on the transposed input, 3-4x faster on CPU (see kernels/conv.py).
        positions [B, L] (packed rows): no tap reaches into the previous conversation."""
        return causal_depthwise_conv(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, positions)

    def conv_step(self, x: torch.Tensor, conv_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The conv at one new column. x: [B, E]; conv_state: [B, E, K-1] (the last K-1 pre-conv
        columns, oldest first). Returns (x_conv [B, E], the next conv_state [B, E, K-1])."""
        window = torch.cat([conv_state, x.unsqueeze(-1)], dim=-1)  # [B, E, K]
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32   # as the parallel conv
        w = self.conv1d.weight.squeeze(1).to(acc)               # [E, K]
        x_conv = (window.to(acc) * w).sum(-1) + self.conv1d.bias.to(acc)  # [B, E]
        return x_conv, window[..., 1:]

    def gate_out(self, x_conv: torch.Tensor, z: torch.Tensor, scan=None):
        """out_proj(SWELU_s(x_conv) * sigmoid(z)) as trained (fused: kernels/swelu.py). With the
        selective path, a = SWELU_s(x_conv) also feeds `scan(a) -> (y, ssm state)` and the output is
        out_proj((a + g * y) * sigmoid(z)). Returns (out [.., D], the scan's state or None)."""
        if self.selective is None:
            return self.out_proj(as_input(self.ssm_activation.gate(x_conv, z), self.out_proj)), None
        a = self.ssm_activation(x_conv)                           # [.., E] fp32
        y, state = scan(a)
        return self.out_proj(as_input(self.selective.mix(a, y) * torch.sigmoid(z), self.out_proj)), state

    def forward(self, u: torch.Tensor, cache: Optional[list] = None,
                positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """u: [B, L, D] -> [B, L, D]. If `cache` is a list (a `PrefillCache`), the pre-conv x [B, L, E]
        is appended to it (prefill needs its last K-1 columns), then, with the selective path, the
        last SSM state [B, E, N] (the cache's `mask` [B, L] marks the real tokens of padded rows).
        positions [B, L]: packed rows (conv window and scan state restart at every position 0)."""
        x, z = self.in_proj(u).chunk(2, dim=-1)                 # [B, L, E] each
        if cache is not None:
            cache.append(x)
        out, last = self.gate_out(self.conv(x, positions), z, lambda a: self.selective(
            a, mask=getattr(cache, "mask", None), positions=positions))
        if cache is not None and last is not None:
            cache.append(last)
        return out

    def step(self, u: torch.Tensor, conv_state: torch.Tensor, ssm_state: Optional[torch.Tensor] = None):
        """One token. u: [B, D]; conv_state: [B, E, K-1]; ssm_state: [B, E, N] (selective) or None.
        Returns (out [B, D], conv_state, ssm_state): O(1) in the sequence length."""
        x, z = self.in_proj(u).chunk(2, dim=-1)                 # [B, E] each
        x_conv, conv_state = self.conv_step(x, conv_state)
        out, new_ssm = self.gate_out(x_conv, z, lambda a: self.selective.step(a, ssm_state))
        return out, conv_state, (ssm_state if self.selective is None else new_ssm)


class MambaBlock(nn.Module):
    """h + Dropout(SWELU_a(Mixer(LayerNorm(h))))."""

    def __init__(self, cfg: MambaSWELUConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.mamba = SimplifiedMamba(cfg, selective=False)   # the selective path is added after init
        self.activation = SWELU(lam_formula=cfg.swelu_lam_formula)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, h: torch.Tensor, cache: Optional[list] = None,
                positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        # SWELU's result is fp32; .to(h.dtype) is a no-op for fp32 weights and keeps bf16/fp16 ones
        return h + self.dropout(self.activation(self.mamba(self.norm(h), cache, positions))).to(h.dtype)


class MambaStack(nn.Module):
    def __init__(self, cfg: MambaSWELUConfig):
        super().__init__()
        self.layers = nn.ModuleList(MambaBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)


@dataclass
class DecodeState:
    """What O(1) decoding keeps per sequence between tokens."""
    conv: list                 # per block: [B, E, K-1] last pre-conv columns
    ssm: list                  # per block: selective-scan state [B, E, N] (None for "original")
    pos: torch.Tensor          # [B] long: index of the next token in the full sequence
    tail: torch.Tensor         # [B, W] the last W tokens (for the window recompute past max_seq_len)


class PrefillCache(list):
    """What prefill hands each block's mixer: it collects [x] or [x, last SSM state]; `mask` [B, L]
    marks the real tokens of right-padded rows (the scan must not run over the padding)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.mask = mask


class MambaSWELU(nn.Module):
    """The model; its mixers are picked by `config.architecture` ("original": as trained;
    "selective": with the gated selective path, see mambaft.model.selective)."""

    gradient_checkpointing = False   # set by transformers' gradient_checkpointing_enable() (export)

    def __init__(self, cfg: Optional[MambaSWELUConfig] = None):
        super().__init__()
        if cfg is not None:   # None: empty, for a subclass that calls build() itself (the export)
            self.config = cfg
            self.build(cfg)

    def build(self, cfg) -> None:
        """Create and initialise every submodule on `self`. `cfg`: this file's MambaSWELUConfig or
        any object with the same fields (the exported transformers config)."""
        if cfg.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={cfg.architecture!r}: expected one of {', '.join(ARCHITECTURES)}")
        if cfg.architecture == "selective" and cfg.ssm_state <= 0:
            raise ValueError(f"ssm_state={cfg.ssm_state}: must be > 0")
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.position_embedding = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.mamba_stack = MambaStack(cfg)
        H = cfg.dense_hidden_dim
        self.dense1 = nn.Linear(cfg.d_model, H)
        self.swelu1 = SWELU(lam_formula=cfg.swelu_lam_formula)
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.dense2 = nn.Linear(H, H)
        self.swelu2 = SWELU(lam_formula=cfg.swelu_lam_formula)
        self.dropout2 = nn.Dropout(cfg.dropout)
        self.dense3 = nn.Linear(H, cfg.d_model)
        self.swelu3 = SWELU(lam_formula=cfg.swelu_lam_formula)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight
        if cfg.architecture == "selective":
            # The selective mixers are built after everything else and initialised on their own: the
            # original's init for the original parts, Mamba's for the new ones (gate = 0). This is the
            # order the random numbers were always drawn in, so a seed still gives the same weights.
            for layer in self.mamba_stack.layers:
                layer.mamba = SimplifiedMamba(cfg, selective=True)
                layer.mamba.apply(self._init_weights)
                layer.mamba.selective.reset_parameters()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # As the original: N(0, 0.02) for Linear and Embedding, zero biases (conv keeps torch's init).
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    # --- parallel forward ---------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """ids [B, L] (+ positions [B, L] or [L]) -> [B, L, D]."""
        L = input_ids.shape[1]
        if positions is None:
            if L > self.config.max_seq_len:
                raise ValueError(f"Sequence length {L} exceeds maximum {self.config.max_seq_len}")
            positions = torch.arange(L, device=input_ids.device)
        return self.embed_dropout(self.token_embedding(input_ids) + self.position_embedding(positions))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm and the dense head: [.., D] -> features f [.., D] in (-1, 1)."""
        h = self.mamba_stack.norm(h)
        h = self.dropout1(self.swelu1(self.dense1(h)))         # [.., H] fp32 (SWELU)
        h = self.dropout2(self.swelu2(self.dense2(as_input(h, self.dense2))))
        return self.swelu3(self.dense3(as_input(h, self.dense3)))

    def features(self, input_ids: torch.Tensor, positions: Optional[torch.Tensor] = None,
                 caches: Optional[list] = None) -> torch.Tensor:
        """ids [B, L] -> head features [B, L, D] (what lm_head projects to the vocabulary).
        positions: [L] (one sequence per row, e.g. clamped for decoding) or [B, L] per row: packed
        rows, a conversation starting wherever the position is 0 (the mixers reset there)."""
        h = self.embed(input_ids, positions)
        packed = positions if positions is not None and positions.dim() == 2 else None
        for i, layer in enumerate(self.mamba_stack.layers):
            cache = caches[i] if caches is not None else None
            if self.gradient_checkpointing and self.training and cache is None:
                # recompute each block in backward (transformers' gradient checkpointing; TRL's default)
                h = self._gradient_checkpointing_func(layer.__call__, h, None, packed)
            else:
                h = layer(h, cache, packed)
        return self.head(h)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, return_logits: bool = True,
                loss_reduction: str = "mean", loss_chunk: int = 512,
                positions: Optional[torch.Tensor] = None, label_index: Optional[torch.Tensor] = None) -> dict:
        """Args:
            input_ids: [B, L] token ids, L <= max_seq_len (with 2-D `positions`, any L: the position
                table is indexed by the positions, so each packed conversation must fit, not the row).
            attention_mask: accepted and ignored, as in the original (padding is masked by labels).
            labels: [B, L] ids or -100; the shift happens inside (logits[:, :-1] vs labels[:, 1:]).
            return_logits: False -> no [B, L, V] logits; the loss is computed in chunks.
            loss_reduction: "mean" over trained tokens (original) or "sum".
            positions: None (0..L-1 in every row) or [B, L] for packed rows (mambaft.train.batches.
                pack): positions restart at 0 at each conversation, and so do the mixers' windows.
                The first label of each conversation must be -100 (pack does it): it would be
                predicted from the previous conversation.
            label_index: `kernels.loss.label_index(labels)` from the host's labels, so that the
                chunked loss counts trained tokens without a device read (return_logits=False).
        Returns: {"logits": [B, L, V] fp32 or None, "loss": scalar or None, "n_tokens": int}
        """
        f = self.features(input_ids, positions)
        out = {"logits": None, "loss": None, "n_tokens": 0}
        if return_logits:
            logits = self._logits(f)                            # [B, L, V]
            out["logits"] = logits
            if labels is not None:
                shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
                shift_labels = labels[:, 1:].reshape(-1)
                out["n_tokens"] = int((shift_labels != IGNORE_INDEX).sum())
                out["loss"] = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX,
                                              reduction=loss_reduction)
        elif labels is not None:
            out["loss"], out["n_tokens"] = linear_cross_entropy(
                f, self.lm_head.weight, labels, chunk=loss_chunk, reduction=loss_reduction, index=label_index)
        return out

    # --- O(1)-per-token decoding --------------------------------------------------------------
    @property
    def decode_window(self) -> int:
        """Tokens the last position depends on (exact window recompute past max_seq_len)."""
        return min(self.config.receptive_field, self.config.max_seq_len)

    def _logits(self, f: torch.Tensor) -> torch.Tensor:
        """Features [.., D] -> fp32 logits [.., V]."""
        return self.lm_head(as_input(f, self.lm_head)).float()

    @property
    def keeps_state(self) -> bool:
        """How decoding goes past max_seq_len. The original crops its input to the last max_seq_len
        tokens, positions restarting at 0 (reproduced by an O(RF) window recompute, see `step`).
        The selective model keeps its recurrent state and clamps the position at max_seq_len-1
        (mambaft.model.selective): a state cannot be cropped in O(1)."""
        return self.config.architecture == "selective"

    def clamped_positions(self, L: int, device=None) -> torch.Tensor:
        """Positions 0..L-1 clamped at max_seq_len-1: what decoding uses past the position table."""
        return torch.arange(L, device=device).clamp(max=self.config.max_seq_len - 1)

    @torch.no_grad()
    def prefill(self, rows: list) -> tuple[torch.Tensor, DecodeState]:
        """Run prompts (a list of B id lists, lengths may differ) in parallel.
        Returns (next-token logits [B, V], state: conv [B, E, K-1] and, selective, ssm [B, E, N] per
        block). Past max_seq_len (see `keeps_state`): the original crops each prompt to its last
        max_seq_len tokens, positions restarting at 0, as the original generate does; the selective
        model feeds it whole, positions clamped."""
        cfg, dev = self.config, self.token_embedding.weight.device
        K, W = cfg.d_conv, 0 if self.keeps_state else self.decode_window
        if any(len(r) == 0 for r in rows):
            raise ValueError("every prompt needs at least one token")
        fed = rows if self.keeps_state else [list(r[-cfg.max_seq_len:]) for r in rows]
        ids = pad_ids(fed, 0).to(dev)          # [B, Lf] right-padded: causal, so padding never leaks
        lengths = torch.tensor([len(r) for r in fed], device=dev)
        mask = torch.arange(ids.shape[1], device=dev)[None] < lengths[:, None]   # [B, Lf]
        caches = [PrefillCache(mask) for _ in self.mamba_stack.layers]
        positions = self.clamped_positions(ids.shape[1], dev) if self.keeps_state else None
        f = self.features(ids, positions=positions, caches=caches)             # [B, Lf, D]
        last = lengths - 1
        logits = self._logits(f[torch.arange(len(rows), device=dev), last])    # [B, V]
        # Conv state: the K-1 pre-conv columns before each row's next position (zeros before 0).
        conv = []
        for x, *_ in caches:                                     # x: [B, Lf, E]
            xp = F.pad(x, (0, 0, K - 1, 0))                      # [B, Lf+K-1, E]
            idx = last[:, None] + 1 + torch.arange(K - 1, device=dev)[None]  # [B, K-1] in xp coords
            cols = xp.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))  # [B, K-1, E]
            conv.append(cols.transpose(1, 2).contiguous())       # [B, E, K-1]
        ssm = [c[1] if len(c) > 1 else None for c in caches]
        tail = pad_ids([r[len(r) - W:] for r in rows], 0, width=W, left=True).to(dev)  # [B, W]
        pos = torch.tensor([len(r) for r in rows], device=dev)
        return logits, DecodeState(conv=conv, ssm=ssm, pos=pos, tail=tail)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """Feed one token per row (tokens [B]) and return the next-token logits [B, V].

        One column through each block, rolling the conv (and SSM) state: O(1) per token. Past
        max_seq_len (`keeps_state` False: the original) the original crops its input to the last
        max_seq_len tokens, so every position shifts and the new token sits at position
        max_seq_len-1. The last output depends only on the last RF tokens, so we recompute exactly
        those, at positions M-W..M-1: still O(RF) per token. The selective model clamps instead."""
        M = self.config.max_seq_len
        pos = state.pos
        if self.keeps_state:
            inside = torch.ones_like(pos, dtype=torch.bool)
        else:
            state.tail = torch.cat([state.tail[:, 1:], tokens[:, None]], dim=1)
            inside = pos < M
        logits = None
        if bool(inside.any()):  # rows past max_seq_len never use the conv state again: skip them all
            h = self.token_embedding(tokens) + self.position_embedding(pos.clamp(max=M - 1))  # [B, D]
            for i, layer in enumerate(self.mamba_stack.layers):
                out, state.conv[i], state.ssm[i] = layer.mamba.step(layer.norm(h), state.conv[i], state.ssm[i])
                h = h + layer.activation(out).to(h.dtype)
            logits = self._logits(self.head(h))                  # [B, V]
        if not bool(inside.all()):
            W = state.tail.shape[1]
            over = (~inside).nonzero().squeeze(1)
            positions = torch.arange(M - W, M, device=tokens.device)
            f = self.features(state.tail[over], positions=positions)  # [n, W, D]
            window_logits = self._logits(f[:, -1])
            if logits is None:                                   # every row is past: over = all rows
                logits = window_logits
            else:
                logits[over] = window_logits
        state.pos = pos + 1
        return logits

    # --- the selective path's parameters ----------------------------------------------------------
    def new_parameter_names(self) -> list:
        """Names of the parameters the selective upgrade added (for a separate learning rate)."""
        return [n for n, _ in self.named_parameters() if SELECTIVE_KEY in n]

    def gates(self) -> torch.Tensor:
        """[n_layers, E] the per-channel gates of the selective path (0 at upgrade; how far training
        opened it)."""
        return torch.stack([layer.mamba.selective.gate.detach() for layer in self.mamba_stack.layers])

    # --- facts for the diagnosis ----------------------------------------------------------------
    def dead_parameters(self) -> list:
        """(name, tensor) of the mixer projections the forward never uses."""
        return [(n, p) for n, p in self.named_parameters()
                if n.split(".")[-2] in ("x_proj", "dt_proj") and ".mamba." in n]

    def freeze_dead(self) -> int:
        """Stop training x_proj/dt_proj (kept in checkpoints). Returns how many parameters were frozen.
        Multi-GPU runs then need no find_unused_parameters."""
        n = 0
        for _, p in self.dead_parameters():
            p.requires_grad_(False)
            n += p.numel()
        return n


def count_parameters(model: nn.Module) -> int:
    """Parameters counted once (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


def model_facts(model: MambaSWELU) -> dict:
    """Numbers the diagnosis shows: parameter counts by part, dead parameters, receptive field."""
    cfg = model.config
    by_part: dict[str, int] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if name.startswith("token_embedding"):
            part = "token_embedding (tied lm_head)" if cfg.tie_embeddings else "token_embedding"
        elif name.startswith("position_embedding"):
            part = "position_embedding"
        elif ".x_proj." in name or ".dt_proj." in name:
            part = "dead (x_proj, dt_proj)"
        elif name.endswith(".k") or name.endswith(".lam"):
            part = "swelu shapes (k)"
        elif name.startswith("mamba_stack"):
            part = "mamba blocks (live)"
        elif name.startswith("dense"):
            part = "dense head"
        else:
            part = name.split(".")[0]
        by_part[part] = by_part.get(part, 0) + p.numel()
    dead = sum(p.numel() for _, p in model.dead_parameters())
    total = count_parameters(model)
    return {
        "parameters": total,
        "parameters_by_part": by_part,
        "dead_parameters": dead,
        "dead_fraction": dead / total,
        "receptive_field_tokens": cfg.receptive_field,
        "max_seq_len": cfg.max_seq_len,
        "architecture": cfg.architecture,
        "swelu_k": {n: round(float(p.detach()), 4) for n, p in model.named_parameters() if n.endswith(".k")},
    }
