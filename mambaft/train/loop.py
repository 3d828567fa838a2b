"""The fine-tuning loop of one phase: one flat loop with commented phases, through `accelerate`.

    for step in range(start, max_steps):
        set lr (warmup + cosine/linear)          mambaft.train.optim.lr_at
        take this rank's rows of the global batch (exact data position = rows consumed)
        count trained tokens of the WHOLE global batch (one all-reduce of 2 numbers)
        forward/backward each micro-batch, loss_sum x W / n_global   mambaft.train.step.micro_step
        NaN/inf -> skip; clip 1.0; AdamW step   mambaft.train.step.optimizer_step
        log to metrics.jsonl; every eval_every: evaluate; every save_every: checkpoint (atomic)

Run through `mambaft.train.finetune` (the entry point); this module holds no CLI.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from mambaft import durable, runtime
from mambaft.config import Config, ConfigError
from mambaft.faults import inject as _fault

from . import run_state as ck
from .batches import RowStream
from .evaluation import (heldout_perplexity, probe_answers, reply_behaviour, summarize_val, val_loss_sums,
                         val_rows, write_probe_answers)
from .metrics import DivergenceGuard, MetricsLog, TrainingDiverged, finite_or_none, read_metrics
from .optim import lr_at, run_optimizer
from .step import count_trained_tokens, micro_step, optimizer_step


@dataclass
class PhaseInputs:
    """Everything one phase needs besides the config (built by mambaft.train.finetune)."""
    model: torch.nn.Module               # on CPU, not yet wrapped; loaded from base or checkpoint
    template: object
    tokenizer: object
    train: object                        # datasets.Dataset with input_ids, labels (source optional)
    val: Optional[object]
    out_dir: Path
    resume_from: Optional[ck.CheckpointRecord] = None
    heldout_texts: dict = field(default_factory=dict)
    probes: Optional[list] = None
    probe_tokens: int = 64
    heldout_tokens: int = 8192
    eval_at_start: bool = True
    progress: bool = True
    max_bad_steps: int = 5
    plan_text: list = field(default_factory=list)
    allow_world_size_change: bool = False  # resume a checkpoint saved with another number of processes


class Printer:
    """Rank-0-only printing that does not tear the tqdm bar."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)


def run_phase(cfg: Config, inp: PhaseInputs, accelerator) -> dict:
    """Train one phase to cfg.max_steps (resuming when inp.resume_from is set). Returns a summary."""
    acc = accelerator
    rank, W = acc.process_index, acc.num_processes
    main = acc.is_main_process
    say = Printer(main)
    out = inp.out_dir
    device = acc.device
    precision = runtime.resolve_precision(cfg.precision, device)
    make_ctx = lambda: runtime.autocast(device, precision)  # noqa: E731 - a fresh context per use
    metrics = MetricsLog(out / "metrics.jsonl", enabled=main)
    G = cfg.batch_size * cfg.grad_accum * W

    # --- model, optimizer, state ------------------------------------------------------------------
    raw = inp.model
    raw.train()
    model = acc.prepare(raw)                              # moves to the device; DDP when W > 1
    raw = acc.unwrap_model(model)
    opt = run_optimizer(raw, cfg)
    # fp16 always with a loss scaler (its 5.96e-8 floor underflows small gradients to 0 otherwise)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    guard = DivergenceGuard(max_bad=inp.max_bad_steps)
    step, rows_consumed, best = 0, 0, None
    if inp.resume_from is not None:
        st = ck.load_trainer_state(inp.resume_from.path)
        _check_world_size(st, W, G, inp.allow_world_size_change, say)
        opt.load_state_dict(st["optimizer"])
        if scaler is not None and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        guard.load_state_dict(st["guard"])
        step, rows_consumed, best = int(st["step"]), int(st["rows_consumed"]), st.get("best_val_loss")
        rng = ck.load_rng(inp.resume_from.path, rank)
        if rng is not None:
            for note in ck.restore_rng(rng):
                say(f"note: {note}")
        else:
            runtime.seed_everything(cfg.seed + 1000 * rank + step)
            say(f"note: no RNG state for rank {rank} in {inp.resume_from.path} (saved with "
                f"{st.get('world_size')} processes); reseeded")
        dropped = metrics.truncate_after(step)
        say(f"resuming from {inp.resume_from.path} (step {step} of {cfg.max_steps}, "
            f"{rows_consumed:,} rows consumed, epoch {rows_consumed / len(inp.train):.2f})"
            + (f"; dropped {dropped} metrics rows logged after that checkpoint" if dropped else ""))
        metrics.write({"step": step, "event": "resume", "from": str(inp.resume_from.path)})
    else:
        runtime.seed_everything(cfg.seed + 1000 * rank)
        metrics.write({"step": 0, "event": "start", "world_size": W, "precision": precision,
                       "global_batch": G})
    stream = RowStream(inp.train, seed=cfg.seed, pad_id=inp.tokenizer.eos_id,
                       max_len=raw.config.max_seq_len,
                       pack_to=min(cfg.max_seq_len, raw.config.max_seq_len) if cfg.packing else None)
    val_idx = val_rows(inp.val, cfg.eval_batches * cfg.batch_size, cfg.seed) if inp.val is not None else []
    val_sources = sorted(set(inp.val["source"])) if inp.val is not None and "source" in inp.val.column_names else []
    for line in inp.plan_text:
        say(line)
    say(f"device {device}, {W} process(es), precision {precision}, "
        f"{sum(p.numel() for p in raw.parameters() if p.requires_grad):,} trainable parameters")

    def reduce_sum(values: list) -> list:
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if W > 1:
            t = acc.reduce(t, reduction="sum")
        return t.tolist()

    # --- evaluation (all ranks share the val rows; rank 0 alone runs perplexity and probes) ---------
    def evaluate(at_step: int) -> dict:
        row: dict = {"step": at_step}
        if inp.val is not None and len(val_idx):
            mine = val_idx[rank::W]
            sums = val_loss_sums(raw, inp.val, mine, batch_size=cfg.batch_size, pad_id=inp.tokenizer.eos_id,
                                 device=device, autocast_ctx=make_ctx(), sources=val_sources)
            flat = reduce_sum([x for s in val_sources for x in sums.get(s, [0.0, 0])])
            row.update(summarize_val({s: flat[2 * i:2 * i + 2] for i, s in enumerate(val_sources)}))
        if main:
            if inp.val is not None and cfg.eval_replies > 0 and "messages" in inp.val.column_names:
                # how greedy replies to held-out questions behave: what the checkpoint choice reads
                row.update(reply_behaviour(raw, inp.val, val_idx[:cfg.eval_replies], inp.tokenizer,
                                           inp.template, max_new_tokens=inp.probe_tokens))
            if inp.heldout_texts:
                row.update(heldout_perplexity(raw, inp.heldout_texts, inp.tokenizer,
                                              max_tokens=inp.heldout_tokens, device=device,
                                              autocast_ctx=make_ctx(), batch_size=cfg.batch_size))
            if inp.probes:
                answers = probe_answers(raw, inp.probes, inp.tokenizer, inp.template,
                                        max_new_tokens=inp.probe_tokens)
                row.update(write_probe_answers(out / "probes" / f"step_{at_step}.jsonl", at_step, answers))
        acc.wait_for_everyone()
        return row

    # --- checkpoint (atomic; every rank writes its RNG, rank 0 commits and rotates) ----------------
    def save(at_step: int, val_loss: Optional[float]) -> None:
        if main:
            ck.begin(out, at_step)
        acc.wait_for_everyone()
        ck.write_rng(ck.tmp_dir(out, at_step), rank)
        acc.wait_for_everyone()
        if main:
            state = {"step": at_step, "rows_consumed": rows_consumed, "optimizer": opt.state_dict(),
                     "scaler": scaler.state_dict() if scaler is not None else None,
                     "guard": guard.state_dict(), "best_val_loss": best, "world_size": W,
                     "global_batch": G, "epoch": rows_consumed / len(inp.train)}
            path = ck.commit(out, at_step, raw, trainer_state=state, config=cfg.to_dict(),
                             template=inp.template, tokenizer=inp.tokenizer,
                             training_meta={"config": cfg.to_dict(), "step": at_step, "val_loss": val_loss,
                                            "rows_consumed": rows_consumed},
                             export_original=cfg.export_original and raw.config.architecture == "original",
                             fault=lambda point: _fault(point, at_step))
            removed = ck.rotate(out, cfg.keep_last)
            metrics.write({"step": at_step, "event": "checkpoint", "path": str(path),
                           "removed": [p.name for p in removed]})
        acc.wait_for_everyone()

    last_eval: dict = {}
    if step == 0 and inp.eval_at_start and inp.resume_from is None:
        last_eval = evaluate(0)
        metrics.write(last_eval)
        say("eval step 0: " + _fmt(last_eval))

    # --- the loop -----------------------------------------------------------------------------------
    bar = None
    if inp.progress and main:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.max_steps, initial=step, desc=f"{cfg.strategy}", unit="step", dynamic_ncols=True)
        say.bar = bar
    t_start = time.time()
    losses: list[float] = []
    while step < cfg.max_steps:
        t0 = time.time()
        # 1. learning rate for this optimizer step (0-based index `step`)
        lr = lr_at(step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                   schedule=cfg.schedule, min_lr_ratio=cfg.min_lr_ratio)
        # 2. this rank's share of the global batch, and the global count of trained tokens
        rows = stream.step_rows(rows_consumed, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                                rank=rank, world_size=W)
        local_trained = sum(count_trained_tokens(mb["labels"]) for mb in rows.micro_batches)
        local_tokens = sum(int(mb["lengths"].sum()) for mb in rows.micro_batches)
        n_global, tokens_global = (int(x) for x in reduce_sum([local_trained, local_tokens]))
        # 3. forward/backward: DDP averages gradients over W ranks, so W / n_global makes the result
        #    sum(token losses) / n_global; no all-reduce until the last micro-batch (no_sync)
        scale = (W / n_global) if n_global else 0.0
        backward = (lambda l: scaler.scale(l).backward()) if scaler is not None else None
        loss_local = 0.0
        for i, mb in enumerate(rows.micro_batches):
            last = i == len(rows.micro_batches) - 1
            sync = contextlib.nullcontext() if (last or W == 1) else acc.no_sync(model)
            with sync:
                pos = mb["positions"].to(device) if "positions" in mb else None   # packed rows
                ls, _ = micro_step(model, mb["input_ids"].to(device), mb["labels"].to(device),
                                   autocast_ctx=make_ctx(), loss_scale=scale, backward=backward,
                                   positions=pos)
            loss_local += ls
        loss = reduce_sum([loss_local])[0] / max(1, n_global)
        # 4. clip + AdamW step, unless the loss or the gradient is NaN/inf (then nothing is applied)
        if math.isfinite(loss) and n_global:
            grad_norm = optimizer_step(raw, opt, lr=lr, grad_clip=cfg.grad_clip, scaler=scaler)
        else:
            opt.zero_grad(set_to_none=True)
            grad_norm = float("nan")
        verdict = guard.check(step + 1, loss, grad_norm)
        step += 1
        rows_consumed += G
        _fault("after_step", step)
        # 5. log
        dt = time.time() - t0
        row = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
               "tokens_per_s": tokens_global / dt if dt > 0 else None, "trained_tokens": n_global,
               "tokens": tokens_global, "epoch": rows_consumed / len(inp.train),
               "elapsed_s": round(time.time() - t_start, 3)}
        metrics.write(row)
        losses.append(loss)
        if verdict == "nonfinite":
            # event rows never carry "loss"/"grad_norm" keys: plots read those as the training series
            metrics.write({"step": step, "event": "nonfinite", "bad_loss": loss, "bad_grad_norm": grad_norm,
                           "rows": rows.row_ids[:16]})
            say(f"step {step}: NaN/inf (loss {loss}, grad norm {grad_norm}): step skipped "
                f"({guard.consecutive_bad} in a row, stop at {guard.max_bad})")
        elif verdict == "spike":
            metrics.write({"step": step, "event": "loss_spike", "spike_loss": loss, "ema": guard.ema})
            say(f"ALARM step {step}: loss {loss:.3f} is over {guard.spike_factor:g}x its running average "
                f"{guard.ema:.3f} (check lr and data)")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s'] or 0:,.0f}")
        if acc.trackers:
            acc.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}, step=step)
        # 6. evaluate and checkpoint
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            last_eval = evaluate(step)
            metrics.write(last_eval)
            if acc.trackers:
                acc.log({k: v for k, v in last_eval.items() if k != "step"}, step=step)
            _stop_on_nonfinite_val(last_eval, step, out)
            if "val_loss" in last_eval and (best is None or last_eval["val_loss"] < best):
                best = last_eval["val_loss"]
            say(f"eval step {step}: " + _fmt(last_eval))
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            save(step, last_eval.get("val_loss") if last_eval.get("step") == step else None)
    if bar is not None:
        bar.close()
        say.bar = None
    return {"steps": step, "rows_consumed": rows_consumed, "losses_this_run": losses,
            "last_eval": last_eval, "best_val_loss": best, "precision": precision, "world_size": W}


# --- guards (world size, non-finite validation loss) --------------------------------------------------
def _check_world_size(state: dict, W: int, G: int, allow: bool, say) -> None:
    """A checkpoint saved with another number of processes changes the run: say what, and go on only
    when allowed (--allow-world-size-change)."""
    saved = state.get("world_size")
    if saved is None or int(saved) == W:
        return
    saved = int(saved)
    rng = (f"rank(s) {saved}..{W - 1} have no saved RNG state and are reseeded" if W > saved else
           f"the saved RNG states of rank(s) {W}..{saved - 1} go unused")
    what = (f"the checkpoint was saved with {saved} process(es), this run has {W}: the global batch changes "
            f"from {state.get('global_batch')} to {G} rows per step, the data order changes from here on (the "
            f"same rows-consumed position, dealt to {W} rank(s)), and {rng}")
    if not allow:
        raise ConfigError(what + ". Pass --allow-world-size-change (allow_world_size_change=True) to accept, "
                          f"or launch {saved} process(es) to resume exactly.")
    say(f"note: {what}")


def _stop_on_nonfinite_val(row: dict, step: int, out: Path) -> None:
    """A NaN/inf validation loss means the weights are broken: stop before saving them (the newest
    checkpoint stays the last good one) rather than train on and report a NaN "best"."""
    bad = {k: v for k, v in row.items() if k.startswith("val_loss") and isinstance(v, float) and not math.isfinite(v)}
    if bad:
        newest = ck.latest_checkpoint(out)
        raise TrainingDiverged(f"step {step}: validation loss is {', '.join(f'{k}={v}' for k, v in bad.items())}: "
                               "the weights hold NaN/inf; stopping. Last good checkpoint: "
                               f"{newest.path if newest else 'none'} (lower lr, check grad_clip and the data)")


def _fmt(row: dict) -> str:
    parts = []
    for k, v in row.items():
        if k == "step":
            continue
        parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    return ", ".join(parts) or "(nothing to evaluate)"


def write_final(cfg: Config, out: Path, accelerator, model_path_from: Path) -> dict:
    """Rank 0: OUT/final/ (copy of the last checkpoint's model folder, atomically), OUT/final_model.pt
    (original format, when cfg.export_original), OUT/result.json. Returns the result."""
    res: dict = {}
    if accelerator.is_main_process:
        final = out / "final"
        tmp = out / ".tmp-final"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(model_path_from / ck.MODEL_DIRNAME, tmp)
        durable.replace_dir(tmp, final)
        original = model_path_from / ck.ORIGINAL_FILE
        if original.is_file():
            tmp_pt = out / ".final_model.pt.tmp"
            shutil.copyfile(original, tmp_pt)
            durable.fsync_path(tmp_pt)
            os.replace(tmp_pt, out / "final_model.pt")
        rows = read_metrics(out / "metrics.jsonl") if (out / "metrics.jsonl").is_file() else []
        train_rows = [r for r in rows if "loss" in r and "event" not in r]
        evals = [r for r in rows if "val_loss" in r]
        best = ck.best_checkpoint(ck.list_checkpoints(out))
        res = {"final": str(final), "final_original": str(out / "final_model.pt") if original.is_file() else None,
               "steps": train_rows[-1]["step"] if train_rows else 0,
               "losses": [r["loss"] for r in train_rows],
               "val_loss": evals[-1]["val_loss"] if evals else None,
               "best_checkpoint": str(best.path) if best else None,
               "best_val_loss": best.val_loss if best else None,
               "metrics": str(out / "metrics.jsonl"), "out_dir": str(out), "strategy": cfg.strategy}
        # strict JSON: a NaN loss is written null (json.dumps would write a bare NaN)
        (out / "result.json").write_text(json.dumps(finite_or_none(res), indent=2, allow_nan=False) + "\n",
                                         encoding="utf-8")
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        res = json.loads((out / "result.json").read_text(encoding="utf-8"))
    return res
