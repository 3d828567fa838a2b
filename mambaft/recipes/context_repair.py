"""The context-repair experiment: does `upgrade_to_selective` learn to use context past 19 tokens?

Builds a small 6-layer MambaSWELU with the GPT-2 vocabulary and pretrains it on plain text (`--text`,
default the State of the Union addresses), or starts from a saved original model (`--base`, e.g. the
shipped demo base). Then continues training on the same batches (plain text + synthetic recall rows
whose names are never the probe's, + `--copy-rows` text segments that come back) two copies: one as it is ("original") and one after
`upgrade_to_selective` ("selective"); or, with `--freeze-original`, only the upgraded copy's new
parameters, so the base itself is the control. Measures every model with `mambaft.evaluate.context`.

    mambaft context demo --base data/demo_base --text wiki_en --freeze-original \
        --continue-steps 1000        # the run shipped in data/demo_base/context_repair (30 min, 2 cores)
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from mambaft.template import IGNORE_INDEX, pad_ids
from mambaft.evaluate.context import (INTRO, PROBE_NAMES, QUESTION, TRAIN_NAMES, ContextReport, load_texts,
                                      measure_context, token_stream)


def text_batch(stream: torch.Tensor, batch: int, length: int, gen: torch.Generator):
    """Random windows of plain text, every token trained: (ids, labels) [batch, length]."""
    starts = torch.randint(0, stream.numel() - length, (batch,), generator=gen)
    ids = torch.stack([stream[s:s + length] for s in starts.tolist()])
    return ids, ids


def recall_batch(tok, stream: torch.Tensor, batch: int, gen: torch.Generator, names: Sequence[str] = TRAIN_NAMES,
                 min_gap: int = 10, max_gap: int = 100):
    """Synthetic recall rows "My name is X." + text + " What is my name? My name is" -> " X", the loss
    on the answer only (so the 50257-way head runs on one position per row: cheap).
    The gap from X to the answer is uniform in [min_gap, max_gap] tokens. (ids, labels) [batch, Lmax]."""
    question = tok.encode(QUESTION)
    rows = []
    for _ in range(batch):
        name = names[int(torch.randint(len(names), (1,), generator=gen))]
        gap = int(torch.randint(min_gap, max_gap + 1, (1,), generator=gen))
        n_fill = max(1, gap - len(question) - 1)
        s = int(torch.randint(0, stream.numel() - n_fill, (1,), generator=gen))
        answer = tok.encode(" " + name)
        rows.append(tok.encode(INTRO.format(name=" " + name)) + stream[s:s + n_fill].tolist() + question + answer)
    return right_pad(rows, trained=1)                  # the answer, predicted from the position before


def repeat_batch(stream: torch.Tensor, batch: int, gen: torch.Generator, seg: int = 24, min_gap: int = 24,
                 max_gap: int = 80):
    """Copy rows: a text segment S (`seg` tokens), other text (`min_gap`..`max_gap` tokens), then S
    again, the loss on the second S only. Every trained token repeats one `seg + gap` >= 48 tokens
    back, out of the original's 19-token reach: dense practice at what natural text does with names
    and terms (they come back), where the recall rows give one trained token per row.
    (ids, labels) [batch, Lmax], right-padded."""
    rows = []
    for _ in range(batch):
        gap = int(torch.randint(min_gap, max_gap + 1, (1,), generator=gen))
        s, f = (int(torch.randint(0, stream.numel() - seg - max_gap, (1,), generator=gen)) for _ in range(2))
        piece = stream[s:s + seg]
        rows.append(torch.cat([piece, stream[f:f + gap], piece]).tolist())
    return right_pad(rows, trained=seg)                # the second copy (its first token too: 1 + gap back)


def right_pad(rows: list, trained: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows of different lengths -> (ids, labels) [len(rows), longest], right-padded, with only
    each row's last `trained` tokens as labels (-100 elsewhere; the model shifts them inside)."""
    labels = [[IGNORE_INDEX] * (len(r) - trained) + list(r[len(r) - trained:]) for r in rows]
    return pad_ids(rows, 0), pad_ids(labels, IGNORE_INDEX)


def train_lm(model, make_batches, steps: int, *, lr: float, warmup: int, seed: int, precision: str = "auto",
             new_lr_mult: float = 1.0, desc: str = "train") -> list:
    """AdamW (no weight decay) + warmup/cosine on the batches `make_batches(generator)` returns (a list of
    (ids, labels)); the step's loss is the sum of each batch's mean loss. The same seed gives the same
    batches. new_lr_mult: learning-rate factor for the `.selective.` parameters (Adam moves a closed
    gate by about lr per step, so a larger factor opens the path sooner). Returns every step's loss."""
    from tqdm.auto import tqdm

    from mambaft.runtime import autocast, resolve_precision
    from mambaft.train.optim import lr_at

    dev = model.token_embedding.weight.device
    prec = resolve_precision(precision, dev)
    gen = torch.Generator().manual_seed(seed)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if ".selective." not in n], "lr_mult": 1.0},
              {"params": [p for n, p in params if ".selective." in n], "lr_mult": new_lr_mult}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95), weight_decay=0.0,
                            fused=dev.type in ("cpu", "cuda"))
    model.train()
    losses = []
    for step in (bar := tqdm(range(steps), desc=desc)):
        for g in opt.param_groups:
            g["lr"] = g["lr_mult"] * lr_at(step, lr=lr, warmup_steps=warmup, max_steps=steps)
        total = 0.0
        for ids, labels in make_batches(gen):
            with autocast(dev, prec):
                loss = model(ids.to(dev), labels=labels.to(dev), return_logits=False)["loss"]
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    model.eval()
    return losses


def run_demo(out: Path, texts: Sequence[str] = ("sotu",), steps: int = 250, continue_steps: int = 500,
             d_model: int = 64, n_layers: int = 6, length: int = 256, batch: int = 4, recall_rows: int = 16,
             copy_rows: int = 0, lr: float = 3e-3, continue_lr: float = 1e-3, new_lr_mult: float = 10.0, seed: int = 0,
             windows: int = 128, precision: str = "auto", base_from: Optional[Path] = None,
             n_fillers: int = 10, freeze_original: bool = False) -> ContextReport:
    """Pretrain a small original model on plain text (or load it: `base_from`, a model folder this
    demo saved); continue two copies on the same batches (plain text + synthetic recall rows with
    TRAIN_NAMES), one as it is and one upgraded; measure all three. The models are saved under
    out/models/ (mambaft folders), so `measure` can be rerun on them.

    freeze_original: train only the upgrade's new parameters. The original path then stays the base
    exactly, so the base itself is the control (no second copy to train, half the time) and every
    loss difference on the same tokens is what the selective path adds."""
    from mambaft.model import MambaSWELU, MambaSWELUConfig, upgrade_to_selective
    from mambaft.model.selective import SELECTIVE_KEY
    from mambaft.runtime import seed_everything
    from mambaft.tokenizer import load_tokenizer

    tok = load_tokenizer()
    train = token_stream(tok, load_texts(texts, "train"))
    heldout = load_texts(texts, "heldout")
    seed_everything(seed)
    cfg = MambaSWELUConfig(vocab_size=50257, d_model=d_model, n_layers=n_layers, max_seq_len=length,
                           dense_hidden_dim=2 * d_model, dropout=0.0)
    t0 = time.time()
    if base_from is not None:
        from mambaft.checkpoint import load_checkpoint
        base = load_checkpoint(base_from)[0]
        base.freeze_dead()
        cfg, log, steps = base.config, {}, 0
        if base.config.architecture != "original":
            raise ValueError(f"{base_from}: the demo base must be an original-architecture model")
    else:
        base = MambaSWELU(cfg)
        base.freeze_dead()                               # x_proj/dt_proj are dead in both models
        log = {"base": train_lm(base, lambda g: [text_batch(train, batch, length, g)], steps, lr=lr,
                                warmup=steps // 10, seed=seed, precision=precision, desc="pretrain (original)")}
    t_base = time.time() - t0
    original = MambaSWELU(cfg)
    original.load_state_dict(base.state_dict())
    original.freeze_dead()
    selective = upgrade_to_selective(base, ssm_state=16)
    if freeze_original:
        for name, p in selective.named_parameters():
            p.requires_grad_(SELECTIVE_KEY in name)

    def mixture(g):
        rows = [text_batch(train, batch, length, g), recall_batch(tok, train, recall_rows, g)]
        return rows + [repeat_batch(train, copy_rows, g)] if copy_rows else rows
    times = {}
    runs = (("selective", selective),) if freeze_original else (("original", original), ("selective", selective))
    for name, model in runs:
        t0 = time.time()                                 # same seed: the same batches for both
        log[name] = train_lm(model, mixture, continue_steps, lr=continue_lr, warmup=continue_steps // 10,
                             seed=seed + 1, precision=precision, new_lr_mult=new_lr_mult,
                             desc=f"continue ({name})")
        times[name] = round(time.time() - t0, 1)
    from mambaft.checkpoint import save_checkpoint
    for name, model in (("base", base),) + runs:
        save_checkpoint(model, Path(out) / "models" / name, tokenizer=tok,
                        training={"demo": "mambaft.recipes.context_repair", "phase": name})
    measured = {"base": base} if freeze_original else {"base": base, f"original+{continue_steps}": original}
    measured[f"selective+{continue_steps}"] = selective
    rep = measure_context(measured, tok, heldout, length=length, windows=windows,
                          reference="base" if freeze_original else f"original+{continue_steps}", n_fillers=n_fillers)
    rep.notes.update({
        "texts": list(texts), "train_tokens": int(train.numel()), "model": cfg.to_dict(),
        "pretrain_steps": steps, "continue_steps": continue_steps,
        "pretrain_tokens_per_step": batch * length, "continue_batches": f"{batch} x {length} text rows "
        f"(all tokens trained) + {recall_rows} recall rows (answer trained) + {copy_rows} copy rows (second "
        f"copy trained), names {len(TRAIN_NAMES)} "
        f"training names, probe names {len(PROBE_NAMES)} never trained",
        "pretrain_seconds": round(t_base, 1), "continue_seconds": times, "lr": lr, "continue_lr": continue_lr,
        "new_lr_mult": new_lr_mult,
        "final_train_loss": {k: round(sum(v[-20:]) / len(v[-20:]), 4) for k, v in log.items()},
        "selective_gate_mean_abs": round(float(selective.gates().abs().mean()), 4),
        "precision": precision, "seed": seed, "base_from": str(base_from) if base_from else None,
        "freeze_original": freeze_original})
    rep.save(out)
    return rep
