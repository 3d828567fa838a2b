"""Throughput of `prepare` on N real conversations (offline packages), in conversations per second.

The conversations come from the registry packages (ShareGPT, OLMo train items, Wikipedia pairs EN/FR,
chit-chat, chatterbot), cycled to reach N; each cycled copy gets a numbered first user turn, so the
exact-duplicate filter lets it through and the near-duplicate search has real work to do. They are
written as one `messages` JSONL file and prepared with the conversational settings (max_seq_len
1024). Wall time on a shared machine depends on its load, so CPU time (this process and the
`datasets.map` workers) is reported too.

    mambaft throughput --n 250000 [--num-proc 2]
"""
from __future__ import annotations

import itertools
import json
import resource
from pathlib import Path

SOURCES = {"sharegpt_offline": None, "olmo_qa": 100_000, "wiki_en": None, "wiki_fr": None,
           "chitchat": None, "chatterbot_en": None}


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def write_conversations(path: Path, n: int) -> int:
    from mambaft.data.sources import load_source

    pool = []
    for name, limit in SOURCES.items():
        pool += load_source(name, limit=limit, progress=True).rows
    with path.open("w", encoding="utf-8") as f:
        for i, conv in enumerate(itertools.islice(itertools.cycle(pool), n)):
            msgs = conv["messages"]
            if i >= len(pool) and msgs:  # a cycled copy: make it textually distinct
                msgs = [dict(msgs[0], content=f"({i // len(pool)}) {msgs[0]['content']}"), *msgs[1:]]
            f.write(json.dumps({"id": f"{conv['id']}#{i}", "lang": conv["lang"], "messages": msgs},
                               ensure_ascii=False) + "\n")
    return len(pool)
