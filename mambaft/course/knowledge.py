"""What the base knows before any fine-tuning: greedy continuations of plain-text prompts (notebook 00).

Fine-tuning teaches a format (answer, then stop), not facts: a fact the base cannot complete as plain
text is one the chat model will not answer either. The prompts are those of the pretraining report
(mambaft.recipes.pretrain_report.KNOWLEDGE_PROMPTS) and a few more facts with the word a model that
knows them would write. They are only generated from, never trained on.

    table = base_continuations("data/demo_base")
    table             # an HTML table in Jupyter; print(table) for text; table.records() for JSON
    table.verdict()   # "knows 1 of 5 facts; 7 distinct continuations of 15"
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from mambaft.course import PathLike
from mambaft.recipes.pretrain_report import KNOWLEDGE_PROMPTS

# prompt -> a word its continuation holds when the model knows the fact (case-insensitive)
FACTS: dict[str, str] = {
    "The capital of France is": "Paris",
    "Water is made of": "hydrogen",
    "The largest planet in the Solar System is": "Jupiter",
    "The Moon orbits the": "Earth",
    "La capitale de la France est": "Paris",
}
PROMPTS: tuple = tuple(dict.fromkeys((*KNOWLEDGE_PROMPTS, *FACTS)))   # the report's first, no repeats


@dataclass
class Continuations:
    """prompt -> the base's greedy continuation, and for the prompts of `facts`: is the fact there?"""
    prompts: list
    continuations: list
    facts: Mapping[str, str] = field(default_factory=dict)

    def knows(self, i: int) -> Optional[bool]:
        """True/False for a prompt with an expected word, None for an open prompt."""
        want = self.facts.get(self.prompts[i])
        return None if want is None else want.lower() in self.continuations[i].lower()

    @property
    def known(self) -> int:
        return sum(bool(self.knows(i)) for i in range(len(self.prompts)))

    @property
    def checked(self) -> int:
        return sum(self.knows(i) is not None for i in range(len(self.prompts)))

    @property
    def distinct(self) -> int:
        """Distinct continuations: a base that learned little falls into one phrase for every prompt."""
        return len({c.strip() for c in self.continuations})

    def verdict(self) -> str:
        return (f"The base completes {self.known} of the {self.checked} facts; its {len(self.prompts)} "
                f"continuations hold {self.distinct} distinct texts.")

    def records(self) -> list:
        return [{"prompt": p, "continuation": c, "expected": self.facts.get(p), "knows": self.knows(i)}
                for i, (p, c) in enumerate(zip(self.prompts, self.continuations))]

    def __str__(self) -> str:
        mark = {True: "yes", False: "NO", None: ""}
        w = max(len(p) for p in self.prompts)
        lines = [f"{'prompt':<{w}}  {'knows':<5}  continuation"]
        lines += [f"{p:<{w}}  {mark[self.knows(i)]:<5}  {c.strip()!r}"
                  for i, (p, c) in enumerate(zip(self.prompts, self.continuations))]
        return "\n".join(lines + [self.verdict()])

    __repr__ = __str__   # text/plain of a notebook cell

    def _repr_html_(self) -> str:
        e = html.escape
        mark = {True: "yes", False: "<b>no</b>", None: ""}
        rows = "".join(f"<tr><td><b>{e(p)}</b></td><td style='white-space:pre-wrap'>{e(c.strip())}</td>"
                       f"<td>{e(self.facts.get(p) or '')}</td><td>{mark[self.knows(i)]}</td></tr>"
                       for i, (p, c) in enumerate(zip(self.prompts, self.continuations)))
        return (f"<table class='mambaft-knowledge'><thead><tr><th>prompt</th><th>greedy continuation</th>"
                f"<th>expected</th><th>knows</th></tr></thead><tbody>{rows}</tbody></table>"
                f"<p>{e(self.verdict())}</p>")


def base_continuations(base: PathLike, prompts: Sequence[str] = PROMPTS, *, facts: Mapping[str, str] = FACTS,
                       max_new_tokens: int = 16) -> Continuations:
    """Greedy continuations (plain text, no chat format) of `prompts` by the model at `base`:
    `max_new_tokens` tokens each (16 GPT-2 tokens: about 12 words, enough for a fact)."""
    import torch

    from mambaft.checkpoint import load_checkpoint
    from mambaft.generate import generate

    if not prompts:
        raise ValueError("prompts: expected at least one prompt")
    model, info = load_checkpoint(base)
    rows = [info.tokenizer.encode(p) for p in prompts]
    with torch.no_grad():
        outs = generate(model, rows, max_new_tokens=max_new_tokens, temperature=0.0)
    conts = [info.tokenizer.decode(o[len(r):]) for r, o in zip(rows, outs)]
    return Continuations(list(prompts), conts, {p: w for p, w in facts.items() if p in prompts})
