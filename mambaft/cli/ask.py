"""`mambaft ask`: answer one message with a model's chat template, streamed (mambaft.chat.session).

    mambaft ask --model PATH "What is the capital of France?"
"""
from __future__ import annotations

import argparse

from mambaft.chat.session import ChatSession, ChatSettings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mambaft ask", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="original .pt or mambaft model folder")
    p.add_argument("message", nargs="+")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-new-tokens", type=int, default=128)
    a = p.parse_args(argv)
    session = ChatSession.load(a.model, ChatSettings(temperature=a.temperature,
                                                     max_new_tokens=a.max_new_tokens))
    for delta in session.stream(" ".join(a.message)):
        print(delta, end="", flush=True)
    print(f"\n[{session.last.stats()}; {session.last.context.note()}]")
    return 0
