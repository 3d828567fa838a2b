"""`mambaft stream`: how a reply streams token by token: the deltas of a reply that splits "ça" across
two tokens, up to the stop string (mambaft.chat.text.ReplyDecoder).

    mambaft stream
"""
from __future__ import annotations

import argparse

from mambaft.chat.text import ReplyDecoder
from mambaft.template import DEFAULT_TEMPLATE
from mambaft.tokenizer import load_tokenizer


def main(argv=None) -> int:
    argparse.ArgumentParser(prog="mambaft stream", description=__doc__.splitlines()[0]).parse_args(argv)
    tok = load_tokenizer()
    ids = tok.encode(" Oui, ça va.\nUser: et toi?")
    dec = ReplyDecoder(tok, (*DEFAULT_TEMPLATE.stop_strings, DEFAULT_TEMPLATE.end_of_turn))
    for i in ids:
        delta = dec.push(i)
        print(f"{i:>6} {tok.decode([i])!r:>12} -> delta {delta!r}" + ("   [stop]" if dec.done else ""))
        if dec.done:
            break
    dec.close()
    print("reply:", repr(dec.reply), "stopped by", repr(dec.stopped_by))
    return 0
