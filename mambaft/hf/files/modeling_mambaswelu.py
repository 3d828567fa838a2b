"""MambaSWELU for transformers (standalone: torch + transformers only; written by `mambaft export`).

    model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

The same parameter names as mambaft (and the original Powwpol/SWELU_LLM code), so the weights load
unchanged, and the same numbers: this file is a copy of mambaft's forward, decoding and crop rules,
without mambaft's training speed-ups (fused autograd Functions, chunked loss and scan).

Shapes: B batch, L length, D d_model, E d_inner = expand * D, K d_conv, N ssm_state, V vocab.

    architecture="original"   as trained: each mixer is in_proj -> causal depthwise conv (K) ->
                              SWELU x sigmoid gate -> out_proj; no recurrence, so one output sees
                              1 + n_layers * (K - 1) tokens (19 for the 124M model).
    architecture="selective"  plus mambaft's gated selective scan in every mixer (context repair).

Generation keeps a `MambaSWELUState` (conv columns, SSM states, positions) between tokens, so every
new token costs O(1) work. Past max_seq_len the as-trained model reproduces the original generate,
which crops its input to the last max_seq_len tokens (positions restart at 0): the last output
depends on the last 19 tokens only, recomputed at positions max_seq_len-19 .. max_seq_len-1 (O(19)).
The selective model keeps its state and clamps positions at max_seq_len-1, as mambaft does.
attention_mask: left padding (batched generation) is honoured by running each row's real tokens;
the model has no attention, so a mask with holes in the middle is not supported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_mambaswelu import MambaSWELUConfig

IGNORE_INDEX = -100   # = mambaft.template.IGNORE_INDEX; this file ships to the Hub alone, so it imports nothing from mambaft
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


# --- SWELU: sign(z) * (1 - exp(-(|z| + 1e-8) ** (|k| + 1e-6))), always in fp32 (fp64 for fp64) ---
def swelu(z, k, lam=None, lam_formula=None):
    dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    k_eff = torch.abs(k.to(dtype)) + 1e-6
    if lam is None:  # mambaft's op order, so fp32 values are bit-identical
        e = torch.abs(z).to(dtype).add(1e-8).pow(k_eff).neg().exp()
        return e.neg().add(1.0).mul(torch.sign(z))
    z = z.to(dtype)
    base = torch.abs(lam.to(dtype) * z) if lam_formula == "inner" else torch.abs(z)
    out = torch.sign(z) * (1.0 - torch.exp(-torch.pow(base + 1e-8, k_eff)))
    return lam.to(dtype) * out if lam_formula == "outer" else out


class SWELU(nn.Module):
    def __init__(self, lam_formula=None):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(1.0))
        self.lam_formula = lam_formula
        self.lam = nn.Parameter(torch.tensor(1.0)) if lam_formula is not None else None

    def forward(self, z):
        return swelu(z, self.k, self.lam, self.lam_formula)


def causal_depthwise_conv(x, weight, bias):
    """x [B, L, E], weight [E, K], bias [E] -> [B, L, E] fp32: taps added oldest first from the bias
    (oneDNN's order, so fp32 equals nn.Conv1d(padding=K-1)[..., :L] bit for bit)."""
    L, K = x.shape[1], weight.shape[1]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w, xa = weight.to(acc), x.to(acc)
    y = bias.to(acc).expand(x.shape).contiguous()
    for s in range(K - 1, -1, -1):
        if s < L:
            y[:, s:] = torch.addcmul(y[:, s:], xa[:, :L - s], w[:, K - 1 - s])
    return y


def selective_step(x, delta, A, Bm, Cm, D, h):
    """One step of h_t = exp(delta A) h + delta x B; y = C . h + D x. x, delta [B, E]; Bm, Cm [B, N]."""
    dBx = (delta * x)[..., None] * Bm[:, None, :]                    # [B, E, N]
    dA = torch.exp(delta[..., None] * A)
    h = dBx if h is None else torch.addcmul(dBx, h, dA)
    return torch.bmm(h, Cm[..., None]).squeeze(-1) + D * x, h


class SelectiveSSM(nn.Module):
    """mambaft's gated selective path: y from the scan of a = SWELU(conv x); the mixer adds gate * y."""

    def __init__(self, d_inner, d_state, rank):
        super().__init__()
        self.rank, self.d_state = rank, d_state
        self.dbc_proj = nn.Linear(d_inner, rank + 2 * d_state, bias=False)
        self.delta_proj = nn.Linear(rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.zeros(d_inner, d_state))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.gate = nn.Parameter(torch.zeros(d_inner))

    def project(self, a):
        d_r, Bm, Cm = self.dbc_proj(a).split([self.rank, self.d_state, self.d_state], dim=-1)
        return F.softplus(self.delta_proj(d_r).float()), Bm.float(), Cm.float()

    def scan(self, a, mask=None):
        """a [B, L, E] -> (y [B, L, E], last state [B, E, N]); mask [B, L] False on right padding
        (delta = 0 there: the state passes through unchanged)."""
        delta, Bm, Cm = self.project(a)
        if mask is not None:
            delta = delta * mask[..., None].to(delta.dtype)
        A, D, x = -torch.exp(self.A_log.float()), self.D.float(), a.float()
        h, ys = None, []
        for t in range(a.shape[1]):
            y, h = selective_step(x[:, t], delta[:, t], A, Bm[:, t], Cm[:, t], D, h)
            ys.append(y)
        return torch.stack(ys, dim=1), h

    def step(self, a, h):
        delta, Bm, Cm = self.project(a)
        return selective_step(a.float(), delta, -torch.exp(self.A_log.float()), Bm, Cm, self.D.float(), h)


class Mixer(nn.Module):
    """in_proj -> causal conv -> SWELU x sigmoid gate -> out_proj (+ the selective path if configured).
    x_proj and dt_proj exist in the trained weights but the as-trained forward never used them."""

    def __init__(self, cfg):
        super().__init__()
        E, K = cfg.d_inner, cfg.d_conv
        self.in_proj = nn.Linear(cfg.d_model, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, kernel_size=K, groups=E, padding=K - 1, bias=True)
        self.x_proj = nn.Linear(E, cfg.d_state, bias=False)
        self.dt_proj = nn.Linear(E, E, bias=True)
        self.ssm_activation = SWELU(cfg.swelu_lam_formula)
        self.out_proj = nn.Linear(E, cfg.d_model, bias=False)
        if cfg.architecture == "selective":
            self.selective = SelectiveSSM(E, cfg.ssm_state, math.ceil(cfg.d_model / 16))

    def _out(self, x_conv, z, mask_or_state=None):
        """Gated branch; the selective path scans a sequence ([B, L, E], with its padding mask) or
        steps one token ([B, E], with the SSM state). Returns (out, last SSM state or None)."""
        a = self.ssm_activation(x_conv)
        h = None
        if hasattr(self, "selective"):
            scan = self.selective.scan if a.dim() == 3 else self.selective.step
            y, h = scan(a, mask_or_state)
            a = a + self.selective.gate * y
        return self.out_proj(a * torch.sigmoid(z)), h

    def forward(self, u, mask=None):
        """u [B, L, D] -> (out [B, L, D], pre-conv x [B, L, E], last SSM state or None)."""
        x, z = self.in_proj(u).chunk(2, dim=-1)
        out, h = self._out(causal_depthwise_conv(x, self.conv1d.weight.squeeze(1), self.conv1d.bias), z, mask)
        return out, x, h

    def step(self, u, conv_state, ssm_state):
        """One token: u [B, D], conv_state [B, E, K-1] (oldest first) -> (out, conv_state, ssm_state)."""
        x, z = self.in_proj(u).chunk(2, dim=-1)
        window = torch.cat([conv_state, x.unsqueeze(-1)], dim=-1)              # [B, E, K]
        w = self.conv1d.weight.squeeze(1)
        x_conv = (window * w.to(window.dtype)).sum(-1) + self.conv1d.bias.to(window.dtype)
        out, ssm_state = self._out(x_conv, z, ssm_state)
        return out, window[..., 1:], ssm_state


class MambaBlock(nn.Module):
    """h + Dropout(SWELU(Mixer(LayerNorm(h))))."""

    def __init__(self, cfg):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.mamba = Mixer(cfg)
        self.activation = SWELU(cfg.swelu_lam_formula)
        self.dropout = nn.Dropout(cfg.dropout)


class MambaStack(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.ModuleList(MambaBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)


class MambaSWELUState:
    """What decoding keeps per row between tokens: O(1) in the sequence length."""

    def __init__(self, conv, ssm, pos, tail):
        self.conv = conv    # per block [B, E, K-1]: the last pre-conv columns
        self.ssm = ssm      # per block [B, E, N] (selective) or None
        self.pos = pos      # [B] index of the next token in the whole sequence
        self.tail = tail    # [B, W] the last W tokens (as-trained model, for the crop past max_seq_len)


@dataclass
class MambaSWELUOutput(ModelOutput):
    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    mambaswelu_state: Optional[MambaSWELUState] = None


class MambaSWELUForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = MambaSWELUConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["MambaBlock"]
    # The output projection is the token embedding (stored once in model.safetensors); transformers 5
    # maps tied key -> source key, 4.x lists the tied keys.
    _tied_weights_keys = ({"lm_head.weight": "token_embedding.weight"} if TRANSFORMERS_MAJOR >= 5
                          else ["lm_head.weight"])

    def __init__(self, config):
        super().__init__(config)
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.max_seq_len, config.d_model)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.mamba_stack = MambaStack(config)
        H = config.dense_hidden_dim
        self.dense1, self.swelu1, self.dropout1 = nn.Linear(config.d_model, H), SWELU(config.swelu_lam_formula), nn.Dropout(config.dropout)
        self.dense2, self.swelu2, self.dropout2 = nn.Linear(H, H), SWELU(config.swelu_lam_formula), nn.Dropout(config.dropout)
        self.dense3, self.swelu3 = nn.Linear(H, config.d_model), SWELU(config.swelu_lam_formula)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def _get_logits_processor(self, generation_config, input_ids_seq_length=None, *args, **kwargs):
        # mambaft's rule: the repetition penalty looks at the reply being written, never at the prompt
        # (HF's default penalises the whole input: from a chat's second turn on, that lowers the end
        # token after every earlier answer and the words of the user's question). The prompt is the
        # first input_ids_seq_length positions (left padding included). On transformers versions whose
        # RepetitionPenaltyLogitsProcessor has no prompt_ignore_length, HF's rule stays.
        processors = super()._get_logits_processor(generation_config, input_ids_seq_length, *args, **kwargs)
        for p in processors:
            if type(p).__name__ == "RepetitionPenaltyLogitsProcessor" and input_ids_seq_length:
                p.prompt_ignore_length = int(input_ids_seq_length)
        return processors

    @classmethod
    def _supports_default_dynamic_cache(cls):
        return False   # generation keeps a MambaSWELUState, not a key/value cache

    def _init_weights(self, module):
        # As the original: N(0, 0.02) for Linear and Embedding, zero biases (only for missing weights).
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.token_embedding

    def set_input_embeddings(self, value):
        self.token_embedding = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    # --- the parallel forward -------------------------------------------------------------------
    @property
    def decode_window(self):
        """Tokens the last output of the as-trained model depends on (the crop recompute)."""
        return min(self.config.receptive_field, self.config.max_seq_len)

    def head(self, h):
        h = self.mamba_stack.norm(h)
        h = self.dropout1(self.swelu1(self.dense1(h)))
        h = self.dropout2(self.swelu2(self.dense2(h)))
        return self.swelu3(self.dense3(h))

    def features(self, input_ids, positions=None, mask=None, collect=None):
        """ids [B, L] -> head features [B, L, D]. `collect` (a list) receives (x, ssm state) per block."""
        L = input_ids.shape[1]
        if positions is None:
            if L > self.config.max_seq_len:
                raise ValueError(f"Sequence length {L} exceeds maximum {self.config.max_seq_len} (generate "
                                 "handles longer sequences as the original does)")
            positions = torch.arange(L, device=input_ids.device)
        h = self.embed_dropout(self.token_embedding(input_ids) + self.position_embedding(positions))
        for layer in self.mamba_stack.layers:
            out, x, last = layer.mamba(layer.norm(h), mask)
            h = h + layer.dropout(layer.activation(out))
            if collect is not None:
                collect.append((x, last))
        return self.head(h)

    def forward(self, input_ids=None, attention_mask=None, labels=None, use_cache=None,
                mambaswelu_state=None, return_dict=None, **kwargs):
        """input_ids [B, L]. Without a state: the parallel forward (logits [B, L, V], L <= max_seq_len),
        or with use_cache=True the prefill of generation (returns the state). With a state: one
        decoding step per given token. labels: shifted inside, -100 = ignored."""
        state = mambaswelu_state
        if state is not None:
            logits = torch.stack([self._decode_step(input_ids[:, t], state) for t in range(input_ids.shape[1])], 1)
        elif use_cache:
            logits, state = self._prefill_prompts(input_ids, attention_mask)
        else:
            logits = self.lm_head(self.features(input_ids)).float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        return MambaSWELUOutput(loss=loss, logits=logits, mambaswelu_state=state if use_cache or
                                mambaswelu_state is not None else None)

    # --- O(1)-per-token decoding ----------------------------------------------------------------
    @torch.no_grad()
    def _prefill_prompts(self, input_ids, attention_mask=None):
        """Prompts -> (logits, state). Left padding (attention_mask 0) is dropped per row. The
        as-trained model crops each prompt to its last max_seq_len tokens (positions from 0), the
        selective one clamps positions at max_seq_len-1. Logits: [B, L, V] when no row was padded or
        cropped, else the last real token's [B, 1, V] (all that generate reads)."""
        cfg, dev = self.config, input_ids.device
        M, K = cfg.max_seq_len, cfg.d_conv
        if attention_mask is None:
            rows = [r for r in input_ids]
        else:
            rows = [r[m.bool()] for r, m in zip(input_ids, attention_mask)]
        if any(len(r) == 0 for r in rows):
            raise ValueError("every prompt needs at least one token")
        lengths = torch.tensor([len(r) for r in rows], device=dev)
        selective = cfg.architecture == "selective"
        used = rows if selective else [r[-M:] for r in rows]
        Lc = max(len(r) for r in used)
        ids = torch.zeros(len(rows), Lc, dtype=torch.long, device=dev)   # right-padded: causal, so
        for b, r in enumerate(used):                                        # padding never leaks
            ids[b, :len(r)] = r
        used_len = torch.tensor([len(r) for r in used], device=dev)
        mask = torch.arange(Lc, device=dev)[None] < used_len[:, None]
        positions = torch.arange(Lc, device=dev).clamp(max=M - 1) if selective else None
        collect = []
        f = self.features(ids, positions=positions, mask=mask if selective else None, collect=collect)
        last = used_len - 1
        uniform = bool((used_len == Lc).all()) and bool((lengths == Lc).all())
        logits = (self.lm_head(f).float() if uniform else
                  self.lm_head(f[torch.arange(len(rows), device=dev), last]).float()[:, None])
        conv, ssm = [], []
        for x, h in collect:                                                # x [B, Lc, E]
            xp = F.pad(x, (0, 0, K - 1, 0))
            idx = last[:, None] + 1 + torch.arange(K - 1, device=dev)[None]  # [B, K-1] in xp coordinates
            conv.append(xp.gather(1, idx[..., None].expand(-1, -1, x.shape[-1])).transpose(1, 2).contiguous())
            ssm.append(h)
        W = 0 if selective else self.decode_window
        tail = torch.zeros(len(rows), W, dtype=torch.long, device=dev)
        for b, r in enumerate(rows):
            if W:
                t = r[-W:]
                tail[b, W - len(t):] = t
        return logits, MambaSWELUState(conv, ssm, lengths.clone(), tail)

    @torch.no_grad()
    def _decode_step(self, tokens, state):
        """tokens [B] -> next-token logits [B, V], updating `state`."""
        cfg = self.config
        M = cfg.max_seq_len
        pos = state.pos
        if cfg.architecture == "selective":
            inside = torch.ones_like(pos, dtype=torch.bool)
        else:
            state.tail = torch.cat([state.tail[:, 1:], tokens[:, None]], dim=1)
            inside = pos < M
        logits = None
        if bool(inside.any()):   # rows past max_seq_len (as-trained) never use the conv state again
            h = self.token_embedding(tokens) + self.position_embedding(pos.clamp(max=M - 1))
            for i, layer in enumerate(self.mamba_stack.layers):
                out, state.conv[i], state.ssm[i] = layer.mamba.step(layer.norm(h), state.conv[i], state.ssm[i])
                h = h + layer.activation(out).to(h.dtype)
            logits = self.lm_head(self.head(h)).float()
        if not bool(inside.all()):
            # The original crops to the last M tokens, so the new token sits at position M-1; its
            # output depends on the last W tokens only: recompute exactly those at M-W .. M-1.
            W = state.tail.shape[1]
            over = (~inside).nonzero().squeeze(1)
            f = self.features(state.tail[over], positions=torch.arange(M - W, M, device=tokens.device))
            window_logits = self.lm_head(f[:, -1]).float()
            if logits is None:
                logits = window_logits
            else:
                logits[over] = window_logits
        state.pos = pos + 1
        return logits

    # --- generate() plumbing -----------------------------------------------------------------------
    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, mambaswelu_state=None,
                                      use_cache=True, **kwargs):
        if mambaswelu_state is not None:     # decoding: only the newest token goes in
            return {"input_ids": input_ids[:, -1:], "mambaswelu_state": mambaswelu_state, "use_cache": True}
        if use_cache:
            return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": True}
        # No cache: the original's own rule, rerun the whole (cropped) sequence for every token.
        M = self.config.max_seq_len
        if self.config.architecture == "selective" and input_ids.shape[1] > M:
            raise ValueError("use_cache=False cannot run a selective model past max_seq_len; use the cache")
        return {"input_ids": input_ids[:, -M:], "use_cache": False}

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False,
                                            num_new_tokens=1, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens)
        model_kwargs["mambaswelu_state"] = outputs.get("mambaswelu_state")
        return model_kwargs
