"""One small interface over "a model we can evaluate", so every metric runs unchanged on a mambaft
MambaSWELU (with its saved tokenizer and chat template) and on the SmolLM2 reference row.

An evaluation LM provides:
    name, kind                    labels for reports
    encode(text) / decode(ids)    its own tokenizer
    end_id                        its end-of-turn token id
    max_len                       longest row it can score (tokens)
    render(messages)              -> (input_ids, labels): labels = ids on trained (assistant) tokens
                                     and the end token, -100 elsewhere (its own chat template)
    prompt_ids(messages)          -> ids ready for generation (history ends with a user turn)
    token_logprobs(rows)          -> per row a float tensor [len-1]: log p(row[i+1] | row[:i+1])
    replies(histories, ...)       -> list[EvalReply] (see mambaft.evaluate.replies)

    mambaft logprobs --model PATH "The capital of France is"   # print per-token log-probs
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..runtime import autocast
from .replies import eval_replies

LOGPROB_CHUNK = 256  # positions per lm_head chunk: B x 256 x 50257 fp32 = 51 MB per row


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits -> fp32 (a log-softmax over 50,257 of them needs it); fp64 stays fp64."""
    return logits if logits.dtype == torch.float64 else logits.float()


class MambaLM:
    """A mambaft model (original or selective architecture) with its tokenizer and template."""
    kind = "mambaswelu"

    def __init__(self, model, tokenizer, template, name: str = "model", precision: str = "fp32",
                 batch_size: int = 8, info=None):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.name, self.precision, self.batch_size, self.info = name, precision, batch_size, info

    # --- text ------------------------------------------------------------------------------------
    def encode(self, text: str) -> list:
        return self.tokenizer.encode(text)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    @property
    def end_id(self) -> int:
        return self.template.end_id(self.tokenizer)

    @property
    def max_len(self) -> int:
        return int(self.model.config.max_seq_len)

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    def render(self, messages: Sequence[dict]) -> tuple:
        return self.template.render(list(messages), self.tokenizer)

    def prompt_ids(self, messages: Sequence[dict]) -> list:
        return self.template.prompt_ids(list(messages), self.tokenizer)

    # --- scoring ---------------------------------------------------------------------------------
    def _logits_fn(self, ids: torch.Tensor):
        """ids [B, L] -> a function (start, end) -> logits [B, end-start, V] in fp32 (fp64 for a float64
        model), without keeping the full [B, L, V] tensor when the model exposes features + lm_head
        (MambaSWELU does)."""
        m = self.model
        if hasattr(m, "features") and hasattr(m, "lm_head"):
            f = m.features(ids)                                   # [B, L, D]
            return lambda s, e: _at_least_fp32(m.lm_head(f[:, s:e]))
        logits = _at_least_fp32(m(ids)["logits"])                 # [B, L, V]
        return lambda s, e: logits[:, s:e]

    @torch.no_grad()
    def token_logprobs(self, rows: Sequence[Sequence[int]]) -> list:
        """log p(row[i+1] | row[:i+1]) for every row -> list of fp32 tensors [len(row)-1] (CPU; fp64
        for a float64 model, whose scores are then exact to ~1e-15 rather than fp32's ~1e-3 over 50,257 logits).
        Rows are batched by length (right padding is harmless: the model is causal)."""
        for i, r in enumerate(rows):
            if len(r) > self.max_len:
                raise ValueError(f"row {i}: {len(r)} tokens > the model's max_seq_len {self.max_len}")
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        out: list = [None] * len(rows)
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                L = max(len(rows[i]) for i in idx)
                if L < 2:
                    for i in idx:
                        out[i] = torch.zeros(0)
                    continue
                ids = torch.zeros(len(idx), L, dtype=torch.long)
                for b, i in enumerate(idx):
                    ids[b, :len(rows[i])] = torch.tensor(list(rows[i]), dtype=torch.long)
                ids = ids.to(self.device)
                lp = None
                with autocast(self.device, self.precision):
                    logits_at = self._logits_fn(ids)
                    for s in range(0, L - 1, LOGPROB_CHUNK):
                        e = min(L - 1, s + LOGPROB_CHUNK)
                        logp = torch.log_softmax(logits_at(s, e), dim=-1)  # [B, e-s, V]
                        if lp is None:
                            lp = torch.empty(len(idx), L - 1, dtype=logp.dtype)
                        lp[:, s:e] = logp.gather(-1, ids[:, s + 1:e + 1, None]).squeeze(-1).cpu()
                for b, i in enumerate(idx):
                    out[i] = lp[b, :len(rows[i]) - 1].clone()
        finally:
            self.model.train(was_training)
        return out

    # --- generation ------------------------------------------------------------------------------
    def replies(self, histories, max_new_tokens: int = 64, seed: int = 0, progress: bool = False,
                **gen_kwargs) -> list:
        return eval_replies(self.model, self.tokenizer, self.template, histories,
                                max_new_tokens=max_new_tokens, seed=seed, progress=progress, **gen_kwargs)

    def describe(self) -> dict:
        cfg = getattr(self.model, "config", None)
        d = {"name": self.name, "kind": self.kind, "template": getattr(self.template, "name", None)}
        if cfg is not None and hasattr(cfg, "to_dict"):
            d["architecture"] = getattr(cfg, "architecture", "original")
            d["receptive_field_tokens"] = getattr(cfg, "receptive_field", None)
            d["parameters"] = sum(p.numel() for p in self.model.parameters())
        if self.info is not None:
            d["path"] = str(self.info.path)
            d["step"] = self.info.step
            d["format"] = self.info.format
            # what the step counts: "pretrain" steps, or "finetune" optimizer steps (compare's plots)
            training = self.info.training or {}
            d["trained"] = training.get("kind") or ("finetune" if "config" in training else None)
        return d


def load_lm(path_or_model, name: Optional[str] = None, device: Union[str, torch.device, None] = None,
            precision: str = "fp32", **kwargs):
    """A checkpoint path (original .pt or mambaft folder), an LM object, a (model, tokenizer,
    template) tuple, or "smollm2" (the reference row) -> an evaluation LM."""
    if hasattr(path_or_model, "token_logprobs"):
        return path_or_model
    if isinstance(path_or_model, tuple):
        model, tok, tpl = path_or_model
        return MambaLM(model, tok, tpl, name=name or "model", precision=precision, **kwargs)
    if str(path_or_model).lower() in ("smollm2", "reference"):
        from .reference import load_reference
        return load_reference(name=name)
    from ..checkpoint import load_checkpoint
    from ..runtime import pick_device

    path = Path(path_or_model)
    model, info = load_checkpoint(path, device=pick_device(device))
    label = name or (path.name if path.suffix != ".pt" else f"{path.parent.name}/{path.stem}")
    return MambaLM(model, info.tokenizer, info.template, name=label, precision=precision, info=info,
                   **kwargs)
