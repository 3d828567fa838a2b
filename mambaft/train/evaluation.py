"""Evaluation during fine-tuning: val loss per source, held-out text perplexity, probe answers.

All three run on the UNWRAPPED model in eval mode under no_grad (no DDP collectives inside), so ranks
never wait on each other mid-evaluation; the caller all-reduces the val sums and lets rank 0 alone
run the (cheap) held-out perplexity and the probes.

    python -m pytest tests/test_train_units.py -k eval
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Sequence

import torch

from mambaft.data.heldout import SELECTION, heldout_rows
from mambaft.data.text import load_text_documents
from mambaft.evaluate.metrics import HELDOUT_WINDOW, degeneration, text_windows, validation_pairs
from mambaft.evaluate.probes import PROBES
from mambaft.evaluate.replies import STOP_END, STOP_LIMIT, eval_replies

from .batches import collate


def val_rows(val_ds, max_rows: int, seed: int) -> list[int]:
    """The rows every evaluation of a run scores (val loss, reply behaviour): at most `max_rows` of the
    SELECTION split, in its stratified order (each source at its share of any prefix), the same at
    every evaluation and on resume. The test split is never scored here: it chooses nothing (the
    checkpoint choice reads these rows), so notebook 04 can report on it (mambaft.data.heldout)."""
    return heldout_rows(val_ds, SELECTION, seed, limit=max_rows)


@torch.no_grad()
def val_loss_sums(model, val_ds, indices: Sequence[int], *, batch_size: int, pad_id: int,
                  device: torch.device, autocast_ctx=None, sources: Sequence[str] = ()) -> dict:
    """Summed token loss and trained-token count per source over `indices` of the val split.

    Rows are grouped by source so that each forward pass covers one source and the model's own
    summed loss gives the per-source sums directly. Returns {source: [loss_sum, n_tokens]} for every
    name in `sources` (zeros where this rank saw none: the caller all-reduces a fixed layout)."""
    out = {s: [0.0, 0] for s in sources}
    if not len(indices):
        return out
    cols = val_ds.select_columns(["input_ids", "labels", "source"])[list(indices)]
    by_source: dict[str, list[dict]] = {}
    for i, ids, labels, src in zip(indices, cols["input_ids"], cols["labels"], cols["source"]):
        by_source.setdefault(src, []).append({"id": i, "input_ids": ids, "labels": labels})
    was_training = model.training
    model.eval()
    ctx = autocast_ctx if autocast_ctx is not None else contextlib.nullcontext()
    try:
        for src, rows in by_source.items():
            rows.sort(key=lambda r: len(r["input_ids"]))
            acc = out.setdefault(src, [0.0, 0])
            for s in range(0, len(rows), batch_size):
                batch = collate(rows[s:s + batch_size], pad_id)
                with ctx:
                    res = model(batch["input_ids"].to(device), labels=batch["labels"].to(device),
                                return_logits=False, loss_reduction="sum")
                acc[0] += float(res["loss"])
                acc[1] += int(res["n_tokens"])
    finally:
        model.train(was_training)
    return out


def summarize_val(sums: dict) -> dict:
    """{source: [loss_sum, n]} -> metrics: token-weighted val_loss, val_ppl, val_loss/<source>."""
    total = sum(v[0] for v in sums.values())
    n = sum(v[1] for v in sums.values())
    row: dict = {}
    if n:
        row["val_loss"] = total / n
        row["val_ppl"] = math.exp(min(row["val_loss"], 50.0))
    for src in sorted(sums):
        if sums[src][1]:
            row[f"val_loss/{src}"] = sums[src][0] / sums[src][1]
    return row


@torch.no_grad()
def heldout_perplexity(model, texts: dict, tokenizer, *, max_tokens: int, device: torch.device,
                       autocast_ctx=None, batch_size: int = 4, window: int = HELDOUT_WINDOW) -> dict:
    """Perplexity on plain text the run never trains on (forgetting watch): the held-out perplexity
    of mambaft.evaluate.metrics (`text_windows`: each document on its own, windows of 256 tokens, at
    most `max_tokens` scored tokens per source), scored by the model's own summed loss.
    Returns {"heldout_ppl": exp(token-weighted mean NLL over all sources), "heldout_ppl/<name>": ...}."""
    was_training = model.training
    model.eval()
    ctx = autocast_ctx if autocast_ctx is not None else contextlib.nullcontext()
    row: dict = {}
    grand, grand_n = 0.0, 0
    try:
        for name in sorted(texts):
            windows = text_windows((tokenizer.encode(doc) for doc in texts[name]),
                                   min(window, model.config.max_seq_len), max_tokens)
            total, n = 0.0, 0
            for s in range(0, len(windows), batch_size):
                rows = [{"input_ids": w, "labels": w} for w in windows[s:s + batch_size]]
                batch = collate(rows, pad_id=0)
                with ctx:
                    res = model(batch["input_ids"].to(device), labels=batch["labels"].to(device),
                                return_logits=False, loss_reduction="sum")
                total += float(res["loss"])
                n += int(res["n_tokens"])
            if n:
                row[f"heldout_ppl/{name}"] = math.exp(min(total / n, 50.0))
                grand, grand_n = grand + total, grand_n + n
    finally:
        model.train(was_training)
    if grand_n:
        row["heldout_ppl"] = math.exp(min(grand / grand_n, 50.0))
    return row


def load_probes() -> tuple[list, str]:
    """The fixed probe set (mambaft.evaluate.probes.PROBES) and a line saying so."""
    return list(PROBES), f"{len(PROBES)} probes from mambaft.evaluate.probes"


def load_heldout_texts(names: Sequence[str], max_docs: int = 200) -> tuple[dict, str]:
    """Held-out plain text per source name from mambaft.data.text (a source that cannot be read is
    skipped and named in the note), and a line saying what was loaded."""
    texts, notes = {}, []
    for name in names:
        try:
            docs = load_text_documents(name, limit=max_docs, split="heldout")
        except Exception as e:  # offline cache missing, unknown name, ...: evaluation goes on
            notes.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        texts[name] = [d["text"] if isinstance(d, dict) else str(d) for d in docs]
    note = f"held-out text: {', '.join(f'{k} ({len(v)} docs)' for k, v in texts.items()) or 'none'}"
    if notes:
        note += "; skipped " + "; ".join(notes)
    return texts, note


@torch.no_grad()
def probe_answers(model, probes: Sequence, tokenizer, template, *, max_new_tokens: int = 64) -> list[dict]:
    """Greedy answers to the probes through the evaluation's reply generator (one batch, stops on the
    template's end token or stop strings), scored by each probe's own rule: the "stops" probes also
    require the end token (`Probe.passes`).

    Returns one dict per probe: id, lang, prompt, answer (cleaned), raw, passed, stopped (end token or
    stop string before the limit), end_token, new_tokens."""
    was_training = model.training
    model.eval()
    try:
        replies = eval_replies(model, tokenizer, template, [p.messages for p in probes],
                                   max_new_tokens=max_new_tokens, batch_size=max(1, len(probes)))
    finally:
        model.train(was_training)
    rows = []
    for p, r in zip(probes, replies):
        passed = p.passes(r.answer, r.stopped_by) if hasattr(p, "passes") else p.check(r.answer)
        rows.append({"id": p.id, "lang": getattr(p, "lang", None),
                     "prompt": template.prompt_text(p.messages), "answer": r.answer, "raw": r.text,
                     "passed": bool(passed), "stopped": r.stopped_by != STOP_LIMIT,
                     "end_token": r.stopped_by == STOP_END,
                     "new_tokens": r.n_new + (r.stopped_by == STOP_END)})
    return rows


def write_probe_answers(path: Path, step: int, rows: list[dict]) -> dict:
    """OUT/probes/step_N.jsonl (one answer per line) -> summary metrics for metrics.jsonl."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"step": step, **r}, ensure_ascii=False) + "\n")
    n = max(1, len(rows))
    return {"probe_pass_rate": sum(r["passed"] for r in rows) / n,
            "probe_stop_rate": sum(r["stopped"] for r in rows) / n}


@torch.no_grad()
def reply_behaviour(model, val_ds, indices: Sequence[int], tokenizer, template, *,
                    max_new_tokens: int = 64) -> dict:
    """Greedy replies to held-out SELECTION-split questions (the history up to each row's last
    assistant turn) -> how they behave, for choosing a checkpoint without looking at the probes or
    the test split (mambaft.evaluate.metrics.degeneration, judged on the answer a user sees):
        val_stop_rate       share of replies that ended before max_new_tokens
        val_rep_3           mean repeated-3-gram rate over replies that hold a 3-gram; None when none
                            does (too short to measure is not a perfect 0)
        val_too_short_3     share of replies too short to hold a 3-gram
        val_distinct        distinct normalised replies / distinct questions
        val_bare_rate       share of replies under 3 words or a lone option letter ("A.")
        val_useful          distinct replies that stopped and are not bare / distinct questions
        val_mean_words      words per reply
        val_empty_rate      share of replies with nothing to show
        val_reply_tokens    mean new tokens per reply
        val_replies         how many questions were answered
    Validation questions, not the probes: notebook 04 then reports the probes untouched by the choice."""

    pairs = validation_pairs(val_ds.select(list(indices))) if len(indices) else []
    if not pairs:
        return {}
    was_training = model.training
    model.eval()
    try:
        replies = eval_replies(model, tokenizer, template, [h for h, _ in pairs],
                                   max_new_tokens=max_new_tokens, batch_size=len(pairs))
    finally:
        model.train(was_training)
    d = degeneration(replies)
    rep3 = d["rep_3"]
    return {"val_stop_rate": 1.0 - d["limit_rate"], "val_rep_3": None if math.isnan(rep3) else rep3,
            "val_too_short_3": d["too_short_3"], "val_distinct": d["distinct_replies"],
            "val_bare_rate": d["bare_rate"], "val_useful": d["useful_replies"], "val_mean_words": d["mean_words"],
            "val_empty_rate": sum(1 for r in replies if not r.answer.strip()) / len(replies),
            "val_reply_tokens": d["mean_new_tokens"], "val_replies": len(replies)}
