"""Token ids -> reply text, one token at a time: safe streaming deltas and stop strings.

`ReplyDecoder` is fed the generated ids of one reply (never the prompt). After each token it knows
  * the text it may show now: never half of a multi-byte character, never the beginning of a stop
    string that might still complete ("\\nUs" could become "\\nUser:"), never leading or trailing
    whitespace (the template's answer lead " " and the "\\n" before the next turn);
  * whether a stop string has appeared, so the caller can stop generating that row.

Invariant (tested): the deltas, joined, equal the final reply, and the final reply equals
`template.clean_reply(decoded text)` up to where the first stop string starts.

Why decode the whole reply each time instead of token by token: GPT-2's byte-level BPE splits
characters such as "ç" (bytes C3 A7) across tokens (" \\xc3" + "\\xa7"), and only the joined bytes
decode to text. Decoding 512 ids takes about 70 us here, against tens of ms per generated token for
the 124M model, so the simple way costs under 1%.

    mambaft stream      # show the deltas of a reply that splits "ça" across two tokens
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

REPLACEMENT = "\ufffd"  # what a decoder prints for bytes that do not (yet) form a character


def held_back_suffix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string
    (text that must not be shown yet because the next tokens may complete a stop)."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> tuple[int, Optional[str]]:
    """Earliest occurrence of any stop string at or after `start`: (index, stop) or (-1, None)."""
    best, which = -1, None
    for stop in stops:
        i = text.find(stop, start)
        if i >= 0 and (best < 0 or i < best):
            best, which = i, stop
    return best, which


@dataclass
class ReplyDecoder:
    """Incremental decoder for ONE reply. Feed ids with `push`; read `reply` at the end.

    Args:
        tokenizer: anything with `decode(ids) -> str`.
        stops: stop strings (e.g. the template's "\\nUser:" and the end marker "<|endoftext|>").
    """
    tokenizer: object
    stops: tuple = ()
    ids: list = field(default_factory=list)
    emitted: str = ""            # text already handed out as deltas
    stopped_by: Optional[str] = None   # the stop string that ended the reply, if any
    _final: Optional[str] = None

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids)

    def push(self, token_id: int) -> str:
        """Add one generated id; return the new text that is safe to show (often "")."""
        if self._final is not None:
            return ""
        self.ids.append(int(token_id))
        text = self._text()
        # Trailing replacement characters are bytes still waiting for the rest of their character.
        stable = text.rstrip(REPLACEMENT)
        # Only the region past what could already have been checked can hold a new stop string.
        scan_from = max(0, len(self.emitted) - max((len(s) for s in self.stops), default=0))
        cut, stop = find_stop(stable, self.stops, scan_from)
        if cut >= 0:
            self.stopped_by = stop
            return self._finish(stable[:cut])
        shown = stable[:len(stable) - held_back_suffix(stable, self.stops)]
        return self._advance(shown.strip())

    def _advance(self, candidate: str) -> str:
        # `candidate` always extends `emitted`: decoded text only grows at the end, a held-back
        # stop prefix only moves right, and whitespace is held until something follows it.
        if not candidate.startswith(self.emitted):
            # A tokenizer whose decode of a prefix is not a prefix of the decode (not GPT-2's):
            # show nothing more until the end rather than show text that might change.
            return ""
        delta = candidate[len(self.emitted):]
        self.emitted = candidate
        return delta

    def _finish(self, text: str) -> str:
        delta = self._advance(text.strip())
        self._final = text.strip()
        if not self._final.startswith(self.emitted):   # unreachable with GPT-2; keep text consistent
            self._final = self.emitted
        return delta

    @property
    def done(self) -> bool:
        """True once a stop string has appeared: the caller should stop generating this row."""
        return self.stopped_by is not None

    def close(self) -> str:
        """Generation is over (end token, max tokens or cancel): flush what was held back."""
        if self._final is not None:
            return ""
        text = self._text()
        cut, stop = find_stop(text, self.stops)
        if cut >= 0:
            self.stopped_by = stop
            text = text[:cut]
        return self._finish(text)

    @property
    def reply(self) -> str:
        """The final reply (after `close`), or what has been shown so far."""
        return self._final if self._final is not None else self.emitted
