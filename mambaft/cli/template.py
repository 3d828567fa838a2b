"""`mambaft template`: a conversation rendered with the chat template, trained tokens in [brackets] (mambaft.template).

    mambaft template
"""
from __future__ import annotations

import argparse

from mambaft.template import DEFAULT_TEMPLATE, show_trained
from mambaft.tokenizer import load_tokenizer


def main(argv=None) -> int:
    argparse.ArgumentParser(prog="mambaft template", description=__doc__.splitlines()[0]).parse_args(argv)
    tok = load_tokenizer()
    msgs = [{"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"},
            {"role": "assistant", "content": "Rome."}]
    ids, labels = DEFAULT_TEMPLATE.render(msgs, tok)
    print(show_trained(ids, labels, tok))
    return 0
