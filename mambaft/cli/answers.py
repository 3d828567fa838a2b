"""`mambaft answers`: several models answer fixed prompts, greedily, in one table (mambaft.chat.answers).

    mambaft answers --model base=PATH --model tuned=PATH "What is 2+2?" "What is the capital of France?"
    mambaft answers --model PATH "What is the capital of France?"
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mambaft.chat.answers import answer_table
from mambaft.chat.session import ChatSettings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mambaft answers", description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("prompts", nargs="+")
    p.add_argument("--max-new-tokens", type=int, default=96)
    a = p.parse_args(argv)
    models = {}
    for spec in a.model:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name, spec
        models[name] = path
    print(answer_table(models, a.prompts, ChatSettings(temperature=0.0, max_new_tokens=a.max_new_tokens)))
    return 0
