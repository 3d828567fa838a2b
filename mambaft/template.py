"""The one chat template: training examples, evaluation prompts and chat turns are all rendered here.

The plan's plain-text format, with a trained end-of-turn token after every assistant answer:

    System: {system}\\n                      (only if there is a system message)
    User: {user}\\n
    Assistant: {answer}<|endoftext|>\\n
    User: ...

Trained tokens (labels != -100) are exactly the answer tokens (" {answer}", leading space included)
and the end token. Everything else, "Assistant:" included, is context. Spans come from the
rendering itself (each segment is tokenized on its own and concatenated), never from searching
strings in token space. The template is saved as `chat_template.json` beside every fine-tuned model
and loaded back by chat and evaluation, so they can never use another format.

    mambaft template        # print a rendered example with trained tokens in [brackets]
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

IGNORE_INDEX = -100   # the label of an untrained position (F.cross_entropy's default ignore_index)
ROLES = ("system", "user", "assistant")
TEMPLATE_FILE = "chat_template.json"

Segment = tuple[Union[str, int], bool]  # (text, or a token id; trained?)


@dataclass(frozen=True)
class ChatTemplate:
    name: str = "user-assistant-v1"
    system_prefix: str = "System: "
    user_prefix: str = "User: "
    assistant_prefix: str = "Assistant:"
    answer_lead: str = " "          # "Assistant: Paris": the space is the first trained token
    turn_separator: str = "\n"
    end_of_turn: str = "<|endoftext|>"  # GPT-2 id 50256; inserted as an id, never parsed from text

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Text that ends an answer even when the end token is missed (the base model never learned it)."""
        return (self.turn_separator + self.user_prefix.rstrip(),)

    def marker_ids(self, tokenizer) -> tuple[int, ...]:
        """Ids of the text that opens the next turn ("\nUser" -> 198, 12982 with GPT-2): generation's
        anti-loop controls leave them alone so a reply can always end (mambaft.generate)."""
        return tuple(dict.fromkeys(t for stop in self.stop_strings for t in tokenizer.encode(stop)))

    def end_id(self, tokenizer) -> int:
        eid = tokenizer.tok.token_to_id(self.end_of_turn) if hasattr(tokenizer, "tok") else None
        return tokenizer.eos_id if eid is None else eid

    # --- rendering ------------------------------------------------------------------------------
    def segments(self, messages: Sequence[dict], end_id: int, train_on: str = "all_assistant",
                 add_generation_prompt: bool = False) -> list[Segment]:
        """Messages -> ordered (text-or-id, trained) segments. `train_on="last_assistant"` trains only
        the final answer. With `add_generation_prompt`, ends with "Assistant:" for the model to continue."""
        if train_on not in ("all_assistant", "last_assistant"):
            raise ValueError(f"train_on={train_on!r}: expected all_assistant or last_assistant")
        last_assistant = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
        out: list[Segment] = []
        for i, m in enumerate(messages):
            role, content = m["role"], m["content"]
            if role == "system":
                out.append((self.system_prefix + content + self.turn_separator, False))
            elif role == "user":
                out.append((self.user_prefix + content + self.turn_separator, False))
            elif role == "assistant":
                trained = train_on == "all_assistant" or i == last_assistant
                out.append((self.assistant_prefix, False))
                out.append((self.answer_lead + content, trained))
                out.append((end_id, trained))
                out.append((self.turn_separator, False))
            else:
                raise ValueError(f"message {i}: role {role!r} is not one of {ROLES}")
        if add_generation_prompt:
            out.append((self.assistant_prefix, False))
        return out

    def render(self, messages: Sequence[dict], tokenizer, train_on: str = "all_assistant"
               ) -> tuple[list[int], list[int]]:
        """Messages -> (input_ids, labels); labels are -100 except on answer tokens and end tokens."""
        ids: list[int] = []
        labels: list[int] = []
        for piece, trained in self.segments(messages, self.end_id(tokenizer), train_on):
            toks = [piece] if isinstance(piece, int) else tokenizer.encode(piece)
            ids.extend(toks)
            labels.extend(toks if trained else [IGNORE_INDEX] * len(toks))
        return ids, labels

    def prompt_ids(self, messages: Sequence[dict], tokenizer) -> list[int]:
        """History ending with a user turn -> ids ending in "Assistant:", ready for generation."""
        if not messages or messages[-1]["role"] != "user":
            raise ValueError("a generation prompt must end with a user message")
        end = self.end_id(tokenizer)
        ids: list[int] = []
        for piece, _ in self.segments(messages, end, add_generation_prompt=True):
            ids.extend([piece] if isinstance(piece, int) else tokenizer.encode(piece))
        return ids

    def prompt_text(self, messages: Sequence[dict]) -> str:
        """The same prompt as text (for display and for models with another tokenizer)."""
        return "".join(p if isinstance(p, str) else self.end_of_turn
                       for p, _ in self.segments(messages, -1, add_generation_prompt=True))

    def clean_reply(self, text: str) -> str:
        """Generated text -> the answer: cut at the first stop string / end marker, strip the lead."""
        for stop in (*self.stop_strings, self.end_of_turn):
            cut = text.find(stop)
            if cut >= 0:
                text = text[:cut]
        return text.strip()

    # --- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ChatTemplate":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"chat template: unknown field(s) {sorted(unknown)}")
        return cls(**d)

    def save(self, directory: Union[str, Path]) -> Path:
        path = Path(directory) / TEMPLATE_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: Union[str, Path]) -> "ChatTemplate":
        path = Path(directory)
        path = path / TEMPLATE_FILE if path.is_dir() else path
        from mambaft.errors import DataError
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(d, dict):
                raise ValueError(f"expected a JSON object, got {type(d).__name__}")
            tpl = cls.from_dict(d)
            bad = [f.name for f in dataclasses.fields(cls) if f.type in ("str", str)
                   and not isinstance(getattr(tpl, f.name), str)]
            if bad:
                raise ValueError(f"field(s) {bad} must be text")
            return tpl
        except (ValueError, TypeError, UnicodeDecodeError, RecursionError) as e:
            # a UserError: `mambaft CMD` says this in one line, never a traceback
            raise DataError(f"{path}: not a usable chat template ({e})") from e


DEFAULT_TEMPLATE = ChatTemplate()


def show_trained(ids: Sequence[int], labels: Sequence[int], tokenizer) -> str:
    """Readable preview: trained tokens inside [brackets], masked ones plain."""
    out, run, run_trained = [], [], None
    for tok, lab in zip(ids, labels):
        trained = lab != IGNORE_INDEX
        if run and trained != run_trained:
            text = tokenizer.decode(run)
            out.append(f"[{text}]" if run_trained else text)
            run = []
        run.append(tok)
        run_trained = trained
    if run:
        text = tokenizer.decode(run)
        out.append(f"[{text}]" if run_trained else text)
    return "".join(out)


def pad_ids(seqs: Sequence[Sequence[int]], value: int, width: int = 0, left: bool = False):
    """Token lists -> a [len(seqs), max(longest, width)] long tensor, each row filled with `value` past
    its end (before its start when `left`). The one padding helper: rows are always masked BY LENGTH
    (labels padded with IGNORE_INDEX, attention masks from the lengths), never by the pad id, since
    GPT-2 has no pad token and pads with its end token, which the template trains."""
    import torch   # here, not at the top: rendering and the template file need no torch

    L = max([width] + [len(s) for s in seqs])
    out = torch.full((len(seqs), L), value, dtype=torch.long)
    for b, s in enumerate(seqs):
        if len(s):   # (an empty row is all padding; out[b, L - 0:] would be the whole row)
            (out[b, L - len(s):] if left else out[b, :len(s)]).copy_(torch.as_tensor(list(s), dtype=torch.long))
    return out

