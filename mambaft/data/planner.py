"""The budget planner: how many times each source is seen, how many tokens, and what looks wrong.

    plan_budget(cfg, stats=None, num_gpus=None) -> {"global_batch", "rows_seen", "epochs_per_source",
                                                    "tokens_seen", "warnings", ...}

rows seen = steps x batch_size x grad_accum x GPUs; a source's share of them is its share of the
prepared training rows (weights included); its epochs = its rows seen / its unique examples.
The plan's quick strategy: 4 x 8 x 6 = 192 rows/step x 10,000 steps = 1,920,000 rows over Alpaca's
52,002 examples = 36.9 epochs, where recipes use 1-3: the planner warns.

Without `stats` (before any download) it uses the published sizes of the hub datasets (KNOWN_SIZES).

    mambaft plan quick            # the plan of a preset, from known sizes
    mambaft plan outputs/data     # the plan of a prepared dataset (its stats.json)
"""
from __future__ import annotations

from typing import Optional, Sequence

MAX_EPOCHS = 3.0
SMALL_MODEL_LR = (5e-5, 1e-4)          # fine-tuning range of ~100M-parameter models
PRETRAINING_TOKENS = 3.1e9             # 757,500 micro-batches x 4 x 1024 (mambaswelu.md)
TRUNCATED_WARN = 0.05

# Published sizes of the hub datasets (training examples or threads), for planning before download.
KNOWN_SIZES = {"alpaca": 52_002, "codealpaca": 20_022, "dolly": 15_011, "oasst": 9_846,
               "oasst_all": 21_000, "sharegpt": 94_145, "messages": 207_865}
# The French phase's hub data is a few hundred OASST threads (CulturaX is gated, Fleurs is speech:
# mambaft.data.text): what its epoch warning offers instead of memorising them.
FRENCH_SUPPLEMENT = (" French text to add from the registry (offline, ~1.6M tokens): "
                     "phase2_sources={\"oasst\": 1.0, \"wiki_fr\": 1.0, \"french_text\": 0.5}")
KNOWN_MEAN_TOKENS = 250                # rough mean rendered length of an instruction example


def _phase_plan(cfg, stats: Optional[dict], steps: int, global_batch: int, label: str) -> dict:
    rows_seen = steps * global_batch
    warnings: list[str] = []
    if stats is None:
        weights = cfg.sources
        sources = {n: {"unique_train": KNOWN_SIZES.get(n, 0), "train_rows": KNOWN_SIZES.get(n, 0) * w,
                       "train_tokens": KNOWN_SIZES.get(n, 0) * w * KNOWN_MEAN_TOKENS}
                   for n, w in weights.items()}
        unknown = [n for n in weights if n not in KNOWN_SIZES]
        if unknown:
            warnings.append(f"{label}no known size for {', '.join(unknown)}: prepare the data for a real plan")
    else:
        sources = stats.get("sources", {})
    total_rows = sum(s.get("train_rows", 0) for s in sources.values())
    total_tokens = sum(s.get("train_tokens", 0) for s in sources.values())
    total_trained = sum(s.get("train_trained_tokens", 0) for s in sources.values())
    epochs, rows_per_source = {}, {}
    for name, s in sources.items():
        unique = s.get("unique_train", 0)
        if not unique or not total_rows:
            continue
        seen = rows_seen * s.get("train_rows", 0) / total_rows
        rows_per_source[name] = int(round(seen))
        epochs[name] = seen / unique
        if epochs[name] > MAX_EPOCHS:
            steps_ok = int(MAX_EPOCHS * unique * total_rows / max(1, s.get("train_rows", 0)) / global_batch)
            warnings.append(
                f"{label}{name}: {epochs[name]:.1f} epochs ({rows_seen:,} rows seen = {steps:,} steps x "
                f"{global_batch} rows, {unique:,} unique examples), above {MAX_EPOCHS:.0f}: the model will "
                f"memorise it (recipes use 1-3). Use <= {steps_ok:,} steps or more data."
                + (FRENCH_SUPPLEMENT if label.startswith("phase2") and cfg.domain == "french" else ""))
    mean_tokens = total_tokens / total_rows if total_rows else 0.0
    tokens_seen = rows_seen * mean_tokens
    plan = {"steps": steps, "rows_seen": rows_seen, "epochs_per_source": epochs,
            "rows_seen_per_source": rows_per_source, "tokens_seen": int(tokens_seen),
            "trained_tokens_seen": int(rows_seen * total_trained / total_rows) if total_rows and total_trained else None,
            "padded_tokens_bound": rows_seen * cfg.max_seq_len, "mean_tokens_per_row": round(mean_tokens, 1),
            "warnings": warnings}
    if tokens_seen > PRETRAINING_TOKENS:
        warnings.append(f"{label}{tokens_seen / 1e9:.1f}B tokens seen: more than the whole pretraining "
                        f"({PRETRAINING_TOKENS / 1e9:.1f}B); fine-tuning usually needs far fewer")
    if stats is not None:
        totals = stats.get("totals", {})
        n = sum(s.get("unique_train", 0) + s.get("unique_val", 0) for s in sources.values())
        if n and totals.get("truncated", 0) / n > TRUNCATED_WARN:
            warnings.append(f"{label}{totals['truncated'] / n:.0%} of rows lost their oldest turns at "
                            f"max_seq_len={cfg.max_seq_len}")
        if totals.get("val_rows", 1) == 0:
            warnings.append(f"{label}the validation split is empty (val_fraction={cfg.val_fraction})")
        unique_total = sum(s.get("unique_train", 0) for s in sources.values())
        if unique_total and rows_seen < unique_total:
            warnings.append(f"{label}the run sees {rows_seen:,} rows, {rows_seen / unique_total:.0%} of the "
                            f"{unique_total:,} unique examples: part of the data is never used")
    return plan


def plan_budget(cfg, stats: Optional[dict] = None, num_gpus: Optional[int] = None) -> dict:
    """Epochs per source, tokens seen and warnings for `cfg` over prepared `stats` (as returned by
    `prepare`, or read from stats.json). `num_gpus` overrides cfg.num_gpus (the launcher's real
    world size). A specialized dataset is planned per phase (phase2 runs cfg.phase2_steps)."""
    gpus = num_gpus or cfg.num_gpus
    global_batch = cfg.batch_size * cfg.grad_accum * gpus
    warnings: list[str] = []
    lo, hi = SMALL_MODEL_LR
    if not lo <= cfg.lr <= hi:
        warnings.append(f"lr={cfg.lr:g} is outside {lo:g}..{hi:g}, the range fine-tuning recipes use for a "
                        f"~100M-parameter model (1e-5 is a value for multi-billion-parameter models)")
    if cfg.warmup_steps > 0.1 * cfg.max_steps:
        warnings.append(f"warmup_steps={cfg.warmup_steps} is over 10% of max_steps={cfg.max_steps}")
    out = {"global_batch": global_batch, "num_gpus": gpus, "lr": cfg.lr}
    if stats is not None and "phases" in stats:
        phases = {}
        epochs, tokens = {}, 0
        for name, st in stats["phases"].items():
            steps = cfg.phase2_steps if name == "phase2" else cfg.max_steps
            p = _phase_plan(cfg, st, steps, global_batch, f"{name}: ")
            phases[name] = p
            epochs.update({f"{name}/{k}": v for k, v in p["epochs_per_source"].items()})
            tokens += p["tokens_seen"]
            warnings += p["warnings"]
        out.update(phases=phases, epochs_per_source=epochs, tokens_seen=tokens)
    else:
        p = _phase_plan(cfg, stats, cfg.max_steps, global_batch, "")
        warnings += p.pop("warnings")
        out.update(p)
    out["warnings"] = warnings
    return out


def format_plan(plan: dict, shown: Sequence[str] = ()) -> str:
    """The plan as text, with a WARNING line for each of its warnings not in `shown` (those printed
    already: `prepare` logs the warnings of the plan it saves, and a notebook says each once)."""
    lines = [f"global batch {plan['global_batch']} rows ({plan['num_gpus']} GPU(s)); "
             f"tokens seen ~{plan['tokens_seen']:,}"]
    for name, e in plan["epochs_per_source"].items():
        lines.append(f"  {name:<24} {e:8.2f} epochs")
    lines += [f"WARNING: {w}" for w in plan["warnings"] if w not in shown]
    return "\n".join(lines)
