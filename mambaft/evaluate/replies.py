"""Chat replies for evaluation: render histories with the model's template, generate, and record
HOW each reply ended (end token, the template's next-turn marker, or the token limit).

Used by the probes, the degeneration metrics and the diagnosis. Greedy by default, so replies are
deterministic; with temperature > 0 the `seed` fixes them.

    mambaft answers --model PATH "What is the capital of France?"      # greedy replies, as a table
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from tqdm.auto import tqdm


STOP_END = "end_token"      # the model emitted its end-of-turn token
STOP_STRING = "stop_string"  # it wrote the next turn's marker ("\nUser:") instead
STOP_LIMIT = "limit"        # it ran to max_new_tokens without stopping


@dataclass
class EvalReply:
    """One generated reply as the evaluations score it (built from the chat layer's `Reply`, which
    carries timing and the live context instead). `text` is the decoded new tokens (end token
    excluded); `answer` is the text cut at the template's stop strings and stripped (what a user
    would see); `stopped_by` uses the evaluation reports' words (STOP_*)."""
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


# The chat layer's stop reasons -> ours (the evaluation reports say "limit" for runaway replies).
_REASONS = {"end_token": STOP_END, "stop_string": STOP_STRING, "max_new_tokens": STOP_LIMIT}


def eval_replies(model, tokenizer, template, histories: Sequence[Sequence[dict]],
                     max_new_tokens: int = 64, seed: int = 0, batch_size: int = 16,
                     progress: bool = False, temperature: float = 0.0, top_k: Optional[int] = None,
                     top_p: Optional[float] = None, repetition_penalty: float = 1.0,
                     no_repeat_ngram_size: int = 0) -> list:
    """Histories (each a list of messages ending with a user turn) -> list[EvalReply], same order.

    Generation goes through the chat layer (`mambaft.chat.generate_replies`: one batched `generate`
    per chunk), so evaluation and chat stop the same way: on the template's end token (by id) or as
    soon as the decoded reply contains one of its stop strings (the base model never learned the end
    token, but may start a new "User:" turn). Greedy by default."""
    from ..chat.session import ChatSettings
    from ..chat.session import generate_replies as chat_replies

    settings = ChatSettings(temperature=temperature, top_k=top_k or 0, top_p=top_p or 1.0,
                            repetition_penalty=repetition_penalty,
                            no_repeat_ngram_size=no_repeat_ngram_size, max_new_tokens=max_new_tokens,
                            min_new_tokens=0)   # measure the model as it is: an empty reply counts
    prompts = [template.prompt_ids(list(h), tokenizer) for h in histories]
    out: list = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="generating", disable=not progress or len(starts) < 2):
        chunk = prompts[start:start + batch_size]
        for p, r in zip(chunk, chat_replies(model, tokenizer, template, chunk, settings, seed=seed + start)):
            gen_ids = list(r.token_ids[:-1] if r.stop_reason == "end_token" else r.token_ids)
            text = tokenizer.decode(gen_ids)
            out.append(EvalReply(prompt_ids=list(p), new_ids=gen_ids, text=text,
                             answer=template.clean_reply(text), stopped_by=_REASONS[r.stop_reason]))
    return out
