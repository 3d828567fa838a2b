"""`mambaft chat --model PATH`: chat with a model in the terminal (what demo_chat.py meant to be).

Differences from the user's demo_chat.py, each a reason its answers looked worse than the model:
  * eval mode (dropout off; demo_chat sampled with dropout 0.1 active),
  * the model's own chat template (`chat_template.json` beside the weights), the same one training used,
  * the reply stops at the end token or at the next "\\nUser:" turn instead of running to max length,
  * streaming, multi-turn history within max_seq_len, and settings flags.

    mambaft chat --model outputs/run/final [--temperature 0.7 --top-k 50 --top-p 0.9 --seed 0]
    echo "Hello" | mambaft chat --model outputs/run/final --temperature 0

Commands inside the chat: /reset, /quit (or /exit, Ctrl-D), /settings, /set NAME=VALUE, /help.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import TextIO

from mambaft.chat.session import ChatSession, ChatSettings
from mambaft.errors import UserError

HELP = ("commands: /reset (forget the conversation), /quit or /exit, /settings (show), "
        "/set NAME=VALUE (e.g. /set temperature=0.3), /help")


def _parse_value(name: str, raw: str):
    field = {f.name: f for f in dataclasses.fields(ChatSettings)}.get(name)
    if field is None:
        raise ValueError(f"unknown setting {name!r}; settings: "
                         f"{', '.join(f.name for f in dataclasses.fields(ChatSettings))}")
    if name == "seed":
        return None if raw.lower() in ("none", "") else int(raw)
    if name == "system":
        return raw
    return int(raw) if field.type in ("int", int) else float(raw)


def _check_fits(s: ChatSettings, session: ChatSession) -> None:
    """A setting is checked when it is set, not when the next reply fails with it: max_new_tokens
    must leave the prompt some of the model's max_seq_len positions."""
    limit = getattr(session, "max_seq_len", None)
    if isinstance(limit, int) and s.max_new_tokens >= limit:
        raise ValueError(f"max_new_tokens={s.max_new_tokens}: this model sees {limit} positions, so at most "
                         f"{limit - 1} (the prompt needs at least one)")


def show_settings(s: ChatSettings) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(s).items())


def run_chat(session: ChatSession, stdin: TextIO, stdout: TextIO, stats: bool = True) -> int:
    """The read-answer loop. Returns the number of replies given."""
    def write(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    if stdin is None or getattr(stdin, "closed", False):
        # `mambaft chat <&-` or a service without stdin: nothing can ever be read
        raise UserError("no input to read: stdin is closed. Run chat in a terminal, or pipe the messages "
                        "in (echo Hello | mambaft chat --model PATH)")
    interactive = stdin is sys.stdin and stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (arrow keys and history for input())
        except ImportError:  # pragma: no cover - Windows
            pass
    replies = 0
    while True:
        try:
            if interactive:
                try:
                    line = input("You: ") + "\n"
                except EOFError:
                    line = ""
            else:
                write("You: ")
                line = stdin.readline()
        except KeyboardInterrupt:
            write("\n")
            break
        if not line:            # end of input (Ctrl-D, or the end of a piped file)
            write("\n")
            break
        text = line.strip()
        if not stdin.isatty():  # piped input is not echoed by a terminal: echo it for a readable log
            write(text + "\n")
        if not text:
            continue
        if text.startswith("/"):
            cmd, _, arg = text.partition(" ")
            if cmd in ("/quit", "/exit"):
                break
            if cmd == "/reset":
                session.reset()
                write("(history cleared)\n")
            elif cmd == "/settings":
                write(show_settings(session.settings) + "\n")
            elif cmd == "/set":
                name, eq, raw = arg.partition("=")
                try:
                    if not eq:
                        raise ValueError("usage: /set NAME=VALUE")
                    new = session.settings.replace(**{name.strip(): _parse_value(name.strip(), raw.strip())})
                    _check_fits(new, session)
                    session.settings = new
                    write(show_settings(session.settings) + "\n")
                except ValueError as e:
                    write(f"error: {e}\n")
            elif cmd == "/help":
                write(HELP + "\n")
            else:
                write(f"unknown command {cmd!r}; {HELP}\n")
            continue
        write("Assistant: ")
        try:
            session.send(text, on_delta=write)
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat
            write(" [interrupted]\n")
            continue
        except ValueError as e:    # a message or setting this model cannot take: say so, keep the chat
            write(f"\nerror: {e}\n")
            continue
        replies += 1
        note = session.last.note             # an empty reply says so instead of a bare "Assistant:"
        write((" " if note and session.last.text else "") + note + "\n")
        if stats:
            r = session.last
            write(f"  [{r.stats()}; {r.context.note()}]\n")
    return replies
