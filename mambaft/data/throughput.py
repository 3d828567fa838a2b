"""Throughput of `prepare` on N real conversations (offline packages), in conversations per second.

The conversations come from the registry packages (ShareGPT, OLMo train items, Wikipedia pairs EN/FR,
chit-chat, chatterbot), cycled to reach N; each cycled copy gets a numbered first user turn, so the
exact-duplicate filter lets it through and the near-duplicate search has real work to do. They are
written as one `messages` JSONL file and prepared with the conversational settings (max_seq_len
1024). Wall time on a shared machine depends on its load, so CPU time (this process and the
`datasets.map` workers) is reported too.

    python -m mambaft.data.throughput --n 250000 [--num-proc 2]
"""
from __future__ import annotations

import argparse
import itertools
import json
import resource
import sys
import tempfile
import time
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


def main(argv=None) -> int:
    from mambaft.config import make_config
    from mambaft.data import prepare as prep

    ap = argparse.ArgumentParser(prog="python -m mambaft.data.throughput")
    ap.add_argument("--n", type=int, default=250_000)
    ap.add_argument("--num-proc", type=int, default=None, help="datasets.map workers (default: all cores)")
    ap.add_argument("--keep", default=None, help="write the prepared dataset here (default: a temp folder)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "conversations.jsonl"
        unique = write_conversations(src, a.n)
        cfg = make_config("conversational", data_mode="offline", offline_sources={"messages": 1.0})
        if a.num_proc is not None:
            prep.MAX_PROC = a.num_proc
        c0, t0 = cpu_seconds(), time.perf_counter()
        stats = prep.prepare(cfg, a.keep or Path(tmp) / "out", sources={"messages": str(src)}, progress=True)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    s = stats["sources"]["messages"]
    result = {"conversations": a.n, "unique_in_pool": unique, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
              "conversations_per_s_wall": round(a.n / wall, 1), "conversations_per_cpu_s": round(a.n / cpu, 1),
              "stage_seconds": stats["seconds"], "render_processes": stats["render_processes"],
              "rows_out": stats["totals"]["train_rows"] + stats["totals"]["val_rows"],
              "tokens_out": stats["totals"]["train_tokens"] + stats["totals"]["val_tokens"],
              "near_duplicates": s["near_duplicates"], "exact_duplicates": s["exact_duplicates"]}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
