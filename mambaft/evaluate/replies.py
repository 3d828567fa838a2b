"""Chat replies for evaluation: render histories with the model's template, generate, and record
HOW each reply ended (end token, the template's next-turn marker, or the token limit).

Used by the probes, the degeneration metrics and the diagnosis. Greedy by default, so replies are
deterministic; with temperature > 0 the `seed` fixes them.

    python -m mambaft.evaluate.replies --model PATH "What is the capital of France?"
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Optional, Sequence

from tqdm.auto import tqdm

from ..generate import generate

STOP_END = "end_token"      # the model emitted its end-of-turn token
STOP_STRING = "stop_string"  # it wrote the next turn's marker ("\nUser:") instead
STOP_LIMIT = "limit"        # it ran to max_new_tokens without stopping


@dataclass
class Reply:
    """One generated reply. `text` is the decoded new tokens (end token excluded); `answer` is the
    text cut at the template's stop strings and stripped (what a user would see)."""
    prompt_ids: list
    new_ids: list
    text: str
    answer: str
    stopped_by: str
    extra: dict = field(default_factory=dict)

    @property
    def hit_limit(self) -> bool:
        return self.stopped_by == STOP_LIMIT

    @property
    def n_new(self) -> int:
        return len(self.new_ids)


def _first_stop(text: str, stops: Sequence[str]) -> int:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else -1


def generate_replies(model, tokenizer, template, histories: Sequence[Sequence[dict]],
                     max_new_tokens: int = 64, seed: int = 0, batch_size: int = 16,
                     progress: bool = False, **gen_kwargs) -> list:
    """Histories (each a list of messages ending with a user turn) -> list[Reply], same order.

    Generation stops on the template's end token (by id) or when the decoded reply contains one of
    `template.stop_strings` (the base model never learned the end token, but may start a new
    "User:" turn). `gen_kwargs` go to `mambaft.generate.generate` (temperature, top_k, ...)."""
    end_id = template.end_id(tokenizer)
    stops = tuple(template.stop_strings)
    prompts = [template.prompt_ids(list(h), tokenizer) for h in histories]
    out: list = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="generating", disable=not progress or len(starts) < 2):
        chunk = prompts[start:start + batch_size]
        new: list = [[] for _ in chunk]
        by_string = [False] * len(chunk)

        def on_token(row: int, tok: int) -> bool:
            if tok == end_id:
                return False  # generate stops the row itself (stop_token_ids)
            new[row].append(tok)
            # Decoding the whole reply each step is O(T^2) in characters, negligible at T <= 512.
            if stops and _first_stop(tokenizer.decode(new[row]), stops) >= 0:
                by_string[row] = True
                return True
            return False

        rows = generate(model, chunk, max_new_tokens=max_new_tokens, stop_token_ids=[end_id],
                        seed=seed + start, stream=on_token, **gen_kwargs)
        for b, (p, full) in enumerate(zip(chunk, rows)):
            gen_ids = list(full[len(p):])
            if gen_ids and gen_ids[-1] == end_id:
                stopped = STOP_END
                gen_ids = gen_ids[:-1]
            elif by_string[b]:
                stopped = STOP_STRING
            else:
                stopped = STOP_LIMIT
            text = tokenizer.decode(gen_ids)
            out.append(Reply(prompt_ids=list(p), new_ids=gen_ids, text=text,
                             answer=template.clean_reply(text), stopped_by=stopped))
    return out


def main(argv: Optional[list] = None) -> None:
    from ..checkpoint import load_checkpoint

    p = argparse.ArgumentParser(description="Greedy chat replies to single-turn questions.")
    p.add_argument("--model", required=True)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("questions", nargs="+")
    a = p.parse_args(argv)
    model, info = load_checkpoint(a.model)
    replies = generate_replies(model, info.tokenizer, info.template,
                               [[{"role": "user", "content": q}] for q in a.questions], a.new)
    for q, r in zip(a.questions, replies):
        print(f"User: {q}\nAssistant: {r.answer}   [{r.stopped_by}, {r.n_new} tokens]\n")


if __name__ == "__main__":
    main()
