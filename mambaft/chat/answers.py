"""Answers of several models to fixed prompts, as text and HTML: what a headless notebook shows.

A saved notebook opened without a kernel cannot run the chat widget; this table is the static record
(text/plain and text/html outputs both survive), and `chat_widget(..., transcript=table)` shows it.

    table = answer_table({"base": "base.pt", "fine-tuned": "outputs/run/final"},
                         ["What is the capital of France?", "Write a haiku about rain."])
    table            # an HTML table in Jupyter; print(table) for text; table.records() for JSON

    mambaft answers --model base=PATH --model tuned=PATH "What is 2+2?"
"""
from __future__ import annotations

import html
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from mambaft.chat.session import ChatSession, ChatSettings, generate_replies

ModelSpec = Union[ChatSession, str, Path, tuple]


def as_session(spec: ModelSpec, settings: Optional[ChatSettings] = None, name: str = "model") -> ChatSession:
    """A ChatSession from a session, a checkpoint path, or a (model, info) pair from load_checkpoint.
    A given session is used as is, except that `settings` (when given) replace its own."""
    if isinstance(spec, ChatSession):
        if settings is not None:
            spec.settings = settings
        return spec
    if isinstance(spec, (str, Path)):
        return ChatSession.load(spec, settings, name=name)
    if isinstance(spec, tuple) and len(spec) == 2 and hasattr(spec[1], "template"):
        model, info = spec
        return ChatSession(model, info.tokenizer, info.template, settings, name=name)
    raise TypeError(f"model {name!r}: expected a ChatSession, a checkpoint path or a (model, info) pair "
                    f"from load_checkpoint, got {type(spec).__name__}")


@dataclass
class AnswerTable:
    """prompts x models -> replies. `str()` is plain text, `_repr_html_` an HTML table."""
    prompts: list
    names: list
    replies: list = field(default_factory=list)   # replies[i][j]: prompt i, model j (Reply)

    def answer(self, prompt_index: int, name: str) -> str:
        return self.replies[prompt_index][self.names.index(name)].text

    def records(self) -> list:
        """JSON-ready rows (for a notebook's summary file)."""
        return [{"prompt": p, **{n: {"answer": r.text, "tokens": len(r.token_ids), "stop": r.stop_reason}
                                  for n, r in zip(self.names, row)}}
                for p, row in zip(self.prompts, self.replies)]

    def __str__(self) -> str:
        width = max(len(n) for n in self.names)
        lines = []
        for i, (p, row) in enumerate(zip(self.prompts, self.replies), 1):
            lines.append(f"[{i}] User: {p}")
            for n, r in zip(self.names, row):
                body = textwrap.wrap(" ".join(filter(None, (r.text, r.note))), 96 - width) or [""]
                lines.append(f"    {n:<{width}} | {body[0]}")
                lines += [f"    {'':<{width}} | {b}" for b in body[1:]]
                lines.append(f"    {'':<{width}} | ({len(r.token_ids)} tokens, stopped: "
                             f"{r.stop_reason.replace('_', ' ')})")
            lines.append("")
        return "\n".join(lines).rstrip()

    def to_html(self) -> str:
        e = html.escape
        head = "".join(f"<th>{e(n)}</th>" for n in self.names)
        rows = []
        for p, row in zip(self.prompts, self.replies):
            cells = "".join(
                f"<td style='white-space:pre-wrap;vertical-align:top'>{e(r.text)}"
                f"{f' <i>{e(r.note)}</i>' if r.note else ''}"
                f"<br><small>{len(r.token_ids)} tokens, {e(r.stop_reason.replace('_', ' '))}</small></td>"
                for r in row)
            rows.append(f"<tr><td style='vertical-align:top'><b>{e(p)}</b></td>{cells}</tr>")
        return (f"<table class='mambaft-answers'><thead><tr><th>prompt</th>{head}</tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>")

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:  # text/plain output of a notebook cell
        return str(self)


def answer_table(models: Mapping[str, ModelSpec], prompts: Sequence[str],
                 settings: Optional[ChatSettings] = None) -> AnswerTable:
    """Each model answers each prompt as a fresh one-turn chat (its own template and tokenizer).

    One batched generate call per model; each row stops on its own end token or stop string.
    Default settings are greedy (temperature 0) so a re-run shows the same table.
    """
    if not models:
        raise ValueError("answer_table: no models given")
    prompts = [str(p) for p in prompts]
    if not prompts or any(not p.strip() for p in prompts):
        raise ValueError("answer_table: prompts must be a non-empty list of non-empty strings")
    settings = settings or ChatSettings(temperature=0.0)
    names = list(models)
    columns = []
    for name in names:
        s = as_session(models[name], None, name=name)
        # A fresh session per prompt builds each one-turn prompt within the model's budget.
        batch = [ChatSession(s.model, s.tokenizer, s.template, settings, name=name).build_prompt(p)
                 for p in prompts]
        replies: list = generate_replies(s.model, s.tokenizer, s.template, [b[0] for b in batch],
                                         settings, seed=settings.seed)
        for r, (_, _, report) in zip(replies, batch):
            r.context = report
        columns.append(replies)
    rows: list = [[columns[j][i] for j in range(len(names))] for i in range(len(prompts))]
    return AnswerTable(prompts, names, rows)
