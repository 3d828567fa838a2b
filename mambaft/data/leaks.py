"""Keep the plan's 14 probes out of training: no conversation whose user asks a probe's question, or a
paraphrase of it, is ever trained on.

The probes (mambaft.evaluate.probes) measure whether fine-tuning taught a skill. A model trained on
"What is 2+2?" -> "4" passes the probe by memory and says nothing about the skill, so every source
of every strategy passes through `probe_leak` (mambaft.data.filters counts the drops as "probe").

A leak is a user turn that
    * equals a probe question after normalisation (case, spaces, punctuation), or
    * matches one of PARAPHRASES: the probe's subject, however it is asked (the capital of France,
      2 + 2 in digits or words, the colour of the sky, three colours, the invented professor, the
      context probe's name, "say hello in one short sentence"), in English and French.
Other items of the same kind (3 + 5, the capital of Italy, three fruits) are not leaks: they teach the
skill the probe tests without its answer.
"""
from __future__ import annotations

import re
from typing import Optional

from mambaft.evaluate.probes import PROBES
from mambaft.evaluate.probes import _norm as _probe_norm


def _norm(text: str) -> str:
    """The probes' own normalisation (NFC, lowercase, typographic apostrophes), one space between words."""
    return re.sub(r"\s+", " ", _probe_norm(text)).strip()


def _bare(text: str) -> str:
    """Letters and digits only, one space between words (for the exact-question match)."""
    return re.sub(r"[^\w]+", " ", _norm(text)).strip()


# probe kind -> patterns on the normalised user text. Each names the probe's subject, not its kind.
PARAPHRASES: dict[str, tuple[str, ...]] = {
    "capital": (r"capital\w*\W+(?:\w+\W+){0,3}(?:of|de|du)\W+(?:la\W+)?france\b",
                r"\bfrance'?s\W+capital", r"\bfrench\W+capital\b",
                r"\bcapitale\W+(?:fran[cç]aise|de\W+la\W+france)"),
    "arithmetic": (r"(?<![\d.])2\s*(?:\+|plus|and|et|add(?:ed)? to)\s*2(?!\d|[.,]\d)",
                   r"\btwo\s+(?:\+|plus|and|add(?:ed)? to)\s+two\b", r"\bdeux\s+(?:\+|plus|et)\s+deux\b"),
    "context": (r"\bcamille\b",),
    "no_invention": (r"\btrenchik\b", r"\bvelmora\b", r"\borvald\b"),
    "one_word": (r"colou?r\w*\W+(?:\w+\W+){0,4}sky\b", r"\bsky\W+(?:\w+\W+){0,4}colou?r",
                 r"couleur\W+(?:\w+\W+){0,4}ciel\b", r"\bciel\W+(?:\w+\W+){0,4}couleur"),
    "three_colors": (r"\b(?:three|3)\s+(?:\w+\s+)?colou?rs\b", r"\btrois\s+(?:\w+\s+)?couleurs\b"),
    "stops": (r"\bsay\s+hello\b", r"\bdis\s+bonjour\b", r"\bdites\s+bonjour\b"),
}
_PATTERNS = [(kind, re.compile(p)) for kind, ps in PARAPHRASES.items() for p in ps]
_QUESTIONS = {_bare(m["content"]): p.id for p in PROBES for m in p.messages if m["role"] == "user"}


def probe_leak(text: str) -> Optional[str]:
    """The probe (id, or kind for a paraphrase) that `text` asks, else None."""
    if _bare(text) in _QUESTIONS:
        return _QUESTIONS[_bare(text)]
    t = _norm(text)
    for kind, pat in _PATTERNS:
        if pat.search(t):
            return kind
    return None


def conversation_leak(conv: dict) -> Optional[str]:
    """The first probe that one of the conversation's user turns asks, else None."""
    for m in conv.get("messages", ()):
        if m.get("role") == "user":
            hit = probe_leak(str(m.get("content", "")))
            if hit:
                return hit
    return None
