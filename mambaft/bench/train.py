"""`python -m mambaft.bench train`: the fine-tuning step, mambaft against the original computation.

mambaft side: exactly what the fine-tune loop runs (mambaft.train.loop): `freeze_dead()`,
`build_optimizer` (fused AdamW, trainable parameters only), `micro_step` (bf16 autocast where the
hardware runs it, chunked fused loss, no [B, L, V] logits) and `optimizer_step` (clip 1.0, step,
zero_grad), in a process started with mambaft's launcher environment (`runtime.LAUNCH_ENV`: glibc malloc
tunables, OMP_WAIT_POLICY=PASSIVE). Original side: bench/original.py (fp32, full logits +
cross-entropy, default AdamW on every parameter, no clipping), in a process with the defaults.

Every position of a row is trained (labels = input_ids), so both compute the loss on the same tokens.
A step = one micro-batch (--accum 1) + one optimizer step; tokens/s = batch x seq / median step time.

    python -m mambaft.bench train                         # 124M, 4 x 1024, mambaft bf16 + fp32 (~4 min)
    python -m mambaft.bench train --impl mambaft --precision fp32 --batch 1 --seq 512
    python -m mambaft.bench train --device cuda --batch 4 --seq 1024 --precision bf16 \
        --compile off,on --steps 10 --warmup 3             # GPU: MFU with and without torch.compile
"""
from __future__ import annotations

import contextlib

import torch

from mambaft import runtime

from . import flops
from .harness import live_bytes, peak_alloc_bytes, timed, worker_device


def add_args(p) -> None:
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--n-layers", type=int, default=6)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--dense", type=int, default=None, help="dense head width (default 2 x d_model)")
    # 4 x 1024 = the original's pretraining micro-batch (and the GPU target's); the conversational
    # preset's micro-batch is 2 x 1024. At 4 x 1024 the default run takes about 4 minutes on 2 cores.
    p.add_argument("--batch", type=int, default=4, help="rows per micro-batch")
    p.add_argument("--seq", type=int, default=1024, help="tokens per row (the model's 1024 positions)")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--steps", type=int, default=2, help="timed steps per implementation (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--dropout", type=float, default=0.1, help="as the 124M model (active in training)")
    p.add_argument("--precision", default="auto,fp32",
                   help="mambaft precisions, comma-separated: auto (bf16 where native), bf16, fp32")
    p.add_argument("--original-precision", default="fp32", choices=["fp32", "bf16"],
                   help="fp32: the original computation as specified; bf16: under autocast, as its "
                        "pretraining ran on GPUs")
    p.add_argument("--compile", default="off", help="mambaft with torch.compile: off, on, or off,on")


def variants(args) -> list:
    from .harness import Variant
    out = []
    if args.impl in ("mambaft", "both"):
        for prec in args.precision.split(","):
            for comp in args.compile.split(","):
                opts = {"precision": prec.strip()}
                if comp.strip() == "on":
                    opts["compile"] = True
                out.append(Variant("mambaft", opts))
    if args.impl in ("original", "both"):
        out.append(Variant("original", {"precision": args.original_precision}))
    return out


def cases(args) -> list:
    return [{"batch": args.batch, "seq": args.seq, "accum": args.accum}]


def _dims(a: dict) -> dict:
    return {"d_model": a["d_model"], "n_layers": a["n_layers"], "vocab": a["vocab"],
            "dense": a["dense"] or 2 * a["d_model"]}


class TrainRunner:
    """Builds one implementation's model, optimizer and batch; `run` times one optimizer step."""

    def __init__(self, spec: dict):
        a, impl, opts = spec["args"], spec["impl"], spec["opts"]
        self.device = dev = worker_device(a)
        d = _dims(a)
        case = spec["cases"][0]
        max_len = max(1024, case["seq"])
        g = torch.Generator().manual_seed(a["seed"])
        self.batches = [torch.randint(0, d["vocab"], (case["batch"], case["seq"]), generator=g).to(dev)
                        for _ in range(case["accum"])]
        self.impl = impl
        self.gemm_shape = flops.gemm_shape(dev, case["batch"] * case["seq"], d["d_model"])
        if impl == "mambaft":
            from mambaft.model import MambaSWELU, MambaSWELUConfig
            from mambaft.train.optim import build_optimizer
            cfg = MambaSWELUConfig(vocab_size=d["vocab"], d_model=d["d_model"], n_layers=d["n_layers"],
                                   max_seq_len=max_len, dense_hidden_dim=d["dense"], dropout=a["dropout"])
            self.model = MambaSWELU(cfg).to(dev).train()
            frozen = self.model.freeze_dead()                 # as mambaft.train.run does
            self.opt = build_optimizer(self.model, lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95))
            self.precision = runtime.resolve_precision(opts.get("precision", "auto"), dev)
            self.fwd = torch.compile(self.model) if opts.get("compile") else self.model
        else:
            from .original import OriginalMambaSWELU, original_optimizer
            self.model = OriginalMambaSWELU(d["vocab"], d["d_model"], d["n_layers"], max_len, d["dense"],
                                            a["dropout"]).to(dev).train()
            frozen = 0
            self.opt = original_optimizer(self.model)
            self.precision = opts.get("precision", "fp32")
        self.info = {"precision": self.precision, "device": str(dev), "threads": torch.get_num_threads(),
                     "trainable_params": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                     "frozen_params": frozen, "compile": bool(opts.get("compile", False))}

    def step(self) -> float:
        if self.impl == "mambaft":
            from mambaft.train.step import count_trained_tokens, micro_step, optimizer_step
            n = sum(count_trained_tokens(ids) for ids in self.batches)
            total = 0.0
            for ids in self.batches:
                ls, _ = micro_step(self.fwd, ids, ids, autocast_ctx=runtime.autocast(self.device, self.precision),
                                   loss_scale=1.0 / n)
                total += ls
            optimizer_step(self.model, self.opt, lr=1e-4, grad_clip=1.0)
            return total / n
        from .original import original_train_step
        ctx = (runtime.autocast(self.device, "bf16") if self.precision == "bf16"
               else contextlib.nullcontext())
        with ctx:
            return original_train_step(self.model, self.opt, [(ids, ids) for ids in self.batches])

    def run(self, case_index: int) -> dict:
        seconds, loss = timed(self.step, self.device)
        # GEMM peak samples right after the step, under the same background load (the parent keeps
        # the best of all samples: a peak measured once, in a busy moment, would inflate the MFU)
        peak = {"fp32": flops.matmul_peak(self.device, torch.float32, self.gemm_shape, repeats=2),
                "bf16": flops.matmul_peak(self.device, torch.bfloat16, self.gemm_shape, repeats=2)}
        return {"seconds": seconds, "loss": loss, "gemm_peak": peak}

    def mem(self, case_index: int) -> int:
        return peak_alloc_bytes(self.step, self.device, live_bytes(self.model, self.opt, self.batches))


def summarize(m, args, peaks: dict) -> dict:
    """One JSON object for a Measured train case."""
    a = vars(args)
    d = _dims(a)
    c = m.case
    tokens = c["batch"] * c["seq"] * c["accum"]
    model_flops = flops.train_flops(c["batch"], c["seq"], d["d_model"], d["n_layers"], d["vocab"],
                                    d["dense"]) * c["accum"]
    achieved = model_flops / m.median_s
    prec = m.info.get("precision", "fp32")
    peak = peaks.get("bf16" if prec in ("bf16", "fp16") else "fp32")
    obj = {
        "bench": "train", "impl": m.variant.impl, "precision": prec, "compile": m.info.get("compile", False),
        "tokens_per_s": tokens / m.median_s, "peak_mem_mb": m.peak_mem_mb, "peak_rss_mb": m.peak_rss_mb,
        "peak_mem_method": PEAK_METHOD[m.info.get("device", "cpu").split(":")[0]],
        **d, "batch": c["batch"], "seq": c["seq"], "accum": c["accum"], "tokens_per_step": tokens,
        "steps": len(m.runs), "warmup": args.warmup, "median_step_s": m.median_s,
        "step_s": [round(s, 4) for s in m.seconds], "loss": m.runs[-1].get("loss"),
        "device": m.info.get("device"), "threads": m.info.get("threads"), "malloc": m.info.get("malloc"),
        "omp_wait_policy": m.info.get("omp_wait_policy"),
        "trainable_params": m.info.get("trainable_params"),
        "model_gflop_per_step": model_flops / 1e9, "achieved_gflops": achieved / 1e9,
        "peak_gflops_fp32": peaks.get("fp32", 0) / 1e9, "peak_gflops_bf16": peaks.get("bf16", 0) / 1e9,
        "mfu": achieved / peak if peak else None,
    }
    if peaks.get("nominal_bf16"):
        obj["gpu"] = peaks.get("gpu")
        obj["mfu_nominal_bf16"] = achieved / peaks["nominal_bf16"]
    return obj


PEAK_METHOD = {
    "cpu": "torch tensor allocations (profiler memory events) incl. live weights/optimizer/inputs",
    "cuda": "torch.cuda.max_memory_allocated",
}
