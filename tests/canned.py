"""Stub models with canned replies, driven through the real generation path (mambaft.generate ->
the chat layer -> mambaft.evaluate.replies): `prefill` reads each prompt, picks its reply text, and
the logits then spell that reply token by token and end with the end token. So everything above the
model (decoding, stop reasons, the template's clean-up, every metric) runs as it does on a real model.

    CannedModel(tok, tpl, lambda question: "A.")                 # the canned demo model of issue 23
    CannedModel(tok, tpl, lambda question: f"You asked: {question}")   # a varied one
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from mambaft.evaluate.lm import MambaLM


def last_question(text: str) -> str:
    """The last user turn of a rendered prompt ("...User: Q\\nAssistant:") -> Q."""
    body = text.rsplit("User:", 1)[-1]
    return body.split("Assistant:", 1)[0].strip()


class CannedModel(torch.nn.Module):
    """A model whose greedy reply to a prompt is `reply(question)` followed by the end token.
    `stops=False`: no end token, the reply then repeats until the token limit."""

    def __init__(self, tokenizer, template, reply, stops: bool = True, vocab_size: int = 50257,
                 max_seq_len: int = 256):
        super().__init__()
        self.token_embedding = torch.nn.Embedding(1, 1)          # generate reads its device
        self.config = SimpleNamespace(max_seq_len=max_seq_len, vocab_size=vocab_size)
        self.tok, self.reply, self.stops, self.V = tokenizer, reply, stops, vocab_size
        self.end_id = template.end_id(tokenizer)

    def _onehot(self, ids) -> torch.Tensor:
        logits = torch.full((len(ids), self.V), -1e4)            # [B, V]
        logits[torch.arange(len(ids)), torch.tensor(ids)] = 0.0
        return logits

    def _next(self, state) -> list:
        out = []
        for script, pos in zip(state["scripts"], state["pos"]):
            out.append(script[pos] if pos < len(script) else script[-1])
        state["pos"] = [p + 1 for p in state["pos"]]
        return out

    def prefill(self, rows):
        scripts = []
        for r in rows:
            ids = self.tok.encode(self.reply(last_question(self.tok.decode(list(r)))))
            scripts.append(ids + [self.end_id] if self.stops else ids * 64)
        state = {"scripts": scripts, "pos": [0] * len(rows)}
        return self._onehot(self._next(state)), state

    def step(self, nxt, state):
        return self._onehot(self._next(state))

    def forward(self, ids, **_):
        """Uniform logits [B, L, V] (the perplexity parts of an evaluation run on it, meaninglessly)."""
        return {"logits": torch.zeros(ids.shape[0], ids.shape[1], self.V)}


def canned_lm(reply, name: str, stops: bool = True) -> MambaLM:
    """An evaluation LM around a CannedModel, with the GPT-2 tokenizer and mambaft's template."""
    from mambaft.template import DEFAULT_TEMPLATE
    from mambaft.tokenizer import load_tokenizer

    tok = load_tokenizer()
    return MambaLM(CannedModel(tok, DEFAULT_TEMPLATE, reply, stops=stops), tok, DEFAULT_TEMPLATE, name=name)


# The three stubs of issue 23.
def always_a(question: str) -> str:
    return "A."


def always_dont_know(question: str) -> str:
    return "I don't know."


def varied(question: str) -> str:
    """A different reply of several words to every different question."""
    return f"Here is what I know about {question.rstrip('?.! ')}."
