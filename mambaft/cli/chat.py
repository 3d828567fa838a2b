"""`mambaft chat --model PATH`: chat with a model in the terminal (mambaft.chat.terminal).

    mambaft chat --model outputs/run/final [--temperature 0.7 --top-k 50 --top-p 0.9 --seed 0]
    echo "Hello" | mambaft chat --model outputs/run/final --temperature 0
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, TextIO

from mambaft.chat.session import ChatSession, ChatSettings
from mambaft.chat.terminal import HELP, run_chat


def build_parser() -> argparse.ArgumentParser:
    d = ChatSettings()
    p = argparse.ArgumentParser(prog="mambaft chat", description=__doc__.splitlines()[0],
                                epilog=HELP)
    p.add_argument("--model", required=True, help="original .pt or mambaft model folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=d.top_k, help="0 = off")
    p.add_argument("--top-p", type=float, default=d.top_p, help="1.0 = off")
    p.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty)
    p.add_argument("--no-repeat-ngram", type=int, default=d.no_repeat_ngram_size)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--min-new-tokens", type=int, default=d.min_new_tokens,
                   help="the end token cannot come before this many tokens (0 = off)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--system", default="", help="a system message kept in every prompt")
    p.add_argument("--no-stats", action="store_true", help="do not print tokens/s and context after replies")
    return p


def main(argv=None, stdin: Optional[TextIO] = None, stdout: Optional[TextIO] = None) -> int:
    a = build_parser().parse_args(argv)
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    try:
        settings = ChatSettings(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                                repetition_penalty=a.repetition_penalty,
                                no_repeat_ngram_size=a.no_repeat_ngram, max_new_tokens=a.max_new_tokens,
                                min_new_tokens=a.min_new_tokens,
                                seed=a.seed, system=a.system)
    except ValueError as e:   # a UserError: run_command prints "mambaft chat: error: ..." in one line
        from mambaft.config import ConfigError
        raise ConfigError(str(e)) from e
    from mambaft.checkpoint import load_checkpoint
    model, info = load_checkpoint(a.model, device=a.device)   # its errors: one line from run_command
    session = ChatSession(model, info.tokenizer, info.template, settings, name=info.path.name)
    stdout.write(f"{info.path} ({info.format}, {info.config.architecture} architecture, step {info.step})\n"
                 f"chat template: {info.template.name} ({info.template_source})\n"
                 f"{session.context_note()}\n{HELP}\n")
    run_chat(session, stdin, stdout, stats=not a.no_stats)
    return 0
