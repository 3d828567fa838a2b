"""`mambaft probes`: print the success probes and their rules, or run them on a model (mambaft.evaluate.probes).

    mambaft probes                 # print every probe and its rule
    mambaft probes --model PATH    # run them greedily and print pass/fail
"""
from __future__ import annotations

import argparse
from typing import Optional

from mambaft.evaluate.probes import DEFAULT_MAX_NEW_TOKENS, PROBES, run_probes, summarize_probes


def main(argv: Optional[list] = None) -> None:
    p = argparse.ArgumentParser(prog="mambaft probes", description=__doc__.splitlines()[0])
    p.add_argument("--model")
    p.add_argument("--new", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    a = p.parse_args(argv)
    if not a.model:
        for pr in PROBES:
            print(f"[{pr.id}] {pr.question}\n    rule: {pr.rule}")
        return
    from mambaft.checkpoint import load_checkpoint
    model, info = load_checkpoint(a.model)
    results = run_probes(model, info.tokenizer, info.template, max_new_tokens=a.new)
    for r in results:
        print(f"[{'PASS' if r['passed'] else 'fail'}] {r['id']}: {r['answer'][:100]!r} ({r['stopped_by']})")
    print(summarize_probes(results))
