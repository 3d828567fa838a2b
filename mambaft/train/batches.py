"""Training rows -> micro-batches: a deterministic order that a resumed run can rejoin exactly.

The order is an endless stream of epochs, each a seeded permutation of the train rows
(`torch.randperm(N, generator=seed + epoch)`), so row p of the stream is a pure function of
(seed, p). The only data position a checkpoint needs is `rows_consumed` (p at the next step).

One optimizer step takes the next G = B x A x W rows (B rows per micro-batch, A accumulation steps,
W ranks). Rank r takes the r-th contiguous share of A x B rows, sorts it by length and cuts it into A
micro-batches: sorting cuts padding (a 40-token row no longer waits beside a 900-token one) and does
not change the gradient, because every micro-batch is weighted by its trained tokens
(see mambaft.train.step).

Packing (`Config.packing`, off by default): instead of sorting, the share's conversations are packed
back to back, each micro-batch holding at most the same B x pack_to tokens as an unpacked one (so the
same activation memory). Each packed row carries `positions` restarting at 0 at every conversation;
the model resets its conv window and scan state there (mambaft.model: each conversation gets exactly
its unpacked logits), and the first label of each conversation is -100 (its unpacked row never trains
position 0 either), so the trained tokens, their losses and the token-weighted gradient are those of
the unpacked step. Only the micro-batches change; the data position (`rows_consumed`) is unchanged,
so resume stays exact.
  - conv-only model (`packs_one_row`): a micro-batch is ONE row of up to B x pack_to tokens, with no
    padding at all. The position table is indexed by the restarting positions, so only each
    conversation must fit max_seq_len, not the row.
  - selective model: B rows of at most pack_to tokens each, right-padded to the longest.
`pack` fills as few bins as first-fit decreasing finds, balanced so that none is a small leftover.

Padding is masked by LENGTH, never by token id: GPT-2 has no pad token and padding with the end
token (50256) must not mask the real end tokens that the model has to learn.

    python -m pytest tests/test_train_units.py -k collate
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from mambaft.template import IGNORE_INDEX, pad_ids
from mambaft.train.trim import trim_row


def position_span(row: dict) -> int:
    """Rows of the position table a row uses: its length, or past its highest kept position once
    trimmed (mambaft.train.trim keeps positions, so a trimmed row of a 2,000-token conversation is
    short but still reads position 1,999). This, not the length, must fit max_seq_len."""
    pos = row.get("positions")
    return max(pos) + 1 if pos else len(row["input_ids"])


def _check_row(r: dict, i, max_len: Optional[int]) -> None:
    n = len(r["input_ids"])
    if len(r["labels"]) != n:
        raise ValueError(f"row {r.get('id', i)!r}: {n} input_ids but {len(r['labels'])} labels")
    if max_len is not None and position_span(r) > max_len:
        raise ValueError(f"row {r.get('id', i)!r}: {position_span(r)} tokens, longer than max_seq_len "
                         f"{max_len} (prepare the data with the same max_seq_len as the model)")


def collate(rows: Sequence[dict], pad_id: int, max_len: Optional[int] = None, pad_to: int = 0) -> dict:
    """Right-pad rows to the batch's longest one (or to `pad_to`, when longer).

    Args:
        rows: dicts with `input_ids` and `labels` (equal-length int lists; labels -100 where untrained).
        pad_id: filler id for input_ids past each row's end (its value never matters: the model is
            causal, so padding on the right cannot reach a real position, and its labels are -100).
        max_len: refuse rows longer than this (the model's position table), naming the row.
        Empty rows are all padding; a micro-batch of only empty rows is one padding column wide.
    Returns:
        {"input_ids": [B, L] long, "labels": [B, L] long, "lengths": [B] long}
    """
    lengths = [len(r["input_ids"]) for r in rows]
    for i, r in enumerate(rows):
        _check_row(r, i, max_len)
    pad_to = max(pad_to, 1)   # a model input needs at least one position
    out = {"input_ids": pad_ids([r["input_ids"] for r in rows], pad_id, pad_to),
           "labels": pad_ids([r["labels"] for r in rows], IGNORE_INDEX, pad_to),
           "lengths": torch.tensor(lengths, dtype=torch.long)}
    if any("positions" in r for r in rows):   # trimmed rows (mambaft.train.trim): their own positions
        out["positions"] = pad_ids([r.get("positions") or list(range(n)) for r, n in zip(rows, lengths)], 0, pad_to)
    return out


def pack(rows: Sequence[dict], capacity: int) -> list[list[dict]]:
    """Rows -> bins of total length <= capacity (a longer row gets a bin alone): as few as first-fit
    decreasing finds (k), then balanced when that fits: longest row first into the least-filled of
    the k bins. First-fit alone leaves a last bin of scraps (5 rows of 5 tokens, capacity 20: 20 + 5);
    balanced, the same 2 bins hold 15 + 10, so the largest micro-batch (peak memory, and the slowest
    rank under DDP) shrinks, and B packed rows grouped together need less padding. Where a row fits
    in none of the k bins (the least-filled one is the roomiest), first-fit's bins are kept: never
    more bins than first-fit. Deterministic: ties in length keep the input order (Python's sort is
    stable), ties in fill go to the first bin."""
    order = sorted(rows, key=lambda r: -len(r["input_ids"]))
    first_fit: list[list[dict]] = []
    room: list[int] = []
    for r in order:
        n = len(r["input_ids"])
        for i, free in enumerate(room):
            if n <= free:
                first_fit[i].append(r)
                room[i] -= n
                break
        else:
            first_fit.append([r])
            room.append(capacity - n)
    bins: list[list[dict]] = [[] for _ in first_fit]
    fill = [0] * len(bins)
    for r in order:
        i = min(range(len(fill)), key=fill.__getitem__)
        fill[i] += len(r["input_ids"])
        if fill[i] > capacity:
            return first_fit
        bins[i].append(r)
    return bins


def packs_one_row(architecture: str) -> bool:
    """Whether packed micro-batches are one long row (B x max_seq_len tokens) or B rows: the one place
    that decides. The conv-only model ("original") computes the same [B*L, D] matmuls either way and
    loses the padding. The selective scan's CPU path (kernels/scan.py) steps through time in Python, so
    4x the length at batch 1 costs more than batch 4 saves. Measured (issue 17) forward+backward of
    the same 1,024 packed tokens, d_model 128, 2 layers, fp32, 2 cores, median of 4, 1 x 1024 against
    4 x 256: conv-only 0.096 s vs 0.115 s, selective 0.32 s vs 0.28 s."""
    return architecture != "selective"


def collate_packed(bins: Sequence[Sequence[dict]], pad_id: int, max_len: Optional[int] = None) -> dict:
    """Packed rows (one per bin, conversations back to back), right-padded to the longest.

    Returns `collate`'s keys (lengths = tokens used in each packed row) plus
        positions [B, L] long: 0, 1, .. restarting at each conversation (and at the padding)
        n_rows: conversations in the micro-batch
    """
    joined = []
    for b, rows in enumerate(bins):
        ids: list = []
        labels: list = []
        pos: list = []
        for r in rows:
            _check_row(r, r.get("id"), max_len)
            n = len(r["input_ids"])
            if not n:   # an empty row adds nothing (its boundary label below would have no token)
                continue
            ids.extend(r["input_ids"])
            labels.extend([IGNORE_INDEX] + list(r["labels"][1:]))  # never predicted across a boundary
            pos.extend(r.get("positions") or range(n))
        joined.append({"id": b, "input_ids": ids, "labels": labels, "positions": pos})
    out = collate(joined, pad_id)
    L = out["input_ids"].shape[1]
    # padding: a segment of its own (positions 0, 1, ..; labels -100)
    out["positions"] = pad_ids([j["positions"] + list(range(L - len(j["positions"]))) for j in joined], 0)
    out["n_rows"] = sum(len(rows) for rows in bins)
    return out


@dataclass
class StepRows:
    """What one rank trains on in one optimizer step."""
    micro_batches: list          # A collated dicts (see `collate`)
    row_ids: list                # dataset indices of this rank's rows, in micro-batch order
    first_row: int               # stream position of the global batch's first row
    epoch: float                 # stream position / N: fractional epochs completed before this step


class RowStream:
    """Deterministic endless stream of training rows (see module docstring).

    Args:
        dataset: a `datasets.Dataset` (or anything with len() and __getitem__(list) -> dict of
            columns) with `input_ids` and `labels` columns.
        seed: the run's seed; epoch e uses permutation seed + e.
    """

    def __init__(self, dataset, seed: int, pad_id: int, max_len: Optional[int] = None,
                 pack_to: Optional[int] = None, one_row: bool = False, trim_to: Optional[int] = None):
        if len(dataset) == 0:
            raise ValueError("the train split is empty: nothing to train on")
        self.dataset = dataset
        self.n = len(dataset)
        self.seed = int(seed)
        self.pad_id = pad_id
        self.max_len = max_len
        self.pack_to = pack_to            # None: sort by length; else pack B x this many tokens per micro-batch
        self.one_row = one_row            # packed micro-batch = one row (`packs_one_row`), else B rows
        self.trim_to = trim_to            # None, or the receptive field rows are trimmed to (trim.py)
        self._perm_epoch = -1
        self._perm: Optional[torch.Tensor] = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.n, generator=g)
            self._perm_epoch = epoch
        return self._perm

    def indices(self, start: int, count: int) -> list[int]:
        """Dataset indices of stream positions start .. start+count-1 (crossing epochs as needed)."""
        out: list[int] = []
        p = start
        while len(out) < count:
            epoch, offset = divmod(p, self.n)
            take = min(count - len(out), self.n - offset)
            out.extend(self._permutation(epoch)[offset:offset + take].tolist())
            p += take
        return out

    def fetch(self, idx: Sequence[int]) -> list[dict]:
        cols = self.dataset[list(idx)]
        rows = [{"id": i, "input_ids": a, "labels": b} for i, a, b in zip(idx, cols["input_ids"], cols["labels"])]
        return [trim_row(r, self.trim_to) for r in rows] if self.trim_to else rows

    def step_rows(self, step_first_row: int, *, batch_size: int, grad_accum: int, rank: int,
                  world_size: int) -> StepRows:
        """This rank's A micro-batches for the optimizer step whose global batch starts at
        stream position `step_first_row`."""
        share = batch_size * grad_accum
        idx = self.indices(step_first_row + rank * share, share)
        rows = self.fetch(idx)
        if self.pack_to:
            # tokens per packed row, packed rows per micro-batch: B x pack_to tokens either way
            cap, per = (batch_size * self.pack_to, 1) if self.one_row else (self.pack_to, batch_size)
            bins = pack(rows, cap)
            micro = [collate_packed(bins[i:i + per], self.pad_id, self.max_len) for i in range(0, len(bins), per)]
            if world_size > 1:
                # DDP all-reduces on every rank's LAST micro-batch: all ranks need the same count.
                # Each rank packs every rank's share (a pure function of the stream) and pads its list
                # with one-token micro-batches that train nothing (their backward is a connected 0).
                most = max(len(pack(self.fetch(self.indices(step_first_row + r * share, share)), cap))
                           for r in range(world_size))
                empty = [[{"id": -1, "input_ids": [self.pad_id], "labels": [IGNORE_INDEX]}]]
                while len(micro) < math.ceil(most / per):
                    micro.append(collate_packed(empty, self.pad_id, self.max_len))
            return StepRows(micro_batches=micro, row_ids=[r["id"] for b in bins for r in b],
                            first_row=step_first_row, epoch=step_first_row / self.n)
        rows.sort(key=lambda r: len(r["input_ids"]))   # less padding; same gradient (token-weighted)
        micro = [collate(rows[i:i + batch_size], self.pad_id, self.max_len)
                 for i in range(0, share, batch_size)]
        return StepRows(micro_batches=micro, row_ids=[r["id"] for r in rows], first_row=step_first_row,
                        epoch=step_first_row / self.n)
