"""The chat text layer over `mambaft.generate.generate`: template, stops, streaming, history, seed.

    session = ChatSession.load("outputs/run/final", ChatSettings(temperature=0.7, seed=0))
    session.send("What is the capital of France?")          # -> "Paris." (the whole reply)
    for delta in session.stream("And of Italy?"): print(delta, end="")   # token by token
    session.reset()

Prompts are rendered with the model's own template (`info.template`, saved beside the weights) and
its own tokenizer. A reply ends at the end token (`stop_token_ids`) or when a stop string appears in
the text (the next "\\nUser:" turn: the base model never learned the end token), whichever comes
first; the stop string is cut off. History keeps whole turns: when the next prompt plus
`max_new_tokens` would not fit in the model's `max_seq_len` positions, the oldest turns are dropped.
For the original architecture the report also says how many prompt tokens the model can actually
use: its receptive field, 1 + 6 x 3 = 19 tokens (docs/mambaswelu.md).

    mambaft ask --model PATH "What is the capital of France?"
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

from mambaft.chat.settings import ChatSettings
from mambaft.chat.text import ReplyDecoder
from mambaft.template import DEFAULT_TEMPLATE, ChatTemplate


@dataclass
class PromptReport:
    """What prompt the model was shown for one reply: turns kept, dropped or cropped to fit
    (evaluate.context.ContextReport is another thing: the context-length experiment's results)."""
    prompt_tokens: int           # ids fed to the model (after dropping turns / cropping)
    budget: int                  # max_seq_len - max_new_tokens: the most the prompt may use
    kept_turns: int              # earlier user/assistant turns still in the prompt
    dropped_turns: int           # oldest turns dropped to fit the budget
    cropped_tokens: int          # ids cut from the front when even the newest message did not fit
    receptive_field: Optional[int]   # tokens one output can depend on (None: unbounded)

    @property
    def usable_tokens(self) -> int:
        """Prompt tokens that can influence the first reply token."""
        rf = self.receptive_field
        return self.prompt_tokens if rf is None else min(self.prompt_tokens, rf)

    def note(self) -> str:
        s = f"prompt {self.prompt_tokens} tokens"
        if self.kept_turns:
            s += f", {self.kept_turns} earlier turn(s)"
        if self.dropped_turns:
            s += f", {self.dropped_turns} oldest turn(s) dropped to fit {self.budget} tokens"
        if self.cropped_tokens:
            s += f", message cropped by {self.cropped_tokens} tokens"
        if self.receptive_field is not None and self.prompt_tokens > self.receptive_field:
            s += (f"; this model sees only the last {self.receptive_field} of them "
                  f"(its receptive field), so earlier text cannot change the answer")
        return s


EMPTY_NOTES = {   # stop reason -> how an empty (or whitespace-only) reply is shown
    "end_token": "(empty reply: the model emitted the end token first)",
    "stop_string": "(empty reply: the model began the next User: turn first)",
    "max_new_tokens": "(empty reply: only whitespace up to max_new_tokens)",
}


@dataclass
class Reply:
    """One generated reply."""
    text: str
    token_ids: list              # generated ids, end token included when it stopped on it
    stop_reason: str             # "end_token" | "stop_string" | "max_new_tokens" | "cancelled"
    seconds: float
    context: Optional[PromptReport] = None

    @property
    def note(self) -> str:
        """What a reader must be told beside the text ("" for a normal reply): a reply the user
        stopped, or an empty one, which would otherwise show as a bare "Assistant:"."""
        if self.stop_reason == "cancelled":
            return "[stopped]" if self.text.strip() else "[stopped before any text]"
        return "" if self.text.strip() else EMPTY_NOTES[self.stop_reason]

    @property
    def tokens_per_s(self) -> float:
        return len(self.token_ids) / self.seconds if self.seconds > 0 else 0.0

    def stats(self) -> str:
        return (f"{len(self.token_ids)} tokens in {self.seconds:.2f} s ({self.tokens_per_s:.1f} tok/s), "
                f"stopped: {self.stop_reason.replace('_', ' ')}")


def _stops(template: ChatTemplate) -> tuple:
    # The end marker as text too: a model may spell "<|endoftext|>" with ordinary tokens.
    return tuple(dict.fromkeys((*template.stop_strings, template.end_of_turn)))


def receptive_field_of(model) -> Optional[int]:
    """19 for the original (conv-only) architecture; None where a state carries the whole history."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "architecture", "original") != "original":
        return None
    return getattr(cfg, "receptive_field", None)


def generate_replies(model, tokenizer, template: ChatTemplate, prompts: Sequence[Sequence[int]],
                     settings: ChatSettings, seed: Optional[int] = None,
                     on_delta: Optional[Callable[[int, str], None]] = None,
                     cancel: Optional[threading.Event] = None) -> list:
    """Generate one reply per prompt (id lists) in ONE batched `generate` call.

    Each row stops on the end token or, through generate's `stream` callback, as soon as a stop
    string appears in its text. `on_delta(row, text)` receives the safe text deltas as they come.
    Returns a list of `Reply` (context left None: the caller knows what it fed).
    """
    from mambaft.generate import generate

    end_id = template.end_id(tokenizer)
    stops = _stops(template)
    decoders = [ReplyDecoder(tokenizer, stops) for _ in prompts]

    def stream(row: int, tok: int) -> bool:
        delta = decoders[row].push(tok)
        if delta and on_delta is not None:
            on_delta(row, delta)
        return decoders[row].done or (cancel is not None and cancel.is_set())

    t0 = time.perf_counter()
    out = generate(model, [list(p) for p in prompts], stop_token_ids=(end_id,), seed=seed,
                   exempt_token_ids=template.marker_ids(tokenizer), stream=stream,
                   **settings.generate_kwargs())
    seconds = time.perf_counter() - t0
    replies = []
    for row, (prompt, full) in enumerate(zip(prompts, out)):
        new = full[len(prompt):]
        dec = decoders[row]
        ended = bool(new) and new[-1] == end_id
        delta = dec.close()
        if delta and on_delta is not None:
            on_delta(row, delta)
        if ended:
            reason = "end_token"
        elif dec.stopped_by is not None:
            reason = "stop_string"
        elif cancel is not None and cancel.is_set() and len(new) < settings.max_new_tokens:
            reason = "cancelled"
        else:
            reason = "max_new_tokens"
        replies.append(Reply(dec.reply, list(new), reason, seconds))
    return replies


class ChatSession:
    """A multi-turn chat with one model. `history` holds the messages the next prompt is built from.

    Args:
        model: a MambaSWELU (anything with `prefill`/`step` and a `config` with max_seq_len).
        tokenizer: `encode`/`decode`/`eos_id` (info.tokenizer from load_checkpoint).
        template: the model's saved chat template (info.template); default the one mambaft trains with.
        settings: sampling controls; change them any time with `session.settings = ...replace(...)`.
    """

    def __init__(self, model, tokenizer=None, template: Optional[ChatTemplate] = None,
                 settings: Optional[ChatSettings] = None, name: str = "model"):
        if tokenizer is None:
            from mambaft.tokenizer import load_tokenizer
            tokenizer = load_tokenizer()
        self.model = model.eval()   # eval: dropout off (the user's demo_chat.py sampled in train mode)
        self.tokenizer = tokenizer
        self.template = template or DEFAULT_TEMPLATE
        self.settings = settings or ChatSettings()
        self.name = name
        self.history: list = []
        self.turns = 0               # replies since the last reset (turn t samples with seed + t)
        self.dropped_turns = 0       # turns dropped from `history` since the last reset
        self.last: Optional[Reply] = None

    @classmethod
    def load(cls, path: Union[str, Path], settings: Optional[ChatSettings] = None, device: str = "cpu",
             name: Optional[str] = None) -> "ChatSession":
        """A session over a checkpoint (original .pt or mambaft folder), with its template and tokenizer."""
        from mambaft.checkpoint import load_checkpoint
        model, info = load_checkpoint(path, device=device)
        return cls(model, info.tokenizer, info.template, settings, name=name or Path(path).name)

    @property
    def max_seq_len(self) -> int:
        return int(self.model.config.max_seq_len)

    @property
    def receptive_field(self) -> Optional[int]:
        return receptive_field_of(self.model)

    def reset(self) -> None:
        self.history, self.turns, self.dropped_turns, self.last = [], 0, 0, None

    # --- prompt building ------------------------------------------------------------------------
    def _messages(self, history: list, text: str) -> list:
        system = [{"role": "system", "content": self.settings.system}] if self.settings.system else []
        return system + history + [{"role": "user", "content": text}]

    def build_prompt(self, text: str) -> tuple[list, list, PromptReport]:
        """(prompt ids, the history kept, report) for a new user message, within the budget."""
        budget = self.max_seq_len - self.settings.max_new_tokens
        if budget < 1:
            raise ValueError(f"ChatSettings.max_new_tokens={self.settings.max_new_tokens} leaves no room "
                             f"for the prompt in this model's max_seq_len={self.max_seq_len}")
        starts = [i for i, m in enumerate(self.history) if m["role"] == "user"]  # turn boundaries
        history, dropped = list(self.history), 0
        ids = self.template.prompt_ids(self._messages(history, text), self.tokenizer)
        # Drop whole oldest turns (a user message and its answer) until the prompt fits.
        while len(ids) > budget and dropped < len(starts):
            dropped += 1
            history = self.history[starts[dropped]:] if dropped < len(starts) else []
            ids = self.template.prompt_ids(self._messages(history, text), self.tokenizer)
        cropped = max(0, len(ids) - budget)
        if cropped:  # even the newest message alone is too long: keep its end, as the original crops
            ids = ids[cropped:]
        kept = sum(m["role"] == "user" for m in history)
        report = PromptReport(len(ids), budget, kept, dropped, cropped, self.receptive_field)
        return ids, history, report

    # --- replying -------------------------------------------------------------------------------
    def _turn_seed(self) -> Optional[int]:
        return None if self.settings.seed is None else self.settings.seed + self.turns

    def send(self, text: str, on_delta: Optional[Callable[[str], None]] = None,
             cancel: Optional[threading.Event] = None) -> str:
        """Answer one user message; returns the whole reply. `on_delta(text)` streams it as it comes."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a chat message must be non-empty text")
        ids, history, report = self.build_prompt(text)
        cb = None if on_delta is None else (lambda _row, d: on_delta(d))
        reply = generate_replies(self.model, self.tokenizer, self.template, [ids], self.settings,
                                 seed=self._turn_seed(), on_delta=cb, cancel=cancel)[0]
        reply.context = report
        self.dropped_turns += report.dropped_turns
        answer = {"role": "assistant", "content": reply.text}
        if reply.note:   # kept for display (the template reads role and content only)
            answer["note"] = reply.note
        self.history = history + [{"role": "user", "content": text}, answer]
        self.turns += 1
        self.last = reply
        return reply.text

    def stream(self, text: str) -> Iterator[str]:
        """Answer one user message, yielding text deltas as tokens arrive (never half a character).
        Closing the iterator early stops generation; the partial answer stays in the history."""
        q: queue.Queue = queue.Queue()
        cancel = threading.Event()
        DONE = object()

        def work():
            try:
                self.send(text, on_delta=q.put, cancel=cancel)
                q.put(DONE)
            except BaseException as e:  # re-raised in the consumer's thread
                q.put(e)

        worker = threading.Thread(target=work, name="mambaft-chat", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()
            worker.join()

    def context_note(self) -> str:
        """One line about what the model can see of this conversation."""
        rf = self.receptive_field
        s = f"{self.name}: max_seq_len {self.max_seq_len} tokens (prompt + up to {self.settings.max_new_tokens} new)"
        if rf is not None:
            s += f"; original architecture: each answer token depends on the last {rf} tokens only"
        return s
