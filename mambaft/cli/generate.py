"""`mambaft generate`: generate text from a prompt (mambaft.generate; greedy unless --temperature).

    mambaft generate --model PATH --prompt "The capital of France is" --new 20
"""
from __future__ import annotations

import argparse

from mambaft.generate import MAX_NEW, check_temperature, generate


def main(argv=None) -> None:
    from mambaft.checkpoint import load_checkpoint

    p = argparse.ArgumentParser(prog="mambaft generate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--new", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.0)
    a = p.parse_args(argv)
    if not 1 <= a.new <= MAX_NEW:
        p.error(f"--new {a.new}: expected 1 to {MAX_NEW:,} new tokens")
    check_temperature(a.temperature)
    model, meta = load_checkpoint(a.model)
    tok = meta.tokenizer
    ids = generate(model, [tok.encode(a.prompt)], a.new, temperature=a.temperature, seed=0)[0]
    print(tok.decode(ids))
