"""The one conversation schema every source is converted to, and the bookkeeping of bad input.

    {"id": str, "source": str, "lang": str, "conversation_id": str,
     "messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}

`conversation_id` ties together the segments of one conversation (ShareGPT splits long ones into
`ID_0`, `ID_1`, ...; an OpenAssistant tree gives several threads): the train/val split is made on it,
so segments of one conversation never land on both sides.

Bad input has two levels:
  * a malformed ROW (bad JSON line, missing field, unknown role) is counted in `BadRows` with its file
    and line, and the run goes on;
  * a FILE that is not the announced format at all raises `FormatError`, naming the file and the
    fields that format needs.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Optional

from mambaft.errors import UserError

ROLES = ("system", "user", "assistant")

# Every role spelling met in the hub formats (ShareGPT alone has six), lower-cased.
ROLE_ALIASES = {
    "system": "system",
    "user": "user", "human": "user", "prompter": "user", "question": "user",
    "assistant": "assistant", "gpt": "assistant", "chatgpt": "assistant", "bing": "assistant",
    "bard": "assistant", "model": "assistant", "bot": "assistant", "answer": "assistant",
}


class FormatError(UserError, ValueError):
    """A file is not the format it was announced as (the message names the file and the fields)."""


class RowError(ValueError):
    """One row cannot be converted (the reason; the caller adds file and line)."""


def normalize_role(raw) -> str:
    role = ROLE_ALIASES.get(str(raw).strip().lower())
    if role is None:
        raise RowError(f"unknown role {raw!r} (known: {', '.join(sorted(ROLE_ALIASES))})")
    return role


def make_conversation(id: str, source: str, lang: str, messages: list[dict],
                      conversation_id: Optional[str] = None) -> dict:
    """Build a schema row; contents must be strings and roles canonical (RowError otherwise)."""
    clean = []
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            raise RowError(f"message {i}: role {m.get('role')!r} is not one of {ROLES}")
        content = m.get("content")
        if not isinstance(content, str):
            raise RowError(f"message {i}: content is {type(content).__name__}, expected text")
        clean.append({"role": m["role"], "content": content})
    return {"id": str(id), "source": source, "lang": lang or "und",
            "conversation_id": str(conversation_id if conversation_id is not None else id),
            "messages": clean}


@dataclass
class BadRows:
    """Counts malformed rows per source and keeps the first examples as "file:line: reason"."""
    keep: int = 20
    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=lambda: defaultdict(list))

    def add(self, source: str, where: str, reason: str) -> None:
        self.counts[source] += 1
        if len(self.examples[source]) < self.keep:
            self.examples[source].append(f"{where}: {reason}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {s: {"count": n, "examples": list(self.examples[s])} for s, n in sorted(self.counts.items())}

    def summary(self) -> str:
        if not self.total:
            return "no malformed rows"
        lines = [f"{self.total} malformed row(s) skipped:"]
        for s, n in sorted(self.counts.items()):
            lines.append(f"  {s}: {n}, e.g. " + "; ".join(self.examples[s][:3]))
        return "\n".join(lines)


# --- a small language guesser (stop words + script), for sources that do not label their rows ------
_STOP = {
    "en": "the and of to is in that it you for was with on are be this have not what how".split(),
    "fr": "le la les des est et une un que pour dans pas qui sur vous avec je ce du au sont".split(),
    "es": "el los las que de y en es por una para con no se del lo como su al".split(),
    "de": "der die das und ist nicht ich zu den mit sie es ein eine auf für von dem".split(),
    "it": "il di che è non per una un sono del della con le si da gli come".split(),
    "pt": "o que de não uma um para com os as do da em se mais por você".split(),
}
_STOP_INDEX: dict[str, tuple[str, ...]] = {}
for _lang, _words in _STOP.items():
    for _w in _words:
        _STOP_INDEX[_w] = _STOP_INDEX.get(_w, ()) + (_lang,)
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_SCRIPTS = tuple((lang, re.compile(f"[{lo}-{hi}]")) for lang, lo, hi in (
    ("zh", "\u4e00", "\u9fff"), ("ja", "\u3040", "\u30ff"), ("ko", "\uac00", "\ud7af"),
    ("ru", "\u0400", "\u04ff"), ("ar", "\u0600", "\u06ff"), ("he", "\u0590", "\u05ff"),
    ("hi", "\u0900", "\u097f"), ("th", "\u0e00", "\u0e7f"), ("el", "\u0370", "\u03ff")))


def guess_lang(text: str, sample_chars: int = 600) -> str:
    """ISO code of the most likely language: a non-Latin script if >= 30 % of letters are in it,
    else the language whose stop words cover most words; "und" when nothing decides.
    """
    text = text[:sample_chars].lower()
    words = _WORD.findall(text)
    if not words:
        return "und"
    if not text.isascii():
        n_letters = sum(map(len, words))
        for lang, rx in _SCRIPTS:
            if len(rx.findall(text)) >= 0.3 * n_letters:
                return lang
    scores: dict[str, int] = {}
    for w in words:
        for lang in _STOP_INDEX.get(w, ()):
            scores[lang] = scores.get(lang, 0) + 1
    if not scores:
        return "und"
    best = max(scores, key=scores.get)
    # Short texts ("Hello!") hit no stop word: call them undecided rather than guess.
    return best if scores[best] >= max(1, 0.05 * len(words)) else "und"
