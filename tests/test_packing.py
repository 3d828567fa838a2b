"""Exact packing: several conversations in one row give each conversation its unpacked logits and loss
(both architectures, fp32, segments that end inside the conv window, conv-only rows longer than
max_seq_len), the kernels reset at every boundary (values and gradients), packing is deterministic and
balanced, and a packed fine-tune equals the unpacked one and resumes exactly."""
from __future__ import annotations

import torch
import pytest

from mambaft.config import make_config
from mambaft.model import upgrade_to_selective
from mambaft.model.kernels.conv import causal_depthwise_conv
from mambaft.model.kernels.scan import selective_scan, selective_scan_ref
from mambaft.train.batches import RowStream, collate, collate_packed, pack, packs_one_row
from mambaft.train.step import count_trained_tokens
from tests.conftest import make_small_gpt2_model

# Packed and unpacked runs do the same operations on each token, but the matmuls see [B*L, D] inputs
# of different heights, and oneDNN/MKL may pick different blockings (and so summation orders of the
# D = 32..128-term dot products) for different heights, on some CPU classes: agreement is then to fp32
# rounding of the logits (|logit| < 1 at this size; eps 1.2e-7 x a few reordered terms per layer x 2-3
# layers). 1e-5 absolute is ~100 ulps of headroom; a conversation that saw another one's token moves
# its logits by 1e-4 or more (10x ATOL; checked below), so the test cannot pass on a leak.
ATOL = 1e-5

# Segments of 1, 2 and 3 tokens end inside the K = 4 conv window: the next conversation's first 3
# tokens are exactly the ones a leaky conv would mix with them.
LENGTHS = [7, 2, 5, 1, 3, 9, 4]
MAX_SEQ_LEN = 16   # the models' position table: capacity 40 packs rows longer than it (conv-only only)


def _model(arch: str):
    model = make_small_gpt2_model(seed=3, d_model=32, n_layers=2, max_seq_len=MAX_SEQ_LEN).eval()
    if arch == "selective":
        model = upgrade_to_selective(model).eval()
        with torch.no_grad():    # open the gates: with g = 0 the scan would not reach the logits
            for layer in model.mamba_stack.layers:
                layer.mamba.selective.gate.normal_(0, 1.0)
    return model


def _rows(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = torch.randint(0, 50257, (n,), generator=g).tolist()
        labels = [-100 if j < n // 3 else t for j, t in enumerate(ids)]  # a prompt, then trained tokens
        out.append({"id": i, "input_ids": ids, "labels": labels})
    return out


# (architecture, tokens per packed row): B rows of <= max_seq_len, or (conv-only) one row of 31 > 16
SHAPES = [("original", MAX_SEQ_LEN), ("original", 40), ("selective", MAX_SEQ_LEN)]


@pytest.mark.numerics
@pytest.mark.parametrize("arch,capacity", SHAPES)
def test_packed_conversations_get_their_unpacked_logits_and_loss(arch, capacity):
    model = _model(arch)
    rows = _rows(LENGTHS)
    bins = pack(rows, capacity=capacity)
    assert len(bins) < len(rows) and all(len(b) > 1 for b in bins)   # really packed
    batch = collate_packed(bins, pad_id=50256, max_len=MAX_SEQ_LEN)
    L = batch["input_ids"].shape[1]
    assert (L > MAX_SEQ_LEN) == (capacity > MAX_SEQ_LEN)
    with torch.no_grad():
        out = model(batch["input_ids"], labels=batch["labels"], positions=batch["positions"],
                    return_logits=True, loss_reduction="sum")
        fused = model(batch["input_ids"], labels=batch["labels"], positions=batch["positions"],
                      return_logits=False, loss_reduction="sum")
    total, n_total = 0.0, 0
    for b, segs in enumerate(bins):
        start = 0
        for r in segs:
            n = len(r["input_ids"])
            ids = torch.tensor([r["input_ids"]])
            labels = torch.tensor([r["labels"]])
            with torch.no_grad():
                alone = model(ids, labels=labels, return_logits=True, loss_reduction="sum")
            torch.testing.assert_close(out["logits"][b, start:start + n], alone["logits"][0],
                                       atol=ATOL, rtol=0)
            total += float(alone["loss"])
            n_total += alone["n_tokens"]
            start += n
    assert out["n_tokens"] == fused["n_tokens"] == n_total == count_trained_tokens(batch["labels"])
    assert float(out["loss"]) == pytest.approx(total, rel=1e-5)
    assert float(fused["loss"]) == pytest.approx(total, rel=1e-5)
    if L > MAX_SEQ_LEN:   # without positions a row still may not outgrow the position table
        with pytest.raises(ValueError, match="exceeds maximum"):
            model(batch["input_ids"], return_logits=True)
        return
    # Without positions (the mixers see one long sequence) later conversations' logits move: the
    # tolerance above is far below what a leak does.
    with torch.no_grad():
        leaky = model(batch["input_ids"], return_logits=True)["logits"]
        leaky_pos = model.forward(batch["input_ids"], return_logits=True,
                                  positions=torch.arange(batch["input_ids"].shape[1]).expand_as(
                                      batch["input_ids"]))["logits"]
    torch.testing.assert_close(leaky, leaky_pos, atol=ATOL, rtol=0)   # 2-D positions 0..L-1 = unpacked
    assert (leaky - out["logits"]).abs().max() > 10 * ATOL


@pytest.mark.numerics
@pytest.mark.parametrize("arch,capacity", SHAPES)
def test_packed_gradients_equal_the_sum_of_unpacked_ones(arch, capacity):
    model = _model(arch)
    rows = _rows([3, 2, 6, 1, 5, 9, 7], seed=1)      # 33 tokens: capacity 40 is one row of 33 > 16
    batch = collate_packed(pack(rows, capacity=capacity), pad_id=50256, max_len=MAX_SEQ_LEN)
    assert (batch["input_ids"].shape[1] > MAX_SEQ_LEN) == (capacity > MAX_SEQ_LEN)
    out = model(batch["input_ids"], labels=batch["labels"], positions=batch["positions"],
                return_logits=False, loss_reduction="sum")
    out["loss"].backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    for r in rows:
        model(torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]]),
              return_logits=False, loss_reduction="sum")["loss"].backward()
    for n, g in packed.items():
        # the same per-token terms summed in another order (one packed batch against 5 backward
        # passes accumulated): fp32 rounding, measured <= 9e-8 on gradients up to 0.21 (4e-7
        # relative); 1e-6 + 1e-5 relative leaves 10x headroom for other CPUs' summation orders
        torch.testing.assert_close(g, dict(model.named_parameters())[n].grad, atol=1e-6, rtol=1e-5)


@pytest.mark.slow   # fp64 gradients
@pytest.mark.numerics
def test_conv_and_scan_reset_at_boundaries_values_and_gradients_fp64():
    torch.manual_seed(0)
    B, L, E, N = 2, 11, 3, 4
    positions = torch.tensor([[0, 1, 0, 1, 2, 0, 1, 2, 3, 4, 0], [0, 1, 2, 3, 0, 0, 1, 0, 1, 2, 3]])
    x = torch.randn(B, L, E, dtype=torch.float64, requires_grad=True)
    w = torch.randn(E, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(E, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, b, c: causal_depthwise_conv(a, b, c, positions), (x, w, bias))
    delta = torch.rand(B, L, E, dtype=torch.float64, requires_grad=True)
    A = (-torch.rand(E, N, dtype=torch.float64) - 0.1).requires_grad_()
    Bm = torch.randn(B, L, N, dtype=torch.float64, requires_grad=True)
    Cm = torch.randn(B, L, N, dtype=torch.float64, requires_grad=True)
    D = torch.randn(E, dtype=torch.float64, requires_grad=True)
    keep = positions != 0
    # budget 24 -> chunks of 1 step at B*E*N = 24: boundaries fall on and inside chunks alike
    for budget in (24, 1 << 18):
        torch.autograd.gradcheck(lambda *a: selective_scan(*a, budget=budget, keep=keep)[0],
                                 (x, delta, A, Bm, Cm, D))
    # the reset scan equals each segment scanned alone from h = 0
    y, _ = selective_scan(x, delta, A, Bm, Cm, D, keep=keep)
    y_ref, _ = selective_scan_ref(x, delta, A, Bm, Cm, D, keep=keep.double())
    torch.testing.assert_close(y, y_ref)
    xc = causal_depthwise_conv(x, w, bias, positions)
    for b in range(B):
        starts = [t for t in range(L) if positions[b, t] == 0] + [L]
        for s, e in zip(starts, starts[1:]):
            alone, _ = selective_scan_ref(x[b:b + 1, s:e], delta[b:b + 1, s:e], A, Bm[b:b + 1, s:e],
                                          Cm[b:b + 1, s:e], D)
            torch.testing.assert_close(y[b, s:e], alone[0])
            torch.testing.assert_close(xc[b, s:e], causal_depthwise_conv(x[b:b + 1, s:e], w, bias)[0])


def test_pack_is_deterministic_and_fills_rows():
    rows = _rows([9, 3, 7, 1, 4, 6, 2, 8])
    bins = pack(rows, capacity=10)
    # 9 8 7 6 open four rows (first-fit finds 4), then longest first into the least filled:
    # 4 -> beside 6, 3 -> 7, 2 -> 8, 1 -> 9
    assert [[r["id"] for r in b] for b in bins] == [[0, 3], [7, 6], [2, 1], [5, 4]]
    assert [[r["id"] for r in b] for b in pack(rows, capacity=10)] == [[r["id"] for r in b] for b in bins]
    batch = collate_packed(bins, pad_id=50256, max_len=10)
    first = bins[0]
    n0 = len(first[0]["input_ids"])
    assert batch["positions"][0].tolist()[:n0 + 1] == list(range(n0)) + [0]
    assert batch["labels"][0, n0] == -100               # never predicted from the previous conversation
    assert batch["n_rows"] == 8 and batch["lengths"].tolist() == [10, 10, 10, 10]
    # the same trained tokens as the unpacked rows
    assert count_trained_tokens(batch["labels"]) == count_trained_tokens(
        collate(rows, pad_id=50256)["labels"])


def _fills(bins):
    return [sum(len(r["input_ids"]) for r in b) for b in bins]


def test_pack_balances_its_bins_and_never_uses_more_than_first_fit():
    # first-fit decreasing: 20 + a leftover 5; balanced: the same 2 bins, 15 + 10
    assert _fills(pack(_rows([5] * 5), capacity=20)) == [15, 10]
    # balanced would need 3 bins (5 | 4 3 | 4 3, then a 3 fits nowhere): first-fit's 2 bins are kept
    assert _fills(pack(_rows([5, 3, 4, 3, 4]), capacity=10)) == [9, 10]
    assert _fills(pack(_rows([12, 3]), capacity=10)) == [12, 3]     # a longer row gets a bin alone


@pytest.mark.parametrize("one_row", [False, True])
def test_row_stream_packs_the_same_rows_as_it_sorts(one_row):
    from datasets import Dataset
    rows = _rows([9, 3, 7, 1, 4, 6, 2, 8, 5, 5, 3, 2, 16, 15])
    ds = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    plain = RowStream(ds, seed=1, pad_id=0, max_len=16)
    packed = RowStream(ds, seed=1, pad_id=0, max_len=16, pack_to=16, one_row=one_row)
    longest = 0
    for first in (0, 6, 12):
        a = plain.step_rows(first, batch_size=2, grad_accum=3, rank=0, world_size=1)
        b = packed.step_rows(first, batch_size=2, grad_accum=3, rank=0, world_size=1)
        assert sorted(a.row_ids) == sorted(b.row_ids)
        assert len(b.micro_batches) < len(a.micro_batches)
        assert sum(count_trained_tokens(m["labels"]) for m in a.micro_batches) == \
            sum(count_trained_tokens(m["labels"]) for m in b.micro_batches)
        for m in b.micro_batches:
            rows_in, L = m["input_ids"].shape
            assert L <= (2 * 16 if one_row else 16)          # B x max_seq_len tokens at most
            if one_row:                                      # one row, no padding at all
                assert rows_in == 1 and m["lengths"].tolist() == [L]
            longest = max(longest, L)
    assert (longest > 16) == one_row                         # rows beyond the position table


@pytest.mark.slow   # training runs
def test_packed_finetune_trains_like_unpacked_and_resumes_exactly(tmp_path, monkeypatch):
    """The loop with packing=True: the same losses as sorted batches (same trained tokens, same
    token-weighted gradient, fewer micro-batches: here one row each, longer than the model's
    max_seq_len of 32), and a run stopped at step 3 then resumed equals an uninterrupted one with
    dropout 0.1 on (RNG and data position restored)."""
    import mambaft.train.loop as loop
    from mambaft.checkpoint import save_checkpoint
    from mambaft.train import finetune
    from mambaft.train.metrics import read_metrics
    from tests.test_train_loop import QUIET, learnable_model, write_prepared

    shapes = []

    def micro_step(model, input_ids, labels, **kw):
        shapes.append((tuple(input_ids.shape), kw.get("positions") is not None))
        return step_micro_step(model, input_ids, labels, **kw)

    step_micro_step = loop.micro_step
    monkeypatch.setattr(loop, "micro_step", micro_step)

    def losses(out):
        return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl")
                if "loss" in r and "event" not in r}

    data = write_prepared(tmp_path / "data")
    sets = dict(lr=3e-3, warmup_steps=2, schedule="constant", batch_size=2, grad_accum=2,
                eval_every=100, keep_last=2, trim_context=False)
    # rows of 13-17 tokens, 2 per micro-batch: one packed row holds up to 2 x 32 tokens
    base = save_checkpoint(learnable_model(seed=1, dropout=0.0, max_seq_len=32), tmp_path / "base")
    plain = finetune(make_config("smoke", **sets, max_steps=5, save_every=5, packing=False), base, data,
                     tmp_path / "plain", **QUIET)
    assert all(B == 2 and not pos for (B, L), pos in shapes)
    shapes.clear()
    packed = finetune(make_config("smoke", **sets, max_steps=5, save_every=5, packing=True), base, data,
                      tmp_path / "packed", **QUIET)
    assert all(B == 1 and L <= 64 and pos for (B, L), pos in shapes) and max(L for (_, L), _ in shapes) > 32
    # fp32, same tokens and weights; the sums run over other micro-batch splits: rounding only
    assert packed["losses"] == pytest.approx(plain["losses"], rel=1e-5)

    base = save_checkpoint(learnable_model(seed=1, dropout=0.1, max_seq_len=32), tmp_path / "base_dropout")
    cfg = dict(sets, packing=True, save_every=3)
    ref = finetune(make_config("smoke", **cfg, max_steps=6), base, data, tmp_path / "ref", **QUIET)
    out = tmp_path / "resumed"
    finetune(make_config("smoke", **cfg, max_steps=3), base, data, out, **QUIET)
    again = finetune(make_config("smoke", **cfg, max_steps=6), base, data, out, **QUIET)
    assert again["resumed_from"] == 3
    got = losses(out)
    assert sorted(got) == list(range(1, 7))
    for step, loss in enumerate(ref["losses"], start=1):
        assert got[step] == pytest.approx(loss, rel=1e-6, abs=1e-7), step


@pytest.mark.parametrize("one_row,batch", [(False, 1), (True, 2)])
def test_packed_ranks_get_the_same_number_of_micro_batches(one_row, batch):
    """DDP syncs on each rank's last micro-batch: a rank whose rows pack into fewer rows is padded
    with micro-batches that train nothing."""
    from datasets import Dataset
    rows = _rows([15] * 4 + [2] * 12)
    ds = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    # seed 3: the shares pack into 2|1, 2|3 rows of 16 (one_row: 1|1, 1|2 rows of 32)
    stream = RowStream(ds, seed=3, pad_id=0, max_len=16, pack_to=16, one_row=one_row)
    counts, trained = [], 0
    for first in (0, 8):
        per_rank = [stream.step_rows(first, batch_size=batch, grad_accum=4 // batch, rank=r, world_size=2)
                    for r in (0, 1)]
        alone = [len(pack(stream.fetch(stream.indices(first + r * 4, 4)), 16 * batch)) for r in (0, 1)]
        counts.append(alone)
        assert len(per_rank[0].micro_batches) == len(per_rank[1].micro_batches) == max(alone)
        trained += sum(count_trained_tokens(m["labels"]) for s in per_rank for m in s.micro_batches)
    assert any(a != b for a, b in counts)                  # the shares really packed differently
    assert trained == sum(count_trained_tokens(collate([r], 0)["labels"]) for r in rows)


def test_one_row_packing_is_for_the_conv_only_model():
    assert packs_one_row("original") and not packs_one_row("selective")
