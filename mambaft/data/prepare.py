"""Build the training dataset of a strategy: load, clean, render, deduplicate, split, mix, save.

    mambaft prepare --strategy smoke --out outputs/data_smoke
    mambaft prepare --strategy quick --source alpaca=./alpaca_data.json --out outputs/data_quick
    mambaft prepare --strategy specialized --set domain=code --out outputs/data_code

Output (`out_dir`): a `datasets.DatasetDict` (save_to_disk) with splits train and val, columns
id, conversation_id, source, lang, kind ("chat" | "text"), messages, input_ids, labels, n_tokens,
n_trained, dropped_messages (val also `heldout`: "selection" | "test", mambaft.data.heldout); plus stats.json, preview.txt (trained tokens in [brackets]) and
chat_template.json. "specialized" writes phase1/ and phase2/, each like that, and a stats.json
holding both. Rows never exceed cfg.max_seq_len.

The output appears atomically: everything is written into a temp folder beside `out_dir`
(`.tmp-NAME-PID`), fsynced, marked complete (prepare_complete.json, also in each phase folder) and
swapped into place (mambaft.durable.replace_dir). A killed `prepare` leaves the previous output
intact, or nothing; `load_prepared` refuses a folder without the marker.

Where the data comes from (cfg.data_mode): "offline" = cfg.offline_sources (registry packages);
"hub" = cfg.sources from the hub; "auto" = the hub when it answers a quick request, else the offline
sources, with a printed note. `--source NAME=PATH_OR_HUB_ID` overrides one source in any mode (a local
file is always used; a name not in the config is added with weight 1).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np

from mambaft import durable
from mambaft.data import filters, heldout, mix
from mambaft.data.planner import plan_budget
from mambaft.data.render import pack_text, render_batch
from mambaft.data.text_chat import text_conversations
from mambaft.data.schema import BadRows
from mambaft.data.sources import SOURCES, check_override, hub_reachable, load_source
from mambaft.errors import DataError
from mambaft.faults import inject as fault_inject
from mambaft.template import DEFAULT_TEMPLATE, show_trained

PARALLEL_MIN_ROWS = 20_000     # below this, worker start-up (~1-2 s each) costs more than it saves
MAX_PROC = 8                   # datasets.map workers at most (each holds a tokenizer and a shard)
RENDER_BATCH = 1000
PREVIEW_ROWS = 12
COMPLETE_MARKER = "prepare_complete.json"   # written last: a folder without it is not a dataset yet
REPLAY_SOURCE = "phase1_replay"   # the source name phase 2 gives the phase-1 rows it replays


def _features():
    from datasets import Features, Value
    return Features({
        "id": Value("string"), "conversation_id": Value("string"), "source": Value("string"),
        "lang": Value("string"), "kind": Value("string"),
        "messages": [{"role": Value("string"), "content": Value("string")}],
        "input_ids": [Value("int32")], "labels": [Value("int32")],
        "n_tokens": Value("int32"), "n_trained": Value("int32"), "dropped_messages": Value("int32"),
    })


def _col(ds, name: str) -> np.ndarray:
    """One column as a numpy array in one Arrow call (index mapping respected). Iterating a
    `datasets` Column instead costs ~80 us per row: 17 s for 200k rows."""
    if len(ds) == 0:
        return np.array([])
    return ds.select_columns([name]).with_format("arrow")[:][name].to_numpy(zero_copy_only=False)


def _list_col(ds, name: str, width: int) -> np.ndarray:
    import pyarrow.compute as pc
    return pc.list_flatten(ds.select_columns([name]).with_format("arrow")[:][name]).to_numpy().reshape(-1, width)


# "[prepare] ..." lines: the CLI shows them on stderr (mambaft.cli.main), a course notebook as plain text
# (mambaft.course.setup_notebook); WARNING lines at level WARNING.
log = logging.getLogger(__name__)


def _say(progress: bool, msg: str) -> None:
    if progress:
        (log.warning if msg.startswith("WARNING: ") else log.info)(f"[prepare] {msg}")


def resolve_sources(hub: dict, offline: dict, overrides: dict, data_mode: str, progress: bool = True,
                    check_hub=hub_reachable) -> tuple[str, dict]:
    """-> (mode, {name: (weight, override or None)}). See the module docstring for the rules."""
    for name, value in overrides.items():
        if name not in SOURCES:
            raise DataError(f"--source {name}=...: unknown source (known: {', '.join(sorted(SOURCES))})")
        check_override(name, value)
    local = {n: v for n, v in overrides.items() if Path(v).exists()}

    def weight(n):
        return hub.get(n, offline.get(n, 1.0))

    def with_overrides(names: dict, only_local: bool) -> dict:
        chosen = {n: (w, overrides.get(n)) for n, w in names.items()}
        for n, v in (local if only_local else overrides).items():
            chosen[n] = (names[n] if n in names else weight(n), v)
        return chosen

    if data_mode == "offline":
        return "offline", with_overrides(offline, only_local=False)
    chosen = with_overrides(hub, only_local=False)
    needs_hub = [n for n, (_, o) in chosen.items()
                 if (o is None or not Path(o).exists()) and SOURCES[n].origin.startswith("hub:")]
    if not needs_hub:
        return "local", chosen
    if data_mode == "hub" or check_hub():
        return "hub", chosen
    _say(True, f"NOTE: the hub did not answer; {', '.join(needs_hub)} cannot be downloaded. Using the offline "
               f"sources instead: {', '.join(offline)}" + (f" (+ local {', '.join(local)})" if local else "")
               + ". Set data_mode=offline to skip this check.")
    return "offline (hub unreachable)", with_overrides(offline, only_local=True)


def _pct(values, q) -> int:
    return int(np.percentile(values, q)) if len(values) else 0


def _source_stats(kind: str, origin: str, license: str, synthetic: bool, weight: float, loaded: int) -> dict:
    """A source's entry in stats.json "sources": where it came from, then counters the steps below
    fill in as its rows are dropped, trimmed or capped."""
    return {"kind": kind, "origin": origin, "license": license, "synthetic": synthetic, "weight": weight,
            "loaded": loaded, "filtered": Counter(), "trimmed": 0, "exact_duplicates": 0, "near_duplicates": 0,
            "too_long": 0, "long_reply": 0, "truncated": 0, "capped": 0}


@dataclass
class _Loaded:
    """What loading a phase's sources gives the later steps."""
    per: dict = field(default_factory=dict)             # source name -> its stats entry (_source_stats)
    convs: list = field(default_factory=list)           # cleaned conversations, exact duplicates removed
    text_rows: dict = field(default_factory=dict)       # plain-text source -> {"train": rows, "val": rows}
    text_chat_names: set = field(default_factory=set)   # plain-text sources turned into conversations
    bad: BadRows = field(default_factory=BadRows)       # malformed input rows, counted per source


def _load_sources(cfg, chosen: dict, tok, *, languages, text_as_chat: bool, progress: bool, label: str) -> _Loaded:
    """Step 1, load and clean: read each chosen source (a margin above the cap), pass its conversations
    through the filters and exact deduplication (the first source in `chosen` keeps a shared
    conversation), and split plain text by document into packed train/val rows. `text_as_chat`:
    plain text becomes "continue this text" conversations (mambaft.data.text_chat) instead."""
    cap = cfg.max_examples_per_source
    got = _Loaded()
    seen_exact: dict[str, str] = {}
    for name, (weight, override) in chosen.items():
        t0 = time.perf_counter()
        spec = SOURCES[name]
        # Load a margin above the cap: filters and deduplication remove some rows before capping.
        limit = None if cap is None else (cap * 4 if spec.kind == "text" else cap * 2 + 50)
        loaded = load_source(name, override, limit=limit, bad=got.bad, progress=progress)
        if not loaded.rows:
            bad = got.bad
            raise DataError(f"source {name}: no {'documents' if loaded.kind == 'text' else 'conversations'} in "
                            f"{loaded.origin}" + (f" ({bad.counts[name]} malformed row(s), e.g. "
                                                  f"{'; '.join(bad.examples[name][:2])})" if bad.counts.get(name) else
                                                  " (an empty file?)"))
        s = got.per[name] = _source_stats(loaded.kind, loaded.origin, loaded.license, loaded.synthetic, weight,
                                          len(loaded.rows))
        if loaded.kind == "text" and text_as_chat:
            s["kind"], s["from_text"] = "chat", True   # trained like any conversation from here on
            got.text_chat_names.add(name)
            loaded.rows = text_conversations(loaded.rows, name, spec.lang)
            s["loaded"] = len(loaded.rows)               # conversations, as for the chat sources
        if s["kind"] == "text":
            got.text_rows[name] = _pack_documents(cfg, loaded.rows, tok, name)
        else:
            got.convs += _clean_conversations(loaded.rows, languages, s, seen_exact, name)
        _say(progress, f"{label}{name}: {len(loaded.rows):,} {'documents' if loaded.kind == 'text' else 'conversations'}"
                       f" from {loaded.origin} ({time.perf_counter() - t0:.1f} s)")
    return got


def _pack_documents(cfg, docs: list, tok, name: str) -> dict:
    """A plain-text source's documents -> {"train": rows, "val": rows} of packed text. Split by
    document (a seeded hash of its id), so no document sits on both sides."""
    is_val = np.array([mix._unit(cfg.seed, d["id"]) < cfg.val_fraction for d in docs], dtype=bool)
    return {"train": pack_text([d for d, v in zip(docs, is_val) if not v], tok, cfg.max_seq_len, name),
            "val": pack_text([d for d, v in zip(docs, is_val) if v], tok, cfg.max_seq_len, name)}


def _clean_conversations(convs: list, languages, s: dict, seen_exact: dict, name: str) -> list:
    """The conversations that pass the filters (mambaft.data.filters) and are not an exact copy of
    one already kept (`seen_exact`, shared by all sources of the phase); counts the rest in `s`."""
    kept = []
    for conv in convs:
        clean, reason = filters.clean_conversation(conv, languages)
        if clean is None:
            s["filtered"][reason] += 1
            continue
        s["trimmed"] += reason == "trimmed"
        key = filters.exact_key(clean)
        if key in seen_exact:
            s["exact_duplicates"] += 1
            continue
        seen_exact[key] = name
        kept.append({**clean, "kind": "chat"})
    return kept


def _render(cfg, convs: list, tok, label: str):
    """Step 2, render: conversations -> input_ids and labels (mambaft.data.render), in batches of
    RENDER_BATCH, in parallel processes from PARALLEL_MIN_ROWS rows. Returns (the table, with
    render's helper columns too_long/longest_reply/minhash, and the processes used: None = this one)."""
    from datasets import Dataset

    chat = Dataset.from_list(convs, features=_features_without_tokens(_features()))
    n_proc = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, MAX_PROC)
    n_proc = n_proc if len(chat) >= PARALLEL_MIN_ROWS and n_proc > 1 else None
    fn = partial(render_batch, tok=tok, train_on=cfg.train_on, max_seq_len=cfg.max_seq_len)
    if len(chat):
        chat = chat.map(fn, batched=True, batch_size=RENDER_BATCH, num_proc=n_proc,
                        desc=f"{label}render", load_from_cache_file=False)
    return chat, n_proc


def _drop_cap_split(cfg, chat, per: dict):
    """Step 3: drop rendered rows too long for max_seq_len, with a reply over max_reply_tokens, or a
    near duplicate of another (counted per source in `per`); cap each chat source at
    max_examples_per_source (a seeded random choice); split by conversation into train and val.
    Returns (the table in the final features, {chat source: kept row indices}, is_val per row)."""
    n = len(chat)
    src = _col(chat, "source") if n else np.array([], dtype=str)
    keep = np.ones(n, dtype=bool)
    if n:
        too_long = _col(chat, "too_long").astype(bool)
        n_tok = _col(chat, "n_tokens")
        twin = filters.near_duplicates(_list_col(chat, "minhash", filters.NUM_PERM).astype(np.uint32),
                                       eligible=(n_tok >= filters.NEAR_MIN_TOKENS) & ~too_long)
        long_reply = (np.zeros(n, dtype=bool) if cfg.max_reply_tokens is None
                      else _col(chat, "longest_reply") > cfg.max_reply_tokens)
        keep = ~too_long & ~long_reply & (twin < 0)
        cut = _col(chat, "dropped_messages") > 0
        for name in per:
            m = src == name
            per[name]["too_long"] = int((too_long & m).sum())
            per[name]["long_reply"] = int((long_reply & ~too_long & m).sum())
            per[name]["near_duplicates"] = int(((twin >= 0) & m).sum())
            per[name]["truncated"] = int((cut & keep & m).sum())   # unique rows that lost old turns
        chat = chat.remove_columns(["too_long", "longest_reply", "minhash"]).cast(_features())
    chat_idx: dict[str, np.ndarray] = {name: np.nonzero(keep & (src == name))[0] for name in per
                                       if per[name]["kind"] == "chat"}
    cap = cfg.max_examples_per_source
    if cap is not None:
        for name, idx in chat_idx.items():
            if len(idx) > cap:
                rng = np.random.default_rng(int(mix._unit(cfg.seed, "cap:" + name) * 2**32))
                chat_idx[name] = np.sort(rng.choice(idx, size=cap, replace=False))
                per[name]["capped"] = len(idx) - cap
    conv_ids = _col(chat, "conversation_id").tolist() if n else []
    is_val = mix.split_by_conversation(conv_ids, cfg.val_fraction, cfg.seed) if n else np.zeros(0, bool)
    return chat, chat_idx, is_val


def _append_text_and_replay(cfg, chat, text_rows: dict, per: dict, replay, label: str):
    """Step 4: the plain-text rows (each source's train rows capped) and phase 1's replayed rows go
    below the chat rows in one table, so one index list can select from all of them.
    Returns (the table, {text source: {"train": indices, "val": indices}}, replayed row indices)."""
    from datasets import Dataset, concatenate_datasets

    cap = cfg.max_examples_per_source
    text_tables, offset = [], len(chat)
    text_idx: dict[str, dict] = {}
    for name, rows in text_rows.items():
        tr, va = rows["train"], rows["val"]
        if cap is not None and len(tr) > cap:
            per[name]["capped"] = len(tr) - cap
            tr = tr[:cap]
        table = Dataset.from_list(tr + va, features=_features()) if tr or va else None
        if table is not None:
            text_tables.append(table)
        text_idx[name] = {"train": np.arange(offset, offset + len(tr)),
                          "val": np.arange(offset + len(tr), offset + len(tr) + len(va))}
        offset += len(tr) + len(va)
    replay_idx = []
    if replay is not None:
        rows, share = replay
        if len(rows) and share > 0:
            replay_table = rows.map(lambda r: {"source": REPLAY_SOURCE}, desc=f"{label}replay")
            text_tables.append(replay_table)
            replay_idx = list(range(offset, offset + len(replay_table)))
            per[REPLAY_SOURCE] = _source_stats("chat", "the previous phase's training rows",
                                               "as the previous phase's sources", False, share, len(replay_table))
    full = concatenate_datasets([chat, *text_tables]) if text_tables else chat
    return full, text_idx, replay_idx


def _mix_chat(cfg, per: dict, chat_idx: dict, is_val: np.ndarray, text_chat_names: set):
    """Step 5a: each chat source's train and val rows, repeated or subsampled by its weight
    (mix.weighted_indices; val rows never repeat). Returns (train, val, {source: (unique train,
    unique val)}, the plain-text sources turned into conversations: {name: {"train", "val"}}, sized
    with the other plain text in step 5b)."""
    train, val, uniq, text_chat_idx = [], [], {}, {}
    for name, idx in chat_idx.items():
        tr = idx[~is_val[idx]].tolist()
        va = idx[is_val[idx]].tolist()
        if name in text_chat_names:
            text_chat_idx[name] = {"train": np.array(tr, dtype=np.int64), "val": np.array(va, dtype=np.int64)}
            continue
        w = per[name]["weight"]
        uniq[name] = (len(tr), len(va))
        train += mix.weighted_indices(tr, w, cfg.seed, name)
        val += mix.weighted_indices(va, w, cfg.seed, "val:" + name, allow_repeat=False)
    return train, val, uniq, text_chat_idx


def _mix_text(cfg, per: dict, text_idx: dict, n_chat_train: int, text_fraction: Optional[float], uniq: dict):
    """Step 5b: the plain-text sources' rows. With `text_fraction` (and chat rows to size against)
    they make up that share of the train rows, split among the sources by weight, and val in
    proportion; otherwise each source is weighted like a chat source. Returns (train, val)."""
    train, val = [], []
    text_w = {nm: per[nm]["weight"] for nm in text_idx}
    for name, parts in text_idx.items():
        tr, va = parts["train"].tolist(), parts["val"].tolist()
        uniq[name] = (len(tr), len(va))
        if text_fraction is not None and n_chat_train:
            target = mix.text_rows_needed(n_chat_train, text_fraction) * text_w[name] / max(sum(text_w.values()), 1e-9)
            train += mix.resize(tr, int(round(target)), cfg.seed, name)
            val += mix.resize(va, int(round(len(va) * min(1.0, target / max(len(tr), 1)))), cfg.seed, "val:" + name)
        else:
            train += mix.weighted_indices(tr, text_w[name], cfg.seed, name)
            val += mix.weighted_indices(va, text_w[name], cfg.seed, "val:" + name, allow_repeat=False)
    return train, val


def _mix(cfg, got: _Loaded, chat_idx: dict, is_val: np.ndarray, text_idx: dict, replay_idx: list, replay,
         text_fraction: Optional[float], progress: bool, label: str):
    """Step 5, weights -> index lists: chat rows (5a), plain text (5b), then phase 1's replayed rows
    at their share. Returns (train indices, shuffled; val indices, sorted; {source: (unique train,
    unique val)})."""
    train, val, uniq, text_chat_idx = _mix_chat(cfg, got.per, chat_idx, is_val, got.text_chat_names)
    text_idx = {**text_idx, **text_chat_idx}
    text_train, text_val = _mix_text(cfg, got.per, text_idx, len(train), text_fraction, uniq)
    train, val = train + text_train, val + text_val
    if text_fraction and not text_idx:
        _say(progress, f"{label}NOTE: phase2_text_fraction={text_fraction} but no plain-text source is configured")
    if replay_idx:
        # R replayed rows make up `share` of the train rows: R / (R + N) = share
        n_replay = mix.text_rows_needed(len(train), replay[1])
        uniq[REPLAY_SOURCE] = (len(replay_idx), 0)
        train += mix.resize(replay_idx, n_replay, cfg.seed, REPLAY_SOURCE)
    return mix.shuffled(train, cfg.seed), sorted(val), uniq


def _save_splits(full, train: list, val: list, out_dir: Path, seed: int):
    """Step 6: the DatasetDict (train, val) selected from `full`, saved into `out_dir`. Each val row
    carries its held-out role (column `heldout`: "selection" picks the checkpoint, "test" gives the
    reported numbers; mambaft.data.heldout), fixed here by the seed that made the split."""
    from datasets import DatasetDict

    out_dir.mkdir(parents=True, exist_ok=True)
    val_ds = full.select(val)
    val_ds = val_ds.add_column(heldout.COLUMN, heldout.assign_roles(
        _col(val_ds, "conversation_id").tolist(), _col(val_ds, "source").tolist(), seed))
    dd = DatasetDict({"train": full.select(train), "val": val_ds})
    # Explicit shard counts: datasets writes no shard at all for an empty split (val_fraction=0) and
    # then cannot load it back. ~500 MB shards: input_ids + labels as int32 = 8 bytes per token.
    n_bytes = 8 * int(_col(full, "n_tokens").sum()) if len(full) else 0
    dd.save_to_disk(str(out_dir), num_shards={"train": max(1, n_bytes // 500_000_000 + 1), "val": 1})
    return dd


def _empty(got: _Loaded, label: str, stage: str) -> DataError:
    """Zero training rows is an error, never a 0-row dataset: say what each source lost, and where."""
    parts = []
    for name, p in got.per.items():
        lost = {**dict(p.get("filtered") or {}),
                **{k: p[k] for k in ("exact_duplicates", "near_duplicates", "too_long", "capped") if p.get(k)}}
        why = ", ".join(f"{k} {v:,}" for k, v in sorted(lost.items(), key=lambda kv: -kv[1])) or "none dropped"
        parts.append(f"{name}: {p.get('loaded', 0):,} loaded ({why})")
    bad = got.bad.total
    return DataError(f"{label}no training rows left {stage}: " + "; ".join(parts or ["no source gave rows"])
                     + (f"; {bad:,} malformed input rows skipped" if bad else "")
                     + ". Loosen the filters (languages, max_seq_len, max_examples_per_source) or add sources")


def _prepare_phase(cfg, out_dir: Path, chosen: dict, mode: str, tok, *, languages, text_fraction: Optional[float],
                   progress: bool, label: str, text_as_chat: bool = False, replay=None) -> dict:
    """One dataset folder: load and clean, render, drop/cap/split, add text and replay, mix by
    weight, save, then stats.json, preview.txt and the template (steps 1-7 below). `text_as_chat`:
    plain-text sources become "continue this text" conversations (mambaft.data.text_chat) instead
    of packed continued-pretraining rows; `replay`: (rendered train rows of an earlier phase, share
    of this phase's train rows they make up)."""
    t_start = time.perf_counter()
    got = _load_sources(cfg, chosen, tok, languages=languages, text_as_chat=text_as_chat, progress=progress,
                        label=label)
    t_loaded = time.perf_counter()
    if not got.convs and not any(len(v.get("train", [])) + len(v.get("val", [])) for v in got.text_rows.values()):
        raise _empty(got, label, "after loading and filtering")
    chat, n_proc = _render(cfg, got.convs, tok, label)
    t_rendered = time.perf_counter()
    chat, chat_idx, is_val = _drop_cap_split(cfg, chat, got.per)
    full, text_idx, replay_idx = _append_text_and_replay(cfg, chat, got.text_rows, got.per, replay, label)
    train, val, uniq = _mix(cfg, got, chat_idx, is_val, text_idx, replay_idx, replay, text_fraction, progress, label)
    if not train:
        raise _empty(got, label, "after rendering, the length limit, deduplication and the split")
    dd = _save_splits(full, train, val, out_dir, cfg.seed)
    t_saved = time.perf_counter()
    # --- 7. stats, preview, template ---------------------------------------------------------------
    stats = _stats(cfg, got.per, dd, uniq, got.bad, mode, label)
    stats["seconds"] = {"load": round(t_loaded - t_start, 2), "render": round(t_rendered - t_loaded, 2),
                        "dedup_split_save": round(t_saved - t_rendered, 2), "total": round(t_saved - t_start, 2)}
    stats["conversations_per_second"] = round(len(got.convs) / max(t_saved - t_loaded, 1e-9), 1)
    stats["render_processes"] = n_proc or 1
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "preview.txt").write_text(preview(dd["train"], tok), encoding="utf-8")
    DEFAULT_TEMPLATE.save(out_dir)
    return stats


def _features_without_tokens(feats):
    from datasets import Features
    return Features({k: feats[k] for k in ("id", "conversation_id", "source", "lang", "kind", "messages")})


def _stats(cfg, per: dict, dd, uniq: dict, bad: BadRows, mode: str, label: str) -> dict:
    train_src, val_src = _col(dd["train"], "source"), _col(dd["val"], "source")
    n_tok, n_tr = _col(dd["train"], "n_tokens"), _col(dd["train"], "n_trained")
    langs = _col(dd["train"], "lang")
    sources = {}
    for name, s in per.items():
        m = train_src == name
        lens = n_tok[m]
        sources[name] = {**s, "filtered": dict(s["filtered"]), "bad_rows": bad.counts.get(name, 0),
                         "unique_train": uniq.get(name, (0, 0))[0], "unique_val": uniq.get(name, (0, 0))[1],
                         "train_rows": int(m.sum()), "val_rows": int((val_src == name).sum()),
                         "train_tokens": int(lens.sum()), "train_trained_tokens": int(n_tr[m].sum()),
                         "mean_tokens": round(float(lens.mean()), 1) if len(lens) else 0.0,
                         "p95_tokens": _pct(lens, 95), "max_tokens": int(lens.max()) if len(lens) else 0,
                         "languages": dict(Counter(langs[m].tolist()).most_common())}
    val_tok = int(_col(dd["val"], "n_tokens").sum())
    return {
        "phase": label.rstrip(": ") or "main", "strategy": cfg.strategy, "mode": mode, "seed": cfg.seed,
        "max_seq_len": cfg.max_seq_len, "train_on": cfg.train_on, "val_fraction": cfg.val_fraction,
        "template": DEFAULT_TEMPLATE.name, "sources": sources,
        "totals": {"train_rows": len(dd["train"]), "val_rows": len(dd["val"]),
                   "train_tokens": int(n_tok.sum()), "train_trained_tokens": int(n_tr.sum()), "val_tokens": val_tok,
                   "truncated": sum(s["truncated"] for s in per.values()),
                   "too_long": sum(s["too_long"] for s in per.values()),
                   "long_reply": sum(s["long_reply"] for s in per.values()),
                   "bad_rows": bad.total, "max_row_tokens": int(n_tok.max()) if len(n_tok) else 0},
        "bad_rows": bad.to_dict(),
        # val rows per source and held-out role (selection: chooses the checkpoint; test: reported)
        "heldout": heldout.split_counts(dd["val"], cfg.seed),
    }


def preview(ds, tok, n: int = PREVIEW_ROWS, max_tokens: int = 200) -> str:
    """The first rows with trained tokens in [brackets] (one of each source first), for the notebook."""
    order, seen = [], set()
    for i, s in enumerate(_col(ds.select(range(min(len(ds), 5000))), "source")):
        if s not in seen:
            seen.add(s)
            order.append(i)
    order += [i for i in range(min(len(ds), n)) if i not in order]
    lines = ["Trained tokens (labels != -100) are shown [in brackets]; the loss ignores everything else.",
             f"Template: {DEFAULT_TEMPLATE.name}; end of turn = {DEFAULT_TEMPLATE.end_of_turn}", ""]
    for i in order[:n]:
        r = ds[i]
        ids, labels = r["input_ids"][:max_tokens], r["labels"][:max_tokens]
        more = f" (first {max_tokens} of {r['n_tokens']} tokens)" if r["n_tokens"] > max_tokens else ""
        lines.append(f"--- {r['id']}  [{r['source']}, {r['kind']}, {r['lang']}] {r['n_tokens']} tokens, "
                     f"{r['n_trained']} trained{more}")
        lines.append(show_trained(ids, labels, tok))
        lines.append("")
    return "\n".join(lines)


def mark_complete(out_dir) -> None:
    """Write the completion marker into `out_dir` and each phase folder in it (last step of prepare;
    also for test fixtures written in prepare's format by hand)."""
    out = Path(out_dir)
    for d in [out] + [out / p for p in ("phase1", "phase2") if (out / p).is_dir()]:
        (d / COMPLETE_MARKER).write_text(json.dumps({"complete": True, "written": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n", encoding="utf-8")


def _clean_stale_temps(out: Path) -> None:
    """Temp folders of earlier prepares into the same target whose process is gone (killed)."""
    for p in out.parent.glob(f".tmp-{out.name}-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not durable.pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def prepare(cfg, out_dir, *, sources: Optional[dict] = None, progress: bool = True,
            force: bool = False) -> dict:
    """Prepare the dataset(s) of `cfg.strategy` into `out_dir`; returns the stats (also in stats.json).
    `sources` maps NAME -> HUB_ID_OR_PATH overrides (the CLI's --source). Atomic: see the module doc.
    `out_dir` must be absent, empty or an earlier prepare's (mambaft.outdir); `force` moves any other
    folder aside. It may never hold a local source file: the finished folder replaces it whole."""

    import datasets

    from mambaft import outdir

    out = Path(out_dir)
    local = {f"source {k}": v for k, v in (sources or {}).items() if Path(v).exists()}
    outdir.claim(out, "prepare", force=force, own_names=outdir.PREPARE_NAMES, inputs=local,
                 say=lambda m: _say(True, m))
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(out)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    bars_were_off = datasets.utils.are_progress_bars_disabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        stats = _prepare(cfg, tmp, dict(sources or {}), progress)
        mark_complete(tmp)
        outdir.mark(tmp, "prepare")
        fault_inject("prepare_saved")
        durable.replace_dir(tmp, out)
        return stats
    except Exception as e:
        if not durable.is_full_error(e, tmp) or isinstance(e, DataError):
            raise
        raise durable.disk_full_error(e, getattr(e, "filename", None) or tmp, "the prepared dataset",
                                      need=durable.tree_bytes(tmp) or None,
                                      after=f"the half-written copy was removed; {out} is as it was") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # a failed or interrupted run leaves the old output alone
        if not progress and not bars_were_off:
            datasets.enable_progress_bars()


def _prepare(cfg, out: Path, overrides: dict, progress: bool) -> dict:
    from mambaft.tokenizer import load_tokenizer

    tok = load_tokenizer()
    common = dict(progress=progress)
    if cfg.strategy != "specialized":
        mode, chosen = resolve_sources(cfg.sources, cfg.offline_sources, overrides, cfg.data_mode, progress)
        _say(progress, f"mode {mode}: {', '.join(f'{n} x{w:g}' for n, (w, _) in chosen.items())}")
        stats = _prepare_phase(cfg, out, chosen, mode, tok, languages=cfg.languages, text_fraction=None,
                               label="", **common)
        stats["plan"] = plan_budget(cfg, stats)
    else:
        p2_names = set(cfg.phase2_sources) | set(cfg.phase2_offline_sources)
        ov1 = {k: v for k, v in overrides.items() if k not in p2_names}
        ov2 = {k: v for k, v in overrides.items() if k in p2_names}
        # French phase 2 keeps French rows only (the plan: oasst filtered to lang="fr").
        lang2 = ("fr",) if cfg.domain == "french" else cfg.languages
        mode1, chosen1 = resolve_sources(cfg.sources, cfg.offline_sources, ov1, cfg.data_mode, progress)
        mode2, chosen2 = resolve_sources(cfg.phase2_sources, cfg.phase2_offline_sources, ov2, cfg.data_mode, progress)
        _say(progress, f"phase1 ({mode1}): {', '.join(chosen1)}; phase2 ({mode2}, domain={cfg.domain}, "
                       f"languages={lang2}): {', '.join(chosen2)}")
        s1 = _prepare_phase(cfg, out / "phase1", chosen1, mode1, tok, languages=cfg.languages, text_fraction=None,
                            label="phase1: ", **common)
        # Against forgetting phase 1's format: replay a share of its conversations, and turn the
        # domain's plain text into conversations (mambaft.data.text_chat) unless asked for raw text.
        # (read straight from the temp folder: it gets its completion marker only when all is written)
        from datasets import load_from_disk
        replay = (load_from_disk(str(out / "phase1"))["train"], cfg.phase2_replay_fraction)
        s2 = _prepare_phase(cfg, out / "phase2", chosen2, mode2, tok, languages=lang2,
                            text_fraction=cfg.phase2_text_fraction, label="phase2: ",
                            text_as_chat=cfg.phase2_text_format == "chat", replay=replay, **common)
        stats = {"strategy": "specialized", "domain": cfg.domain, "phases": {"phase1": s1, "phase2": s2}}
        stats["plan"] = plan_budget(cfg, stats)
        for name, s in (("phase1", s1), ("phase2", s2)):
            s["plan"] = stats["plan"]["phases"][name]
            (out / name / "stats.json").write_text(json.dumps(s, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    stats["config"] = cfg.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    (out / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False, default=str) + "\n",
                                    encoding="utf-8")
    for w in stats["plan"]["warnings"]:
        _say(progress, f"WARNING: {w}")
    return stats


def load_prepared(path):
    """The DatasetDict written by `prepare` (train, val). For "specialized", load phase1/ or phase2/."""
    from datasets import load_from_disk

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such data folder (write one with `mambaft prepare --out {p}`)")
    if (p / "phase1").is_dir() and not (p / "dataset_dict.json").is_file():
        raise DataError(f"{p} holds a specialized dataset: load {p / 'phase1'} or {p / 'phase2'}")
    if not (p / "dataset_dict.json").is_file():
        raise FileNotFoundError(f"{p}: not a dataset written by `mambaft prepare` (no dataset_dict.json). "
                                f"Run: mambaft prepare --strategy smoke --out {p}")
    if not (p / COMPLETE_MARKER).is_file():
        raise DataError(f"{p}: incomplete `mambaft prepare` output (no {COMPLETE_MARKER}: the prepare that "
                        "wrote it was killed, or it was written by an older mambaft). Run `mambaft prepare` "
                        "again into this folder.")
    try:
        return load_from_disk(str(p))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(f"{p}: damaged `mambaft prepare` output ({type(e).__name__}: {str(e)[:200]}). "
                        "Run `mambaft prepare` again into this folder.") from e


def summary(stats: dict) -> str:
    if "phases" in stats:
        return "\n\n".join(f"== {k}\n{summary(v)}" for k, v in stats["phases"].items())
    t = stats["totals"]
    lines = [f"{t['train_rows']:,} train rows ({t['train_tokens']:,} tokens, {t['train_trained_tokens']:,} trained), "
             f"{t['val_rows']:,} val rows; {t['truncated']} truncated, {t['too_long']} too long, "
             + (f"{t['long_reply']} with a reply over max_reply_tokens, " if t.get("long_reply") else "") +
             f"{t['bad_rows']} malformed; {stats['conversations_per_second']:,} conversations/s"]
    for name, s in stats["sources"].items():
        dropped = sum(s["filtered"].values()) + s["exact_duplicates"] + s["near_duplicates"] + s["too_long"]
        dropped += s.get("long_reply", 0)
        lines.append(f"  {name:<17} {s['kind']:<4} loaded {s['loaded']:>7,}  dropped {dropped:>6,}  "
                     f"train {s['train_rows']:>7,} (unique {s['unique_train']:,})  val {s['val_rows']:>5,}  "
                     f"mean {s['mean_tokens']:>6.1f} tok  {s['origin']}")
    return "\n".join(lines)
