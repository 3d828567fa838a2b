"""`python -m mambaft.bench prepare`: conversations/s through rendering, tokenization and masking.

mambaft: `mambaft.data.render.render_conversations` (all segments of the batch in one Rust
`encode_batch` call, labels -100 except on answers and end tokens, oldest turns dropped to fit), or
`DEFAULT_TEMPLATE.render` per conversation where mambaft.data is not importable (the JSON says which).
original: the user's earlier fine-tune preparation, re-implemented plainly: "User: ...\\nAssistant: ..."
text, one `encode` per conversation, labels = input ids (nothing masked), cut/padded to max_seq_len.

The conversations are synthetic and seeded (English-like words, --turns user/assistant pairs), so
the benchmark needs no download; `--jsonl FILE` ({"messages": [{"role", "content"}, ...]} per line)
measures real data instead.

    python -m mambaft.bench prepare
"""
from __future__ import annotations

import json
import random
import time
import tracemalloc

import torch

WORDS = ("the of and to in is that it for was on are as with his they at be this from have or by "
         "one had not but what all were when we there can an your which their said if do will each "
         "about how up out them then she many some so these would other into has more her two like "
         "him see time could no make than first been its who now people my made over did down only "
         "way find use may water long little very after words called just where most know get through "
         "back much before go good new write our used me man too any day same right look think also "
         "around another came come work three word must because does part even place well such here "
         "take why things help put years different away again off went old number great tell men say "
         "small every found still between name should home big give air line set own under read last "
         "never us left end along while might next sound below saw something thought both few those "
         "always looked show large often together asked house world going want school important until "
         "form food keep children feet land side without boy once animals life enough took sometimes "
         "four head above kind began almost live page got earth need far hand high year mother light "
         "country father let night following picture being study second eyes soon times story boys "
         "since white days paper hard near sentence better best across during today others however "
         "sure means knew its try told young miles sun ways thing whole hear example heard several "
         "change answer room sea against top turned learn point city play toward five using himself "
         "usually Paris France capital question Python function model training data").split()


def add_args(p) -> None:
    p.add_argument("--conversations", type=int, default=2000, help="conversations per timed run")
    p.add_argument("--turns", type=int, default=2, help="user/assistant pairs per synthetic conversation")
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--jsonl", default=None, help="real conversations instead of synthetic ones")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)


def variants(args) -> list:
    from .harness import Variant
    return ([Variant("mambaft")] if args.impl in ("mambaft", "both") else []) + \
        ([Variant("original")] if args.impl in ("original", "both") else [])


def cases(args) -> list:
    return [{"conversations": args.conversations, "turns": args.turns, "max_seq_len": args.max_seq_len}]


def synthetic_conversations(n: int, turns: int, seed: int) -> list:
    """n message lists of `turns` user/assistant pairs (user 6-30 words, assistant 15-120 words)."""
    rng = random.Random(seed)

    def sentence(lo: int, hi: int) -> str:
        words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
        text = " ".join(words)
        return text[0].upper() + text[1:] + rng.choice([".", "?", "!", "."])

    convs = []
    for _ in range(n):
        msgs = []
        for _ in range(turns):
            msgs.append({"role": "user", "content": sentence(6, 30)})
            msgs.append({"role": "assistant", "content": " ".join(sentence(5, 40) for _ in range(rng.randint(1, 3)))})
        convs.append(msgs)
    return convs


def load_jsonl(path: str, n: int) -> list:
    convs = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                convs.append(json.loads(line)["messages"])
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{path}:{i}: expected a JSON object with 'messages' ({e})") from e
            if len(convs) >= n:
                break
    if not convs:
        raise ValueError(f"{path}: no conversations")
    return convs


def original_prepare(convs: list, tok, max_seq_len: int) -> list:
    """The earlier attempt: plain text, one encode, labels = ids (no mask), pad with the end token.
    Rows: (input_ids, labels, tokens before padding)."""
    rows = []
    for msgs in convs:
        text = "".join(("User: " if m["role"] == "user" else "Assistant: ") + m["content"] + "\n"
                       for m in msgs if m["role"] in ("user", "assistant"))
        ids = tok.encode(text)[:max_seq_len]
        n = len(ids)
        ids = ids + [tok.eos_id] * (max_seq_len - n)
        rows.append((ids, list(ids), n))
    return rows


def mambaft_prepare(convs: list, tok, max_seq_len: int):
    """(rows, which renderer ran)."""
    try:
        from mambaft.data.render import render_conversations
    except ImportError:
        from mambaft.template import DEFAULT_TEMPLATE
        rows = []
        for msgs in convs:
            ids, labels = DEFAULT_TEMPLATE.render(msgs, tok)
            rows.append((ids[:max_seq_len], labels[:max_seq_len], min(len(ids), max_seq_len)))
        return rows, "mambaft.template.DEFAULT_TEMPLATE.render"
    out = render_conversations(convs, tok, "all_assistant", max_seq_len)
    return ([(r.input_ids, r.labels, len(r.input_ids)) for r in out if not r.too_long],
            "mambaft.data.render.render_conversations")


class PrepareRunner:
    def __init__(self, spec: dict):
        from mambaft import runtime
        from mambaft.tokenizer import load_tokenizer
        a = spec["args"]
        runtime.set_threads(a["threads"])
        self.impl, self.cases = spec["impl"], spec["cases"]
        self.tok = load_tokenizer()
        c = self.cases[0]
        self.convs = (load_jsonl(a["jsonl"], c["conversations"]) if a.get("jsonl")
                      else synthetic_conversations(c["conversations"], c["turns"], a["seed"]))
        self.info = {"device": "cpu", "threads": torch.get_num_threads(), "precision": None}

    def _do(self):
        c = self.cases[0]
        if self.impl == "mambaft":
            rows, renderer = mambaft_prepare(self.convs, self.tok, c["max_seq_len"])
        else:
            rows, renderer = original_prepare(self.convs, self.tok, c["max_seq_len"]), "original (plain text)"
        return rows, renderer

    def run(self, case_index: int) -> dict:
        t0 = time.perf_counter()
        rows, renderer = self._do()
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "rows": len(rows), "tokens": sum(r[2] for r in rows),
                "row_tokens": sum(len(r[0]) for r in rows),
                "trained": sum(sum(1 for x in r[1] if x != -100) for r in rows), "renderer": renderer}

    def mem(self, case_index: int) -> int:
        """Peak Python heap during one run (tracemalloc; the Rust tokenizer's own buffers excluded)."""
        tracemalloc.start()
        self._do()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak


def summarize(m, args, peaks: dict) -> dict:
    c, last = m.case, m.runs[-1]
    return {"bench": "prepare", "impl": m.variant.impl,
            "conversations_per_s": c["conversations"] / m.median_s,
            "tokens_per_s": last["tokens"] / m.median_s,          # conversation tokens, no padding
            "peak_mem_mb": m.peak_mem_mb, "peak_rss_mb": m.peak_rss_mb,
            "peak_mem_method": "Python heap during one run (tracemalloc)",
            "conversations": c["conversations"], "turns": c["turns"], "max_seq_len": c["max_seq_len"],
            "source": args.jsonl or "synthetic", "rows": last["rows"], "tokens": last["tokens"],
            "row_tokens": last["row_tokens"],                     # with the original's padding
            "trained_tokens": last["trained"], "renderer": last["renderer"],
            "repeats": len(m.runs), "warmup": args.warmup, "median_s": m.median_s,
            "run_s": [round(s, 4) for s in m.seconds], "threads": m.info.get("threads"),
            "malloc": m.info.get("malloc"),
            "omp_wait_policy": m.info.get("omp_wait_policy")}
