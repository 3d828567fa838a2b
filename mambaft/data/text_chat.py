"""Plain domain text -> "continue this text" conversations, so that a domain phase keeps the chat format.

Trained as continued pretraining (every token a label, documents joined by the end token), plain text
teaches a chat model to write on and on: the specialized demo's phase 2 (mostly French plain text)
ended with a model that never stopped. Instruction-wrapping domain text is the usual remedy (e.g.
"continue"/"summarise" tasks built from raw documents): the model still reads and writes the domain's
language, but inside the chat template, with a short answer that ends with the end token.

Each document is cut, at sentence ends, into consecutive (opening, continuation) pairs:

    User: Continue ce texte : <opening: whole sentences, >= PROMPT_CHARS characters>
    Assistant: <continuation: the next whole sentences, <= ANSWER_CHARS characters><|endoftext|>

Only the continuation is trained (as for every conversation). ANSWER_CHARS = 240 keeps answers near
60-80 GPT-2 tokens of French (~3-4 characters per token), about the length of a wiki summary answer,
so they stop within the 64-128 tokens the course generates. A pair whose next sentence alone is
longer than ANSWER_CHARS is skipped (no cut mid-sentence: the answer would end where text does not).
"""
from __future__ import annotations

import re
from typing import Iterable

from mambaft.data.schema import make_conversation

INSTRUCTIONS = {"en": "Continue this text:", "fr": "Continue ce texte :"}
PROMPT_CHARS = 160      # the opening: whole sentences up to at least this many characters
ANSWER_CHARS = 240      # the continuation: whole sentences, at most this many characters
MIN_ANSWER_CHARS = 20   # shorter continuations ("1.", "Voir aussi.") teach nothing
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=[\"«(\[A-ZÀ-ÖØ-Þ0-9])")


def sentences(text: str) -> list[str]:
    """Whitespace collapsed (layout, non-breaking spaces), then split after . ! ? … before a capital."""
    flat = " ".join(text.split())
    return [s for s in _SENTENCE_END.split(flat) if s]


def leading_sentences(text: str, max_chars: int = ANSWER_CHARS) -> str:
    """The whole sentences that open `text`, up to max_chars (at least the first sentence)."""
    out: list = []
    for s in sentences(text):
        if out and sum(len(x) + 1 for x in out) + len(s) > max_chars:
            break
        out.append(s)
    return " ".join(out)


def continuation_pairs(text: str, prompt_chars: int = PROMPT_CHARS,
                       answer_chars: int = ANSWER_CHARS) -> list[tuple[str, str]]:
    """Consecutive (opening, continuation) pairs of one document, in order, never overlapping."""
    sents, pairs, i = sentences(text), [], 0
    while i < len(sents):
        opening, j = [], i
        while j < len(sents) and sum(len(s) + 1 for s in opening) < prompt_chars:
            opening.append(sents[j])
            j += 1
        answer = []
        while j < len(sents) and sum(len(s) + 1 for s in answer) + len(sents[j]) <= answer_chars:
            answer.append(sents[j])
            j += 1
        if not answer:          # the next sentence alone is too long (or the text ended): skip past it
            i = j + 1
            continue
        reply = " ".join(answer)
        if len(reply) >= MIN_ANSWER_CHARS:
            pairs.append((" ".join(opening), reply))
        i = j
    return pairs


def text_conversations(docs: Iterable[dict], source: str, lang: str) -> list[dict]:
    """Documents ({"id", "text", "lang"?}) -> schema conversations, one per (opening, continuation)
    pair; all pairs of a document share its conversation_id, so the train/val split keeps a document
    on one side."""
    out = []
    for d in docs:
        doc_lang = d.get("lang") or lang
        ask = INSTRUCTIONS.get(doc_lang, INSTRUCTIONS["en"])
        for k, (opening, reply) in enumerate(continuation_pairs(d["text"])):
            out.append(make_conversation(f"{d['id']}#c{k}", source, doc_lang,
                                         [{"role": "user", "content": f"{ask} {opening}"},
                                          {"role": "assistant", "content": reply}],
                                         conversation_id=str(d["id"])))
    return out
