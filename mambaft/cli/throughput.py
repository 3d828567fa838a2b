"""`mambaft throughput`: throughput of `prepare` on N real conversations, per second (mambaft.data.throughput).

    mambaft throughput --n 250000 [--num-proc 2]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mambaft.data.throughput import cpu_seconds, write_conversations


def main(argv=None) -> int:
    from mambaft.config import make_config
    from mambaft.data import prepare as prep

    ap = argparse.ArgumentParser(prog="mambaft throughput", description=__doc__.splitlines()[0])
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
