"""A short learning-rate sweep (smoke strategy): same start, same rows, one short run per lr.

Each lr trains `steps` optimizer steps from the same base weights on the same rows (the run's seeded
stream), with a warmup of steps // 5 and no decay, and is scored by its mean loss over the last quarter
of the steps (a single last loss is too noisy at 4 rows per step). Too small an lr barely moves the
loss; too large diverges or bounces; the plot shows where in between the loss falls fastest.

    mambaft finetune --strategy smoke --base data/demo_base --data DIR --out OUT --lr-sweep
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import torch

from mambaft import runtime
from mambaft.config import Config, resolve_base

from .batches import RowStream
from .optim import lr_at, run_optimizer
from .run import _freeze, load_base, load_data
from .step import count_trained_tokens, micro_step, optimizer_step

DEFAULT_LRS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)


def lr_sweep(cfg: Config, base, data_dir, out_dir, *, lrs: Sequence[float] = DEFAULT_LRS,
             steps: Optional[int] = None, progress: bool = True, threads: Optional[int] = None) -> dict:
    """Returns {"lrs", "curves": {lr: [loss per step]}, "scores": {lr: tail mean}, "best_lr", "plot"}
    and writes OUT/lr_sweep.json and OUT/lr_sweep.png. Single process (CPU or one GPU)."""
    if threads:
        runtime.set_threads(threads)
    steps = int(steps or min(40, cfg.max_steps))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_path = resolve_base(base or cfg.base)
    train = load_data(data_dir)["train"].select_columns(["input_ids", "labels"])
    device = runtime.pick_device("cpu" if not torch.cuda.is_available() else None)
    precision = runtime.resolve_precision(cfg.precision, device)
    quiet = lambda m: None  # noqa: E731
    curves: dict = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(lrs) * steps, desc="lr sweep", unit="step")
    for lr in lrs:
        runtime.seed_everything(cfg.seed)
        model, info = load_base(base_path, cfg, quiet)
        _freeze(model, quiet)
        model.to(device).train()
        opt = run_optimizer(model, cfg, lr=lr)
        stream = RowStream(train, seed=cfg.seed, pad_id=info.tokenizer.eos_id, max_len=model.config.max_seq_len)
        G = cfg.batch_size * cfg.grad_accum
        losses = []
        for s in range(steps):
            rows = stream.step_rows(s * G, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                                    rank=0, world_size=1)
            n = sum(count_trained_tokens(mb["labels"]) for mb in rows.micro_batches)
            total = 0.0
            for mb in rows.micro_batches:
                ls, _ = micro_step(model, mb["input_ids"].to(device), mb["labels"].to(device),
                                   autocast_ctx=runtime.autocast(device, precision), loss_scale=1.0 / max(1, n))
                total += ls
            optimizer_step(model, opt, grad_clip=cfg.grad_clip,
                           lr=lr_at(s, lr=lr, warmup_steps=max(1, steps // 5), max_steps=steps,
                                    schedule="constant"))
            losses.append(total / max(1, n))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(lr=f"{lr:.0e}", loss=f"{losses[-1]:.3f}")
        curves[lr] = losses
    if bar is not None:
        bar.close()
    tail = max(1, steps // 4)
    scores = {lr: (sum(c[-tail:]) / tail if all(math.isfinite(x) for x in c[-tail:]) else float("inf"))
              for lr, c in curves.items()}
    best_lr = min(scores, key=scores.get)
    plot = out / "lr_sweep.png"
    _plot(curves, scores, best_lr, plot)
    res = {"lrs": list(lrs), "steps": steps, "curves": {str(k): v for k, v in curves.items()},
           "scores": {str(k): v for k, v in scores.items()}, "best_lr": best_lr, "plot": str(plot)}
    (out / "lr_sweep.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return res


def _plot(curves: dict, scores: dict, best_lr: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for lr, c in curves.items():
        a.plot(range(1, len(c) + 1), c, label=f"lr {lr:g}")
    a.set_xlabel("step")
    a.set_ylabel("training loss")
    a.legend(fontsize=8)
    a.set_title("loss curves")
    xs = sorted(scores)
    b.semilogx(xs, [scores[x] if math.isfinite(scores[x]) else float("nan") for x in xs], "o-")
    b.axvline(best_lr, color="g", ls="--", label=f"best {best_lr:g}")
    b.set_xlabel("lr")
    b.set_ylabel("mean loss, last quarter")
    b.legend()
    b.set_title("lr sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
