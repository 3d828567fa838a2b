"""The sampling controls of a chat, alone in a module that imports nothing of mambaft: the chat
(mambaft.chat.session) uses them, and the exported model card (mambaft.hf.card) prints their
defaults, without the card importing the chat (which loads checkpoints, which export cards)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ChatSettings:
    """Sampling controls of one chat. Defaults suit a small model that tends to loop."""
    temperature: float = 0.7          # 0 = greedy (argmax), reproducible without a seed
    top_k: int = 50                   # 0 = off
    top_p: float = 0.9                # 1.0 = off
    repetition_penalty: float = 1.1   # 1.0 = off; CTRL-style, on the reply's own tokens (generate)
    no_repeat_ngram_size: int = 0     # 0 = off; 3 forbids repeating any 3-token sequence
    max_new_tokens: int = 128
    # 1: the end token cannot come first. A small fine-tune gives it ~9% as the first reply token
    # (the demo course: rank 3 after " The" and " A"), and sampling at 0.7 raises that to ~16%.
    min_new_tokens: int = 1
    seed: Optional[int] = 0           # turn t of a session samples with seed + t; None = global RNG
    system: str = ""                  # optional system message, kept in every prompt

    def __post_init__(self):
        checks = [
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "an int >= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0"),
            ("no_repeat_ngram_size", isinstance(self.no_repeat_ngram_size, int)
             and self.no_repeat_ngram_size >= 0, "an int >= 0"),
            ("max_new_tokens", isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
             "an int >= 1"),
            ("min_new_tokens", isinstance(self.min_new_tokens, int) and self.min_new_tokens >= 0,
             "an int >= 0"),
            ("seed", self.seed is None or isinstance(self.seed, int), "an int or None"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"ChatSettings.{name}={getattr(self, name)!r}: must be {want}")

    def replace(self, **changes) -> "ChatSettings":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"ChatSettings: unknown setting(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def generate_kwargs(self) -> dict:
        """The arguments of `generate` these settings control (seed is per turn, see ChatSession)."""
        return dict(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                    top_k=self.top_k or None, top_p=self.top_p if self.top_p < 1 else None,
                    repetition_penalty=self.repetition_penalty,
                    no_repeat_ngram_size=self.no_repeat_ngram_size, min_new_tokens=self.min_new_tokens)
