"""The fine-tuning loop of one phase: one flat loop with commented phases, through `accelerate`.

    for step in range(start, max_steps):
        set lr (warmup + cosine/linear)          mambaft.train.optim.lr_at
        take this rank's rows of the global batch (exact data position = rows consumed)
        count trained tokens of the WHOLE global batch (one all-reduce of 2 numbers)
        forward/backward each micro-batch, loss_sum x W / n_global   mambaft.train.step.micro_step
        NaN/inf -> skip; clip 1.0; AdamW step   mambaft.train.step.optimizer_step
        log to metrics.jsonl; every eval_every: evaluate; every save_every: checkpoint (atomic)

Run through `mambaft.train.run.finetune` (`mambaft finetune`); this module holds no CLI.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from mambaft import durable, runtime
from mambaft.config import Config, ConfigError
from mambaft.faults import inject as _fault
from mambaft.model.kernels.loss import label_index
from mambaft.model.kernels.switch import reference_kernels

from . import run_state as ck
from .batches import RowStream, packs_one_row
from .estimate import TIMED_STEPS, remaining_time
from .trim import context_seen
from .evaluation import (heldout_perplexity, probe_answers, reply_behaviour, summarize_val, val_loss_sums,
                         val_rows, write_probe_answers)
from .metrics import DivergenceGuard, MetricsLog, TrainingDiverged, finite_or_none, read_metrics
from .optim import lr_at, run_optimizer
from .step import count_trained_tokens, micro_step, optimizer_step


@dataclass
class PhaseInputs:
    """Everything one phase needs besides the config (built by mambaft.train.run)."""
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


@dataclass
class PhaseState:
    """What the loop carries from one optimizer step to the next (a checkpoint saves the first three)."""
    step: int = 0                        # optimizer steps done
    rows_consumed: int = 0               # global rows trained on: the exact data position
    best: Optional[float] = None         # lowest validation loss so far
    last_eval: dict = field(default_factory=dict)
    losses: list = field(default_factory=list)   # training loss of each step of this run


class Phase:
    """One phase's fixed parts (model, optimizer, data stream, printing) and its three actions:
    evaluate, checkpoint, one optimizer step. Built once by `run_phase`, in the order the RNGs and
    the accelerator expect (prepare, optimizer, resume or seed, then the data stream)."""

    def __init__(self, cfg: Config, inp: PhaseInputs, acc):
        self.cfg, self.inp, self.acc = cfg, inp, acc
        self.rank, self.W, self.main = acc.process_index, acc.num_processes, acc.is_main_process
        self.say = Printer(self.main)
        self.device = acc.device
        self.precision = runtime.resolve_precision(cfg.precision, self.device)
        self.metrics = MetricsLog(inp.out_dir / "metrics.jsonl", enabled=self.main)
        self.G = cfg.batch_size * cfg.grad_accum * self.W
        inp.model.train()
        if cfg.compile_blocks:
            for layer in inp.model.mamba_stack.layers:      # in place: the state-dict keys stay the same
                layer.compile()
        self.model = acc.prepare(inp.model)                 # moves to the device; DDP when W > 1
        self.raw = acc.unwrap_model(self.model)
        self.grad_comm = grad_comm(cfg, self.device, self.W)
        if self.grad_comm == "bf16":
            # the bucket is cast to bf16, averaged over the ranks, and written back into the fp32 .grad
            from .comm import bf16_allreduce_hook
            self.model.register_comm_hook(None, bf16_allreduce_hook)
        self.opt = run_optimizer(self.raw, cfg)
        # fp16 always with a loss scaler (its 5.96e-8 floor underflows small gradients to 0 otherwise)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.guard = DivergenceGuard(max_bad=inp.max_bad_steps)

    def ctx(self):
        return runtime.autocast(self.device, self.precision)    # a fresh context per use

    def reduce_sum(self, values: list) -> list:
        """Sum over the ranks of numbers or 0-dim tensors (on the device: no host sync to build it);
        .tolist() is the one host sync of a training step."""
        if any(isinstance(v, torch.Tensor) for v in values):
            t = torch.stack([torch.as_tensor(v, device=self.device).to(torch.float64).reshape(()) for v in values])
        else:
            t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.W > 1:
            t = self.acc.reduce(t, reduction="sum")
        return t.tolist()

    def start(self) -> PhaseState:
        """Resume from inp.resume_from (optimizer, scaler, guard, RNGs, data position) or seed a new
        run; then the data stream and the validation rows."""
        cfg, inp, say, rank = self.cfg, self.inp, self.say, self.rank
        st = PhaseState()
        if inp.resume_from is not None:
            saved = ck.load_trainer_state(inp.resume_from.path)
            _check_world_size(saved, self.W, self.G, inp.allow_world_size_change, say)
            self.opt.load_state_dict(saved["optimizer"])
            if self.scaler is not None and saved.get("scaler"):
                self.scaler.load_state_dict(saved["scaler"])
            self.guard.load_state_dict(saved["guard"])
            st.step, st.rows_consumed, st.best = int(saved["step"]), int(saved["rows_consumed"]), saved.get("best_val_loss")
            rng = ck.load_rng(inp.resume_from.path, rank)
            if rng is not None:
                for note in ck.restore_rng(rng):
                    say(f"note: {note}")
            else:
                runtime.seed_everything(cfg.seed + 1000 * rank + st.step)
                say(f"note: no RNG state for rank {rank} in {inp.resume_from.path} (saved with "
                    f"{saved.get('world_size')} processes); reseeded")
            dropped = self.metrics.truncate_after(st.step)
            say(f"resuming from {inp.resume_from.path} (step {st.step} of {cfg.max_steps}, "
                f"{st.rows_consumed:,} rows consumed, epoch {st.rows_consumed / len(inp.train):.2f})"
                + (f"; dropped {dropped} metrics rows logged after that checkpoint" if dropped else ""))
            self.metrics.write({"step": st.step, "event": "resume", "from": str(inp.resume_from.path)})
        else:
            runtime.seed_everything(cfg.seed + 1000 * rank)
            self.metrics.write({"step": 0, "event": "start", "world_size": self.W, "precision": self.precision,
                                "global_batch": self.G, "grad_comm": self.grad_comm})
        max_len = self.raw.config.max_seq_len
        self.stream = RowStream(inp.train, seed=cfg.seed, pad_id=inp.tokenizer.eos_id, max_len=max_len,
                                pack_to=min(cfg.max_seq_len, max_len) if cfg.packing else None,
                                one_row=packs_one_row(self.raw.config.architecture),
                                trim_to=context_seen(self.raw.config) if cfg.trim_context else None)
        val = inp.val
        self.val_idx = val_rows(val, cfg.eval_batches * cfg.batch_size, cfg.seed) if val is not None else []
        self.val_sources = sorted(set(val["source"])) if val is not None and "source" in val.column_names else []
        for line in inp.plan_text:
            say(line)
        say(f"device {self.device}, {self.W} process(es), precision {self.precision}, "
            + (f"gradient all-reduce in {self.grad_comm}, " if self.W > 1 else "") +
            f"{sum(p.numel() for p in self.raw.parameters() if p.requires_grad):,} trainable parameters")
        return st

    def evaluate(self, at_step: int) -> dict:
        """All ranks share the val rows; rank 0 alone runs reply behaviour, perplexity and probes."""
        cfg, inp, raw, val, idx = self.cfg, self.inp, self.raw, self.inp.val, self.val_idx
        row: dict = {"step": at_step}
        if val is not None and len(idx):
            sums = val_loss_sums(raw, val, idx[self.rank::self.W], batch_size=cfg.batch_size,
                                 pad_id=inp.tokenizer.eos_id, device=self.device, autocast_ctx=self.ctx(),
                                 sources=self.val_sources)
            flat = self.reduce_sum([x for s in self.val_sources for x in sums.get(s, [0.0, 0])])
            row.update(summarize_val({s: flat[2 * i:2 * i + 2] for i, s in enumerate(self.val_sources)}))
        if self.main:
            if val is not None and cfg.eval_replies > 0 and "messages" in val.column_names:
                # how greedy replies to held-out questions behave: what the checkpoint choice reads
                row.update(reply_behaviour(raw, val, idx[:cfg.eval_replies], inp.tokenizer, inp.template,
                                           max_new_tokens=inp.probe_tokens))
            if inp.heldout_texts:
                row.update(heldout_perplexity(raw, inp.heldout_texts, inp.tokenizer, max_tokens=inp.heldout_tokens,
                                              device=self.device, autocast_ctx=self.ctx(),
                                              batch_size=cfg.batch_size))
            if inp.probes:
                answers = probe_answers(raw, inp.probes, inp.tokenizer, inp.template,
                                        max_new_tokens=inp.probe_tokens)
                row.update(write_probe_answers(inp.out_dir / "probes" / f"step_{at_step}.jsonl", at_step, answers))
        self.acc.wait_for_everyone()
        return row

    def save(self, st: PhaseState, val_loss: Optional[float]) -> None:
        """Atomic checkpoint: every rank writes its RNG, rank 0 commits and rotates."""
        out, acc, at_step = self.inp.out_dir, self.acc, st.step
        if self.main:
            ck.begin(out, at_step)
        acc.wait_for_everyone()
        ck.write_rng(ck.tmp_dir(out, at_step), self.rank)
        acc.wait_for_everyone()
        if self.main:
            cfg, raw = self.cfg, self.raw
            state = {"step": at_step, "rows_consumed": st.rows_consumed, "optimizer": self.opt.state_dict(),
                     "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                     "guard": self.guard.state_dict(), "best_val_loss": st.best, "world_size": self.W,
                     "global_batch": self.G, "epoch": st.rows_consumed / len(self.inp.train)}
            path = ck.commit(out, at_step, raw, trainer_state=state, config=cfg.to_dict(),
                             template=self.inp.template, tokenizer=self.inp.tokenizer,
                             training_meta={"config": cfg.to_dict(), "step": at_step, "val_loss": val_loss,
                                            "rows_consumed": st.rows_consumed},
                             export_original=cfg.export_original and raw.config.architecture == "original",
                             fault=lambda point: _fault(point, at_step))
            removed = ck.rotate(out, cfg.keep_last)
            self.metrics.write({"step": at_step, "event": "checkpoint", "path": str(path),
                                "removed": [p.name for p in removed]})
        acc.wait_for_everyone()

    def train_step(self, st: PhaseState) -> tuple[dict, str, list]:
        """One optimizer step (steps 1-4 of the module docstring). Advances st.step and
        st.rows_consumed; returns (the metrics row, the guard's verdict, the step's row ids)."""
        cfg, W, device, scaler = self.cfg, self.W, self.device, self.scaler
        t0 = time.time()
        # 1. learning rate for this optimizer step (0-based index `step`)
        lr = lr_at(st.step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                   schedule=cfg.schedule, min_lr_ratio=cfg.min_lr_ratio)
        # 2. this rank's share of the global batch, and the global count of trained tokens
        rows = self.stream.step_rows(st.rows_consumed, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                                     rank=self.rank, world_size=W)
        local_trained = sum(count_trained_tokens(mb["labels"]) for mb in rows.micro_batches)
        local_tokens = sum(int(mb["lengths"].sum()) for mb in rows.micro_batches)
        n_global, tokens_global = (int(x) for x in self.reduce_sum([local_trained, local_tokens]))
        # 3. forward/backward: DDP averages gradients over W ranks, so W / n_global makes the result
        #    sum(token losses) / n_global; no all-reduce until the last micro-batch (no_sync)
        scale = (W / n_global) if n_global else 0.0
        backward = (lambda l: scaler.scale(l).backward()) if scaler is not None else None
        # the micro-batch losses stay on the device (float64: the same sum as adding Python floats)
        loss_local = torch.zeros((), dtype=torch.float64, device=device)
        for i, mb in enumerate(rows.micro_batches):
            last = i == len(rows.micro_batches) - 1
            sync = contextlib.nullcontext() if (last or W == 1) else self.acc.no_sync(self.model)
            with sync:
                pos = mb["positions"].to(device) if "positions" in mb else None   # packed rows
                # the trained positions from the host's labels: no device read in the step
                index = label_index(mb["labels"]).to(device)
                ls, _ = micro_step(self.model, mb["input_ids"].to(device), mb["labels"].to(device),
                                   autocast_ctx=self.ctx(), loss_scale=scale, backward=backward, positions=pos,
                                   sync=False, label_index=index)
            loss_local += ls.double()
        loss = self.reduce_sum([loss_local])[0] / max(1, n_global)
        # 4. clip + AdamW step, unless the loss or the gradient is NaN/inf (then nothing is applied)
        if math.isfinite(loss) and n_global:
            grad_norm = optimizer_step(self.raw, self.opt, lr=lr, grad_clip=cfg.grad_clip, scaler=scaler)
        else:
            self.opt.zero_grad(set_to_none=True)
            grad_norm = float("nan")
        verdict = self.guard.check(st.step + 1, loss, grad_norm)
        st.step += 1
        st.rows_consumed += self.G
        _fault("after_step", st.step)
        dt = time.time() - t0
        row = {"step": st.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
               "tokens_per_s": tokens_global / dt if dt > 0 else None, "trained_tokens": n_global,
               "tokens": tokens_global, "epoch": st.rows_consumed / len(self.inp.train)}
        return row, verdict, rows.row_ids

    def log_step(self, row: dict, verdict: str, row_ids: list, bar) -> None:
        """5. log the step (metrics.jsonl, progress bar, trackers) and say what the guard saw."""
        step, loss, grad_norm, guard = row["step"], row["loss"], row["grad_norm"], self.guard
        self.metrics.write(row)
        if verdict == "nonfinite":
            # event rows never carry "loss"/"grad_norm" keys: plots read those as the training series
            self.metrics.write({"step": step, "event": "nonfinite", "bad_loss": loss, "bad_grad_norm": grad_norm,
                                "rows": row_ids[:16]})
            self.say(f"step {step}: NaN/inf (loss {loss}, grad norm {grad_norm}): step skipped "
                     f"({guard.consecutive_bad} in a row, stop at {guard.max_bad})")
        elif verdict == "spike":
            self.metrics.write({"step": step, "event": "loss_spike", "spike_loss": loss, "ema": guard.ema})
            self.say(f"ALARM step {step}: loss {loss:.3f} is over {guard.spike_factor:g}x its running average "
                     f"{guard.ema:.3f} (check lr and data)")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s'] or 0:,.0f}")
        if self.acc.trackers:
            self.acc.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}, step=step)


def run_phase(cfg: Config, inp: PhaseInputs, accelerator) -> dict:
    """Train one phase to cfg.max_steps (resuming when inp.resume_from is set). Returns a summary.
    With cfg.compile_blocks the kernels' plain twins run (compiled blocks fuse them)."""
    with reference_kernels() if cfg.compile_blocks else contextlib.nullcontext():
        return _run_phase(cfg, inp, accelerator)


def _run_phase(cfg: Config, inp: PhaseInputs, accelerator) -> dict:
    ph = Phase(cfg, inp, accelerator)
    st = ph.start()
    eval_s = None
    if st.step == 0 and inp.eval_at_start and inp.resume_from is None:
        t_eval = time.time()
        st.last_eval = ph.evaluate(0)
        eval_s = time.time() - t_eval
        ph.metrics.write(st.last_eval)
        ph.say("eval step 0: " + _fmt(st.last_eval))
    bar = None
    if inp.progress and ph.main:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.max_steps, initial=st.step, desc=f"{cfg.strategy}", unit="step", dynamic_ncols=True)
        ph.say.bar = bar
    t_start = time.time()
    first, step_times = st.step, []
    while st.step < cfg.max_steps:
        # 1-4. lr, this rank's rows, forward/backward, clip + AdamW step
        t_step = time.time()
        row, verdict, row_ids = ph.train_step(st)
        if st.step > first + 1 and len(step_times) < TIMED_STEPS:   # the first step warms up: not timed
            step_times.append(time.time() - t_step)
            if len(step_times) == TIMED_STEPS and st.step < cfg.max_steps:
                evals_left = sum(1 for s in range(st.step, cfg.max_steps + 1)   # this step's comes next
                                 if s % cfg.eval_every == 0 or s == cfg.max_steps)
                ph.say(remaining_time(step_times, cfg.max_steps - st.step, evals_left, eval_s))
        # 5. log
        row["elapsed_s"] = round(time.time() - t_start, 3)
        ph.log_step(row, verdict, row_ids, bar)
        st.losses.append(row["loss"])
        # 6. evaluate and checkpoint
        step = st.step
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            t_eval = time.time()
            st.last_eval = ph.evaluate(step)
            eval_s = time.time() - t_eval
            ph.metrics.write(st.last_eval)
            if accelerator.trackers:
                accelerator.log({k: v for k, v in st.last_eval.items() if k != "step"}, step=step)
            _stop_on_nonfinite_val(st.last_eval, step, inp.out_dir)
            if "val_loss" in st.last_eval and (st.best is None or st.last_eval["val_loss"] < st.best):
                st.best = st.last_eval["val_loss"]
            ph.say(f"eval step {step}: " + _fmt(st.last_eval))
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            ph.save(st, st.last_eval.get("val_loss") if st.last_eval.get("step") == step else None)
    if bar is not None:
        bar.close()
        ph.say.bar = None
    return {"steps": st.step, "rows_consumed": st.rows_consumed, "losses_this_run": st.losses,
            "last_eval": st.last_eval, "best_val_loss": st.best, "precision": ph.precision, "world_size": ph.W}


def grad_comm(cfg: Config, device: torch.device, world_size: int) -> str:
    """The dtype of the gradient all-reduce: "none" for one process, else cfg.grad_comm resolved
    ("auto": bf16 on CUDA, fp32 on CPU)."""
    if world_size < 2:
        return "none"
    if cfg.grad_comm == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.grad_comm


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
            durable.replace_file(tmp_pt, out / "final_model.pt")
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
        durable.write_atomic(out / "result.json",
                             json.dumps(finite_or_none(res), indent=2, allow_nan=False) + "\n")
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        res = json.loads((out / "result.json").read_text(encoding="utf-8"))
    return res
