"""Notebook 02's worked step: one conversation and one batch of the run, in the open.

The notebook shows what the training loop does to one batch, with the library's own pieces:
    wb = first_batch(cfg, data_dir, rows=4)    # the run's first rows, collated as the loop collates them
    print(wb.text(wb.shortest))                # the rendered conversation, as the model reads it
    print(wb.table(wb.shortest))               # ids and labels side by side; -100 = masked
    model, opt = worked_model(cfg)             # the base with its dead projections frozen, the run's AdamW
then the cell computes the shifted, masked loss by hand in plain torch, asserts it equals
mambaft.train.step.micro_step's, takes one optimizer_step and measures the same batch again.

    python -m pytest tests/test_course.py -k worked
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mambaft.course import PathLike
from mambaft.template import IGNORE_INDEX, show_trained

# The hand-computed loss and the library's differ only in the order fp32 sums run (the library takes
# the loss in chunks of 512 positions without materialising the logits): ~1e-6 of a loss of ~2-11
# nats/token. 1e-4 nats is 10x that and 100x below any real difference (a token masked wrongly moves
# the mean by ~loss / trained tokens, ~1e-2 for a batch of a few hundred trained tokens).
LOSS_TOLERANCE = 1e-4


@dataclass
class WorkedBatch:
    """One collated batch: input_ids and labels [B, L] (labels -100 where masked: prompts, padding),
    lengths [B], the dataset rows it holds, and the tokenizer to read it."""
    input_ids: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor
    row_ids: list
    tokenizer: Any

    @property
    def shortest(self) -> int:
        """Index of the shortest row: a conversation that fits on screen."""
        return int(self.lengths.argmin())

    def _row(self, i: int) -> tuple[list, list]:
        n = int(self.lengths[i])
        return self.input_ids[i, :n].tolist(), self.labels[i, :n].tolist()

    def text(self, i: int) -> str:
        """Row i as text, exactly what the template rendered (the end token as <|endoftext|>)."""
        return self.tokenizer.decode(self._row(i)[0])

    def trained(self, i: int) -> str:
        """Row i with its trained tokens in [brackets] (mambaft.template.show_trained)."""
        return show_trained(*self._row(i), self.tokenizer)

    def unmasked_labels(self) -> torch.Tensor:
        """Labels with every real token trained, prompts included (the mask off); padding stays -100."""
        real = torch.arange(self.input_ids.shape[1])[None, :] < self.lengths[:, None]   # [B, L]
        return torch.where(real, self.input_ids, torch.full_like(self.input_ids, IGNORE_INDEX))

    def table(self, i: int, limit: int = 60) -> str:
        """Row i, one token a line: position, token, input id, label. A label of -100 is masked: no loss
        there. Position t's logits are scored against the label at t + 1 (the shift): the last column."""
        ids, labels = self._row(i)
        lines = [f"{'pos':>4}  {'token':<16} {'input id':>8}  {'label':>6}  position t is scored on label t+1"]
        shown = range(len(ids)) if len(ids) <= limit else [*range(limit // 2), *range(len(ids) - limit // 2, len(ids))]
        prev = -1
        for t in shown:
            if t != prev + 1:
                lines.append(f"{'...':>4}  ({t - prev - 1} positions not shown)")
            prev = t
            nxt = labels[t + 1] if t + 1 < len(ids) else None
            target = ("(last position: nothing to predict)" if nxt is None else
                      "masked" if nxt == IGNORE_INDEX else f"predict {self.tokenizer.decode([nxt])!r}")
            lab = "-100" if labels[t] == IGNORE_INDEX else str(labels[t])
            lines.append(f"{t:>4}  {self.tokenizer.decode([ids[t]])!r:<16} {ids[t]:>8}  {lab:>6}  {target}")
        n_trained = sum(lab != IGNORE_INDEX for lab in labels[1:])
        lines.append(f"{n_trained} of {len(ids)} positions carry a label (position 0 never counts: nothing "
                     f"comes before it)")
        return "\n".join(lines)


def first_batch(cfg, data_dir: PathLike, rows: int = 4) -> WorkedBatch:
    """The first `rows` rows of the run's training stream (mambaft.train.batches.RowStream with the
    run's seed: the rows its first step starts with), right-padded by `collate` as the loop does."""
    from mambaft.checkpoint import load_checkpoint
    from mambaft.train.batches import RowStream, collate
    from mambaft.train.run import load_data

    if not 1 <= rows <= 64:
        raise ValueError(f"rows={rows}: expected 1..64 (one batch to read, not a training run)")
    train = load_data(data_dir)["train"].select_columns(["input_ids", "labels"])
    _, info = load_checkpoint(cfg.base)
    stream = RowStream(train, seed=cfg.seed, pad_id=info.tokenizer.eos_id, max_len=cfg.max_seq_len)
    picked = stream.fetch(stream.indices(0, min(rows, len(train))))
    b = collate(picked, info.tokenizer.eos_id, cfg.max_seq_len)
    return WorkedBatch(b["input_ids"], b["labels"], b["lengths"], [r["id"] for r in picked], info.tokenizer)


def worked_model(cfg) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The base as fine-tuning starts from it (mambaft.train.run.load_base, dead x_proj/dt_proj
    frozen) in float32, and the run's AdamW (mambaft.train.optim.run_optimizer).
    The model stays in eval mode: dropout off, so the hand-computed forward and the library's see the
    same network (the run trains with cfg's dropout and bf16 autocast where the CPU has it)."""
    from mambaft.train.optim import run_optimizer
    from mambaft.train.run import _freeze, load_base

    model, _ = load_base(cfg.base, cfg, say=lambda m: None)
    _freeze(model, say=lambda m: None)
    model = model.float().eval()
    return model, run_optimizer(model, cfg)


def worked_summary(by_hand: float, library: float, trained_tokens: int, after: float, lr: float,
                   grad_norm: float) -> dict:
    """What notebook 02 records about its worked step (asserted by tests/test_notebooks.py)."""
    return {"by_hand": by_hand, "library": library, "trained_tokens": trained_tokens,
            "loss_after_step": after, "lr": lr, "grad_norm": grad_norm}
