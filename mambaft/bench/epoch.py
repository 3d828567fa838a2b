"""`python -m mambaft.bench epoch`: trained tokens per second over a real prepared set, mambaft vs original.

What a user waits on is an epoch of real conversations (lengths from 20 to max_seq_len tokens, the
prompts untrained), not one synthetic step where every position trains. Each optimizer step takes the
next G = batch x accum rows of the seeded epoch order (`mambaft.train.batches.RowStream`, the fine-tune
loop's own) and every side trains on exactly those rows:

--layouts picks mambaft's sides (default sorted,packed+trim):
    mambaft  sorted          the loop's default: the step's rows sorted by length, cut into `accum`
                             micro-batches, each padded to its longest row (`micro_step`,
                             `optimizer_step`, fused AdamW, chunked loss on trained tokens only)
    mambaft  packed          the same rows packed as the loop packs them (`Config.packing`): for
                             this conv-only model one unpadded row of up to batch x max_seq_len
                             tokens per micro-batch, as few micro-batches as fit
    mambaft  +trim           either layout with `Config.trim_context`: each row keeps only the tokens
                             a trained prediction sees (mambaft.train.trim: the 19-token receptive
                             field; the same trained tokens, logits and gradients)
    original padding=batch   bench/original.py on the same sorted micro-batches padded to their longest
                             row: the most generous baseline (the original code had no such sorting)
    original padding=max     the same micro-batches padded to max_seq_len, as a fixed-shape loop does

trained_tokens_per_s = tokens with a label (the same count on every side) / wall seconds of the steps.
Each side also reports the tokens it computed (padding included), its padding fraction (computed
tokens that are padding) and its trained fraction (trained / computed). Steps alternate between the
sides' worker processes (the order reversed every step), one untimed warm-up step first.
`epoch_s` is the measured time scaled to the whole epoch when --steps cuts it short (`epoch_s_measured`
says so). `--preset quick` (any strategy) takes batch, accum and max_seq_len from
`mambaft.config.make_config(strategy)`, what that fine-tune trains per step; --batch, --accum and
--max-seq-len still override it.

    python -m mambaft.bench epoch --data outputs/data_alpaca --steps 8
    python -m mambaft.bench epoch --data outputs/data_alpaca --preset quick --impl mambaft --steps 4
    python -m mambaft.bench epoch --data outputs/data_conv --precision fp32 --steps 6 --batch 2 --accum 4
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import torch

from mambaft import runtime
from mambaft.config import STRATEGIES, make_config
from mambaft.template import IGNORE_INDEX

from .harness import timed, worker_device
from .train import _dims

PAD_ID = 50256   # GPT-2's end token: padding is masked by length (labels -100), never by id
# mambaft's sides: Config.packing and Config.trim_context
LAYOUTS = {"sorted": {"packing": False, "trim": False}, "packed": {"packing": True, "trim": False},
           "sorted+trim": {"packing": False, "trim": True}, "packed+trim": {"packing": True, "trim": True}}


def add_args(p) -> None:
    p.add_argument("--data", required=False, default=None,
                   help="a prepared folder (mambaft prepare --out DIR: a DatasetDict with a train split)")
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--n-layers", type=int, default=6)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--dense", type=int, default=None, help="dense head width (default 2 x d_model)")
    p.add_argument("--preset", default=None, choices=STRATEGIES,
                   help="batch, accum and max_seq_len of this strategy's config (make_config)")
    p.add_argument("--max-seq-len", type=int, default=None,
                   help="rows padded/packed to this (default: the preset's, else the prepared set's)")
    p.add_argument("--batch", type=int, default=None, help="rows per micro-batch (default: the preset's, else 4)")
    p.add_argument("--accum", type=int, default=None,
                   help="micro-batches per optimizer step (default: the preset's, else 2)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: one epoch)")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--precision", default="auto", help="mambaft precision: auto (bf16 where native), fp32, bf16")
    # each side is one worker process holding a model and its optimizer: at 124M 3-6 GB each, so the
    # default 2 + 2 original sides fit in 24 GiB and 4 + 2 did not (OOM-killed, 2026-12-02)
    p.add_argument("--layouts", default="sorted,packed+trim",
                   help=f"mambaft sides, any of {','.join(LAYOUTS)} (each one worker process: 3-6 GB at 124M)")
    p.add_argument("--padding", default="batch,max", help="original sides: batch, max or batch,max")
    p.add_argument("--compile", action="store_true", help="mambaft's model under torch.compile")


def load_train(data: str):
    """The train split of a prepared folder, with a one-line error for anything else."""
    from datasets import load_from_disk
    path = Path(data)
    if (path / "phase1").is_dir():
        raise SystemExit(f"--data {data}: a 'specialized' folder; pass {path / 'phase1'} or {path / 'phase2'}")
    try:
        ds = load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - any unreadable folder gets the same one-line message
        raise SystemExit(f"--data {data}: not a prepared folder (mambaft prepare --out DIR): {e}") from None
    if "train" not in ds or not {"input_ids", "labels"} <= set(ds["train"].column_names):
        raise SystemExit(f"--data {data}: needs a train split with input_ids and labels")
    return ds["train"].select_columns(["input_ids", "labels"])


def data_max_len(data: str, train) -> int:
    """The max_seq_len the set was prepared with (stats.json), else its longest row."""
    stats = Path(data) / "stats.json"
    if stats.is_file():
        st = json.loads(stats.read_text())
        m = st.get("max_seq_len") or st.get("config", {}).get("max_seq_len")
        if m:
            return int(m)
    return max(len(r) for r in train["input_ids"])


def _check(args) -> None:
    """Refuse bad arguments; fill batch, accum and max_seq_len from --preset (or the defaults)."""
    if not args.data:
        raise SystemExit("epoch: --data DIR is required (a folder written by `mambaft prepare --out DIR`)")
    cfg = make_config(args.preset) if args.preset else None
    for key, field, default in (("batch", "batch_size", 4), ("accum", "grad_accum", 2),
                                ("max_seq_len", "max_seq_len", None)):   # max_seq_len None: the set's
        if getattr(args, key) is None:
            setattr(args, key, getattr(cfg, field) if cfg else default)
    unknown = [n for n in args.layouts.split(",") if n.strip() not in LAYOUTS]
    if unknown:
        raise SystemExit(f"epoch: --layouts {','.join(unknown)}: expected any of {','.join(LAYOUTS)}")
    if args.batch < 1 or args.accum < 1 or (args.steps is not None and args.steps < 1):
        raise SystemExit("epoch: --batch, --accum and --steps must be >= 1")


def variants(args) -> list:
    from .harness import Variant
    _check(args)
    out = []
    if args.impl in ("mambaft", "both"):
        for name in args.layouts.split(","):
            out.append(Variant("mambaft", {"precision": args.precision, **LAYOUTS[name.strip()]}))
    if args.impl in ("original", "both"):
        for pad in args.padding.split(","):
            out.append(Variant("original", {"precision": "fp32", "padding": pad.strip()}))
    return out


def cases(args) -> list:
    _check(args)
    train = load_train(args.data)
    G = args.batch * args.accum
    per_epoch = math.ceil(len(train) / G)
    n = per_epoch if args.steps is None else min(args.steps, per_epoch)
    return [{"step": i, "first_row": i * G, "steps_per_epoch": per_epoch, "rows": len(train)}
            for i in range(n)]


class EpochRunner:
    """One side: its model, optimizer and row stream; `run(i)` trains optimizer step i of the epoch."""

    def __init__(self, spec: dict):
        from mambaft.train.batches import RowStream, packs_one_row
        from mambaft.train.trim import context_seen
        a, impl, opts = spec["args"], spec["impl"], spec["opts"]
        self.device = dev = worker_device(a)
        self.a, self.impl, self.opts, self.cases = a, impl, opts, spec["cases"]
        train = load_train(a["data"])
        self.max_len = a["max_seq_len"] or data_max_len(a["data"], train)
        d = _dims(a)
        self.packing = bool(opts.get("packing"))
        if impl == "mambaft":
            from mambaft.model import MambaSWELU, MambaSWELUConfig
            from mambaft.train.optim import build_optimizer
            cfg = MambaSWELUConfig(vocab_size=d["vocab"], d_model=d["d_model"], n_layers=d["n_layers"],
                                   max_seq_len=max(1024, self.max_len), dense_hidden_dim=d["dense"],
                                   dropout=a["dropout"])
            self.model = MambaSWELU(cfg).to(dev).train()
            self.model.freeze_dead()
            self.opt = build_optimizer(self.model, lr=1e-5, weight_decay=0.05, betas=(0.9, 0.95))
            self.precision = runtime.resolve_precision(opts.get("precision", "auto"), dev)
            self.fwd = torch.compile(self.model) if a.get("compile") else self.model
        else:
            from .original import OriginalMambaSWELU, original_optimizer
            self.model = OriginalMambaSWELU(d["vocab"], d["d_model"], d["n_layers"], max(1024, self.max_len),
                                            d["dense"], a["dropout"]).to(dev).train()
            self.opt = original_optimizer(self.model)
            self.precision = "fp32"
        self.stream = RowStream(train, seed=a["seed"], pad_id=PAD_ID, max_len=self.max_len,
                                pack_to=self.max_len if self.packing else None,
                                one_row=self.packing and packs_one_row(self.model.config.architecture),
                                trim_to=context_seen(self.model.config) if opts.get("trim") else None)
        self.info = {"precision": self.precision, "device": str(dev), "threads": torch.get_num_threads(),
                     "max_seq_len": self.max_len, "compile": bool(a.get("compile") and impl == "mambaft")}
        self.step(self.cases[0]["first_row"])        # warm-up (untimed): allocator, oneDNN kernels

    def batches(self, first_row: int) -> list:
        mbs = self.stream.step_rows(first_row, batch_size=self.a["batch"], grad_accum=self.a["accum"],
                                    rank=0, world_size=1).micro_batches
        if self.impl == "original" and self.opts.get("padding") == "max":
            for mb in mbs:             # pad to max_seq_len: the same rows, a fixed shape
                B, L = mb["input_ids"].shape
                mb["input_ids"] = torch.nn.functional.pad(mb["input_ids"], (0, self.max_len - L), value=PAD_ID)
                mb["labels"] = torch.nn.functional.pad(mb["labels"], (0, self.max_len - L), value=IGNORE_INDEX)
        return mbs

    def step(self, first_row: int) -> dict:
        from mambaft.train.step import count_trained_tokens
        mbs = [{k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in mb.items()}
               for mb in self.batches(first_row)]
        n = sum(count_trained_tokens(mb["labels"]) for mb in mbs)

        def work():
            if self.impl == "mambaft":
                from mambaft.train.step import micro_step, optimizer_step
                total = 0.0
                for mb in mbs:
                    ls, _ = micro_step(self.fwd, mb["input_ids"], mb["labels"], loss_scale=1.0 / max(1, n),
                                       autocast_ctx=runtime.autocast(self.device, self.precision),
                                       positions=mb.get("positions"))
                    total += ls
                optimizer_step(self.model, self.opt, lr=1e-5, grad_clip=1.0)
                return total / max(1, n)
            from .original import original_train_step
            return original_train_step(self.model, self.opt, [(mb["input_ids"], mb["labels"]) for mb in mbs])

        seconds, loss = timed(work, self.device)
        return {"seconds": seconds, "loss": loss, "trained_tokens": n,
                "real_tokens": sum(int(mb["lengths"].sum()) for mb in mbs),
                "computed_tokens": sum(mb["input_ids"].numel() for mb in mbs), "micro_batches": len(mbs)}

    def run(self, case_index: int) -> dict:
        return self.step(self.cases[case_index]["first_row"])

    def mem(self, case_index: int) -> int:  # pragma: no cover - the epoch bench skips memory runs
        raise NotImplementedError("the epoch bench measures time only (--no-memory)")


def summarize_all(results: list, args) -> list:
    """One object per side: the sums over every timed step of that side."""
    by_side: dict = {}
    for m in results:
        by_side.setdefault(m.variant.label, []).append(m)
    objs = []
    for label, ms in by_side.items():
        runs = [r for m in ms for r in m.runs]
        v, info = ms[0].variant, ms[0].info
        secs = sum(r["seconds"] for r in runs)
        trained = sum(r["trained_tokens"] for r in runs)
        real = sum(r["real_tokens"] for r in runs)
        computed = sum(r["computed_tokens"] for r in runs)
        case = ms[0].case
        per_epoch = case["steps_per_epoch"]
        obj = {"bench": "epoch", "impl": v.impl}
        if v.impl == "original":
            obj["padding"] = v.opts["padding"]
        else:
            obj["packing"] = v.opts["packing"]
            obj["trim"] = v.opts["trim"]
        obj.update({
            "trained_tokens_per_s": trained / secs, "tokens_per_s": real / secs,
            "precision": info.get("precision"), "compile": info.get("compile", False),
            "data": str(args.data), "preset": args.preset, "rows": case["rows"],
            "max_seq_len": info.get("max_seq_len"),
            "batch": args.batch, "accum": args.accum, "steps": len(runs), "steps_per_epoch": per_epoch,
            "epoch_s": secs * per_epoch / len(runs), "epoch_s_measured": len(runs) == per_epoch,
            "wall_s": secs, "trained_tokens": trained, "real_tokens": real, "computed_tokens": computed,
            "padding_fraction": 1 - real / computed, "trained_fraction": trained / computed,
            "micro_batches": sum(r["micro_batches"] for r in runs),
            "median_step_s": statistics.median(r["seconds"] for r in runs),
            "step_s": [round(r["seconds"], 3) for r in runs],
            **_dims(vars(args)), "device": info.get("device"), "threads": info.get("threads"),
            "malloc": info.get("malloc"), "omp_wait_policy": info.get("omp_wait_policy"),
        })
        objs.append(obj)
    base = {("original", o.get("padding")): o for o in objs if o["impl"] == "original"}
    sorted_side = next((o for o in objs if o["impl"] == "mambaft" and not o["packing"] and not o["trim"]), None)
    for o in objs:
        if o["impl"] != "mambaft":
            continue
        for pad in ("batch", "max"):
            if ("original", pad) in base:
                o[f"speedup_vs_original_{pad}"] = o["trained_tokens_per_s"] / base[("original", pad)]["trained_tokens_per_s"]
        if o is not sorted_side and sorted_side is not None:
            o["speedup_vs_sorted"] = o["trained_tokens_per_s"] / sorted_side["trained_tokens_per_s"]
    return objs


def table(objs: list) -> str:
    lines = [f"{'side':26s} {'trained tok/s':>13s} {'epoch s':>9s} {'padding':>8s} {'trained':>8s} "
             f"{'x orig/batch':>12s} {'x orig/max':>10s} {'x sorted':>8s}"]
    f = lambda v, fmt: format(v, fmt) if isinstance(v, (int, float)) else "-"  # noqa: E731
    for o in objs:
        side = (f"original padding={o['padding']}" if o["impl"] == "original"
                else f"mambaft {o['precision']} {'packed' if o['packing'] else 'sorted'}"
                     + (" trimmed" if o["trim"] else ""))
        lines.append(f"{side:26s} {f(o['trained_tokens_per_s'], '13.1f')} {f(o['epoch_s'], '9.0f')} "
                     f"{f(o['padding_fraction'], '8.2f')} {f(o['trained_fraction'], '8.2f')} "
                     f"{f(o.get('speedup_vs_original_batch'), '12.2f')} {f(o.get('speedup_vs_original_max'), '10.2f')} "
                     f"{f(o.get('speedup_vs_sorted'), '8.2f')}")
    return "\n".join(lines)
