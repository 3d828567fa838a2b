"""Wall time and disk of a fine-tuning run, before it starts (`mambaft plan`, notebook 03, the finetune
header).

    time  = steps x seconds per optimizer step + evaluations x seconds per evaluation + checkpoints
    disk <= min(keep_last + 2, checkpoints written) x (4 B x parameters + 8 B x trainable + 4 B x parameters when the
            original .pt is exported too) + final/ (4 B x parameters) + final_model.pt (when exported)
            (keep_last newest + the best by val loss + the one being written before rotation; x2 phases)

Seconds per step come from one of two sources, and every printed line says which:
  * "measured": `steps` real optimizer steps (the loop's micro_step + optimizer_step, the run's own
    batches, precision and accumulation) on a copy of the model on this machine; the first is a
    warm-up and not counted. Evaluation: validation forward ~1/3 of a training step per row
    (no backward), greedy replies and probes from a measured decode step.
  * "table": model FLOPs (mambaft.bench.flops.train_flops) / (the card's nominal dense bf16 peak x
    ASSUMED_MFU), plus the gradient all-reduce at an assumed bus bandwidth. Neither number was measured
    on a GPU: `make gpu-check` measures the MFU; until then the table is a planning figure, not a promise.

    mambaft plan quick --budget cpu --measure      # this machine, measured, and the plan's 6 GPUs
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from mambaft import runtime
from mambaft.bench.flops import NOMINAL_BF16_PEAK, train_flops

# Not measured (no GPU was lent): a 124M Mamba in PyTorch eager (many small fp32 elementwise kernels
# around bf16 GEMMs, the chunked scan in plain PyTorch) is assumed to reach 15% of the dense bf16 peak;
# nanoGPT's 124M transformer reaches ~40% on an A100 with torch.compile, and this model has more
# memory-bound work per FLOP. Replace it with gpu_check's measured MFU when one exists.
ASSUMED_MFU = 0.15
# Not measured: an RTX 4090 box with NCCL_P2P_DISABLE=1 all-reduces through host memory over PCIe 4.0
# x16 (32 GB/s per direction nominal); 10 GB/s of effective bus bandwidth is assumed.
ASSUMED_BUS_BYTES_S = 10e9
# The tokenizer and config files beside every saved model (GPT-2's tokenizer.json, vocab, merges):
# 3.6 MB measured in a 124M run's checkpoints and final/ (1,289,903,467 B = 4 B x params + 8 B x
# trainable + 3.6 MB), rounded up.
MODEL_FOLDER_EXTRA_BYTES = 4_000_000
# Not measured here: checkpoints written at 300 MB/s (a SATA SSD; NVMe is faster).
ASSUMED_WRITE_BYTES_S = 300e6
PLAN_GPU = "RTX 4090"           # the user's box: 6 x RTX 4090 (24 GB)


@dataclass
class Estimate:
    """One estimate of a run on one kind of machine (seconds and bytes; `lines()` prints it)."""
    where: str                   # "this machine (cpu, ...)" | "6 x RTX 4090"
    source: str                  # how step_s was obtained (measured ... | table ...)
    steps: int
    step_s: float
    evals: int = 0
    eval_s: float = 0.0          # per evaluation
    saves: int = 0
    save_s: float = 0.0          # per checkpoint
    disk_bytes: int = 0
    disk_note: str = ""
    notes: list = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return self.steps * self.step_s + self.evals * self.eval_s + self.saves * self.save_s

    def lines(self) -> list[str]:
        out = [f"estimate on {self.where} ({self.source}):",
               f"  training    {self.steps:,} steps x {self.step_s:.3g} s = {duration(self.steps * self.step_s)}"]
        if self.evals:
            out.append(f"  evaluation  {self.evals} x {self.eval_s:.3g} s = {duration(self.evals * self.eval_s)}")
        if self.saves:
            out.append(f"  checkpoints {self.saves} x {self.save_s:.3g} s = {duration(self.saves * self.save_s)}")
        out.append(f"  total ~{duration(self.total_s)}; disk up to {self.disk_bytes / 1e9:.2f} GB ({self.disk_note})")
        out += [f"  note: {n}" for n in self.notes]
        return out


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


TIMED_STEPS = 3      # steps timed before the run says how long it will take (after one warm-up step)


def remaining_time(step_times: list, steps_left: int, evals_left: int, eval_s: Optional[float],
                   now: Optional[float] = None) -> str:
    """The line a run prints once it has timed its first steps: the median step (the first step of a
    run, with its allocations and thread start-up, is left out by the caller) times the steps left,
    plus the evaluations left at the last evaluation's duration, and the clock time it ends."""
    step_s = statistics.median(step_times)
    total = step_s * steps_left + (eval_s or 0.0) * evals_left
    evals = (f" + {evals_left} evaluations x {eval_s:.3g} s" if eval_s is not None
             else f" + {evals_left} evaluations (not timed yet)") if evals_left else ""
    end = time.strftime("%H:%M", time.localtime((time.time() if now is None else now) + total))
    return (f"time: {step_s:.3g} s/step (median of {len(step_times)} timed steps) x {steps_left} steps left"
            f"{evals} = about {duration(total)} (ends about {end})")


def phase_steps(cfg) -> int:
    return cfg.max_steps + (cfg.phase2_steps if cfg.strategy == "specialized" else 0)


def checkpoint_bytes(cfg, n_params: int, n_trainable: int, original_arch: bool = True) -> int:
    """One checkpoint: fp32 model.safetensors + AdamW exp_avg and exp_avg_sq (fp32) + the original .pt
    when exported."""
    weights = 4 * n_params
    return weights + 8 * n_trainable + (weights if (cfg.export_original and original_arch) else 0) + \
        MODEL_FOLDER_EXTRA_BYTES


def disk_bytes(cfg, n_params: int, n_trainable: int, original_arch: bool = True) -> tuple[int, str]:
    """(bytes, how) the run folder can hold at its fullest (see the module docstring)."""
    weights = 4 * n_params                       # fp32 model.safetensors
    export = weights if (cfg.export_original and original_arch) else 0
    ckpt = checkpoint_bytes(cfg, n_params, n_trainable, original_arch)
    phases = 2 if cfg.strategy == "specialized" else 1
    per_phase_saves = max(1, math.ceil(cfg.max_steps / cfg.save_every))
    kept = min(cfg.keep_last + 2, per_phase_saves)   # never more than the run writes
    total = phases * (kept * ckpt + weights + export + MODEL_FOLDER_EXTRA_BYTES)
    return total, (f"{phases} phase(s) x ({kept} checkpoints x {ckpt / 1e9:.2f} GB + final "
                   f"{(weights + export + MODEL_FOLDER_EXTRA_BYTES) / 1e9:.2f} GB)")


def _evals(cfg, eval_at_start: bool) -> tuple[int, int]:
    steps = phase_steps(cfg)
    phases = 2 if cfg.strategy == "specialized" else 1
    evals = math.ceil(cfg.max_steps / cfg.eval_every) + (math.ceil(cfg.phase2_steps / cfg.eval_every)
                                                          if phases == 2 else 0)
    saves = math.ceil(cfg.max_steps / cfg.save_every) + (math.ceil(cfg.phase2_steps / cfg.save_every)
                                                          if phases == 2 else 0)
    return evals + (phases if eval_at_start else 0), min(saves, steps)


def _micro_batches(stream, cfg, step: int, world_size: int, synthetic: Optional[tuple]):
    if synthetic is not None:
        vocab, length = synthetic
        g = torch.Generator().manual_seed(step)
        ids = torch.randint(0, vocab, (cfg.batch_size, length), generator=g)
        return [{"input_ids": ids, "labels": ids.clone()} for _ in range(cfg.grad_accum)]
    return stream.step_rows(step * cfg.batch_size * cfg.grad_accum * world_size, batch_size=cfg.batch_size,
                            grad_accum=cfg.grad_accum, rank=0, world_size=world_size).micro_batches


def measure(model, cfg, train=None, *, pad_id: int = 50256, device: Optional[torch.device] = None,
            steps: int = 3, world_size: int = 1, decode: bool = True) -> dict:
    """Time `steps` optimizer steps of the run (first one a warm-up) on a COPY of `model`, with the
    run's batches (`train`: the prepared split; None: full-length random rows, an upper bound), and
    one greedy decode step at batch 8. Returns {"step_s", "row_forward_s", "decode_token_s", "tokens"}."""
    from .batches import RowStream, packs_one_row
    from .optim import run_optimizer
    from .step import count_trained_tokens, micro_step, optimizer_step
    from .trim import context_seen

    device = device or torch.device("cpu")
    m = copy.deepcopy(model).to(device)
    m.train()
    precision = runtime.resolve_precision(cfg.precision, device)
    max_len = m.config.max_seq_len
    stream, synthetic = None, None
    if train is None:
        synthetic = (m.config.vocab_size, min(cfg.max_seq_len, max_len))
    else:
        stream = RowStream(train, seed=cfg.seed, pad_id=pad_id, max_len=max_len,
                           pack_to=min(cfg.max_seq_len, max_len) if cfg.packing else None,
                           one_row=packs_one_row(m.config.architecture),
                           trim_to=context_seen(m.config) if cfg.trim_context else None)
    opt = run_optimizer(m, cfg)
    times, tokens = [], []
    for s in range(max(2, steps)):
        mbs = _micro_batches(stream, cfg, s, world_size, synthetic)
        sync(device)
        t0 = time.perf_counter()
        n = sum(count_trained_tokens(mb["labels"]) for mb in mbs) * world_size   # the other ranks alike
        for mb in mbs:
            pos = mb["positions"].to(device) if "positions" in mb else None
            micro_step(m, mb["input_ids"].to(device), mb["labels"].to(device),
                       autocast_ctx=runtime.autocast(device, precision), loss_scale=world_size / max(1, n),
                       positions=pos)
        optimizer_step(m, opt, lr=cfg.lr, grad_clip=cfg.grad_clip)
        sync(device)
        times.append(time.perf_counter() - t0)
        tokens.append(sum(int(mb["input_ids"].numel()) for mb in mbs))
    step_s = statistics.median(times[1:])
    rows = cfg.batch_size * cfg.grad_accum
    out = {"step_s": step_s, "row_forward_s": step_s / rows / 3.0,   # forward ~1/3 of forward + backward
           "tokens": statistics.fmean(tokens[1:]), "steps_timed": len(times) - 1, "precision": precision}
    out["decode_token_s"] = _decode_token_s(m, device) if decode else 0.0
    del m, opt
    return out


def _decode_token_s(model, device, batch: int = 8, prompt: int = 16, new: int = 4) -> float:
    """Seconds per generated token per row, greedy, at `batch` rows (what replies and probes cost)."""
    from mambaft.generate import generate
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        generate(model, ids.to(device), max_new_tokens=1)                     # warm-up
        sync(device)
        t0 = time.perf_counter()
        generate(model, ids.to(device), max_new_tokens=new)
        sync(device)
    return (time.perf_counter() - t0) / (batch * new)


def sync(device) -> None:
    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def measured_estimate(cfg, measured: dict, *, where: str, n_params: int, n_trainable: int,
                      world_size: int = 1, eval_replies: Optional[int] = None, n_probes: int = 0,
                      probe_tokens: int = 64, heldout_tokens: int = 0, eval_at_start: bool = True,
                      original_arch: bool = True, val_size: Optional[int] = None) -> Estimate:
    """The run's estimate from `measure`'s numbers (on this machine, `world_size` processes).
    `val_size`: rows of the validation split (evaluation takes at most that many rows and replies)."""
    evals, saves = _evals(cfg, eval_at_start)
    replies = cfg.eval_replies if eval_replies is None else eval_replies
    rf, dt = measured["row_forward_s"], measured["decode_token_s"]
    val_rows = cfg.eval_batches * cfg.batch_size
    if val_size is not None:
        val_rows, replies = min(val_rows, val_size), min(replies, val_size)
    val_rows = val_rows / world_size                                   # shared by the ranks
    row_len = measured["tokens"] / (cfg.batch_size * cfg.grad_accum)
    eval_s = val_rows * rf + (replies + n_probes) * probe_tokens * dt + heldout_tokens / max(1.0, row_len) * rf
    disk, note = disk_bytes(cfg, n_params, n_trainable, original_arch)
    ckpt = checkpoint_bytes(cfg, n_params, n_trainable, original_arch)
    est = Estimate(where=where, source=f"measured: {measured['steps_timed']} steps of this run's batches, "
                   f"{measured['precision']}", steps=phase_steps(cfg), step_s=measured["step_s"], evals=evals,
                   eval_s=eval_s, saves=saves, save_s=ckpt / ASSUMED_WRITE_BYTES_S, disk_bytes=disk, disk_note=note)
    est.notes.append(f"evaluation = {val_rows:g} val rows x {rf:.3g} s + {replies + n_probes} greedy replies x "
                     f"{probe_tokens} tokens x {dt:.3g} s/token/row" + (f" + {heldout_tokens} held-out tokens"
                                                                         if heldout_tokens else ""))
    return est


def table_estimate(cfg, model_config, gpu: str = PLAN_GPU, world_size: Optional[int] = None, *,
                   n_params: int, n_trainable: int, row_tokens: Optional[float] = None,
                   grad_bytes_per_param: Optional[int] = None, mfu: float = ASSUMED_MFU) -> Estimate:
    """Training time on `world_size` x `gpu` from the FLOP count, the card's nominal bf16 peak and an
    assumed MFU, plus the all-reduce of the gradients (4 B fp32, 2 B with the bf16 comm hook, which
    cfg.grad_comm "auto" uses on GPUs)."""
    W = world_size or cfg.num_gpus
    if grad_bytes_per_param is None:
        grad_bytes_per_param = 4 if cfg.grad_comm == "fp32" else 2
    peak = next((p for k, p in NOMINAL_BF16_PEAK.items() if k in gpu), None)
    if peak is None:
        raise ValueError(f"gpu {gpu!r}: no nominal bf16 peak known (known: {', '.join(NOMINAL_BF16_PEAK)})")
    L = int(row_tokens or cfg.max_seq_len)
    mc = model_config
    flops = cfg.grad_accum * train_flops(cfg.batch_size, L, mc.d_model, mc.n_layers, mc.vocab_size,
                                         mc.dense_hidden_dim, mc.d_conv, mc.expand)
    compute_s = flops / (peak * mfu)
    grad = n_trainable * grad_bytes_per_param
    comm_s = 2 * (W - 1) / W * grad / ASSUMED_BUS_BYTES_S if W > 1 else 0.0   # ring all-reduce per GPU
    disk, note = disk_bytes(cfg, n_params, n_trainable)
    est = Estimate(where=f"{W} x {gpu}", source=f"table: {peak / 1e12:.0f} TFLOP/s nominal bf16 x assumed "
                   f"{mfu:.0%} MFU, not measured on a GPU", steps=phase_steps(cfg), step_s=compute_s + comm_s,
                   disk_bytes=disk, disk_note=note)
    est.notes.append(f"per GPU and step: {cfg.grad_accum} x {cfg.batch_size} rows x {L} tokens = "
                     f"{flops / 1e12:.1f} TFLOP ({compute_s:.3g} s) + all-reduce of {grad / 1e6:.0f} MB "
                     f"({'bf16' if grad_bytes_per_param == 2 else 'fp32'}) "
                     f"({comm_s * 1e3:.0f} ms at an assumed {ASSUMED_BUS_BYTES_S / 1e9:g} GB/s); evaluations not counted")
    if cfg.max_seq_len == L and row_tokens is None:
        est.notes.append(f"every row counted at max_seq_len={L} tokens: an upper bound (rows are padded per "
                         "micro-batch, most are shorter)")
    return est


def activation_bytes(model, device: Optional[torch.device] = None, precision: str = "auto",
                     lengths: tuple = (64, 128)) -> tuple[float, float]:
    """(bytes per token, fixed bytes) that autograd keeps for the backward of one training forward,
    measured by counting the storage of every saved tensor (torch.autograd.graph.saved_tensors_hooks)
    at two lengths of one row: the slope is per token, the rest is fixed (weights, the loss kernel's
    [V, D] gradient). The same count on any device for the same dtypes; allocator slack and kernel
    workspaces come on top (planned with headroom)."""
    device = device or torch.device("cpu")
    m = copy.deepcopy(model).to(device)
    m.train()
    prec = runtime.resolve_precision(precision, device)
    totals = []
    for L in lengths:
        seen: dict = {}

        def pack(t, seen=seen):
            s = t.untyped_storage()
            seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
            return t
        ids = torch.randint(0, m.config.vocab_size, (1, L), generator=torch.Generator().manual_seed(L)).to(device)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), runtime.autocast(device, prec):
            out = m(ids, labels=ids, return_logits=False, loss_reduction="sum")
        del out
        totals.append(sum(seen.values()))
    per_token = (totals[1] - totals[0]) / (lengths[1] - lengths[0])
    return per_token, totals[0] - per_token * lengths[0]
