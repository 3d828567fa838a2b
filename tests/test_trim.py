"""Trimming rows to the receptive field (mambaft.train.trim): every trained token keeps its logits,
loss and gradient, sorted and packed, and a margin one token too short is caught."""
from __future__ import annotations

import pytest
import torch

from mambaft.model import MambaSWELUConfig, upgrade_to_selective
from mambaft.train.batches import collate, collate_packed, pack
from mambaft.train.trim import context_seen, kept_tokens, trim_row
from tests.conftest import make_small_gpt2_model
from tests.test_packing import ATOL   # same operations per token, matmuls of other heights: see there

N_LAYERS = 2
SEEN = 1 + N_LAYERS * 3            # the small model's receptive field (conv width 4): 7 tokens


def test_kept_tokens_cover_each_trained_label_and_its_window():
    labels = [-100] * 20
    for t in (10, 11, 18):
        labels[t] = 1
    # label 10 needs tokens 7..10, 11 -> 8..11, 18 -> 15..18 (seen = 3)
    assert kept_tokens(labels, 3) == [7, 8, 9, 10, 11, 15, 16, 17, 18]
    assert kept_tokens([5] + [-100] * 4, 3) == []        # label 0 is never scored
    assert kept_tokens([-100, 1, 1], 19) == [0, 1, 2]     # the window stops at the row's start
    row = trim_row({"id": 4, "input_ids": list(range(100, 120)), "labels": labels}, 3)
    assert row["positions"] == [7, 8, 9, 10, 11, 15, 16, 17, 18]
    assert row["input_ids"] == [107, 108, 109, 110, 111, 115, 116, 117, 118]
    assert row["labels"][0] == row["labels"][5] == -100   # no label is scored across a cut
    assert row["id"] == 4
    nothing = trim_row({"input_ids": [1, 2, 3], "labels": [-100] * 3}, 3)
    assert nothing == {"input_ids": [3], "labels": [-100], "positions": [2]}   # trains nothing


def test_context_seen_is_the_receptive_field_and_none_for_the_selective_scan():
    cfg = MambaSWELUConfig()
    assert context_seen(cfg) == cfg.receptive_field == 19
    model = upgrade_to_selective(make_small_gpt2_model(n_layers=N_LAYERS))
    assert context_seen(model.config) is None


def _rows(seed=0):
    """Conversations with long untrained stretches: a prompt, an answer, a long user turn, an answer."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, parts in enumerate([(15, 5, 12, 4), (3, 6, 20, 2), (25, 1, 2, 3), (9, 9, 0, 0)]):
        ids = torch.randint(0, 50257, (sum(parts),), generator=g).tolist()
        labels, t = [], 0
        for k, n in enumerate(parts):
            labels += [-100] * n if k % 2 == 0 else ids[t:t + n]
            t += n
        out.append({"id": i, "input_ids": ids, "labels": labels})
    return out


def _trained_logits(logits_row, labels):
    """Logits that score each trained label t (those at t-1), in label order."""
    return torch.stack([logits_row[t - 1] for t in range(1, len(labels)) if labels[t] != -100])


def _check_same_trained_logits(model, rows, seen, layout):
    trimmed = [trim_row(r, seen) for r in rows]
    assert sum(len(r["input_ids"]) for r in trimmed) < sum(len(r["input_ids"]) for r in rows)
    if layout == "sorted":
        batch, places = collate(trimmed, pad_id=50256), [(b, 0) for b in range(len(trimmed))]
    else:
        bins = pack(trimmed, capacity=64)
        batch = collate_packed(bins, pad_id=50256)
        where = {}
        for b, segs in enumerate(bins):
            start = 0
            for r in segs:
                where[r["id"]] = (b, start)
                start += len(r["input_ids"])
        places = [where[r["id"]] for r in trimmed]
    with torch.no_grad():
        out = model(batch["input_ids"], labels=batch["labels"], positions=batch["positions"],
                    return_logits=True, loss_reduction="sum")
    total, n_total, worst = 0.0, 0, 0.0
    for r, t, (b, start) in zip(rows, trimmed, places):
        with torch.no_grad():
            alone = model(torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]]),
                          return_logits=True, loss_reduction="sum")
        want = _trained_logits(alone["logits"][0], r["labels"])
        got = _trained_logits(out["logits"][b, start:start + len(t["input_ids"])], t["labels"])
        worst = max(worst, float((want - got).abs().max()))
        total += float(alone["loss"])
        n_total += alone["n_tokens"]
    return out, total, n_total, worst


@pytest.mark.numerics
@pytest.mark.parametrize("layout", ["sorted", "packed"])
def test_trimmed_rows_give_every_trained_token_its_logits_and_loss(layout):
    model = make_small_gpt2_model(seed=3, d_model=32, n_layers=N_LAYERS, max_seq_len=64).eval()
    with torch.no_grad():   # a strong conv, so the window's farthest token moves the logits visibly
        for layer in model.mamba_stack.layers:
            layer.mamba.conv1d.weight.mul_(10.0)
    out, total, n_total, worst = _check_same_trained_logits(model, _rows(), SEEN, layout)
    assert worst <= ATOL
    assert out["n_tokens"] == n_total
    assert float(out["loss"]) == pytest.approx(total, rel=1e-5)
    # one token of margin less and some trained logits move by 40x the tolerance (measured 4.3e-4):
    # the margin is exactly the receptive field, and this test would catch a leak
    *_, leak = _check_same_trained_logits(model, _rows(), SEEN - 1, layout)
    assert leak > 10 * ATOL


@pytest.mark.numerics
@pytest.mark.parametrize("layout", ["sorted", "packed"])
def test_trimmed_rows_give_the_untrimmed_gradients(layout):
    model = make_small_gpt2_model(seed=4, d_model=32, n_layers=N_LAYERS, max_seq_len=64).train()
    rows = _rows(seed=1)
    trimmed = [trim_row(r, SEEN) for r in rows]
    batch = (collate(trimmed, pad_id=50256) if layout == "sorted"
             else collate_packed(pack(trimmed, capacity=64), pad_id=50256))
    model(batch["input_ids"], labels=batch["labels"], positions=batch["positions"],
          return_logits=False, loss_reduction="sum")["loss"].backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    full = collate(rows, pad_id=50256)
    model(full["input_ids"], labels=full["labels"], return_logits=False,
          loss_reduction="sum")["loss"].backward()
    for n, g in got.items():
        # the same nonzero per-token terms in another summation order (the dropped tokens add exact
        # zeros): fp32 rounding, as in test_packing's gradient test, whose bound (measured <= 9e-8 on
        # gradients up to 0.21, 10x headroom) this reuses
        torch.testing.assert_close(g, dict(model.named_parameters())[n].grad, atol=1e-6, rtol=1e-5)


@pytest.mark.slow   # training runs
def test_trimmed_finetune_trains_like_untrimmed_and_resumes_exactly(tmp_path):
    """The loop with trim_context=True: the losses of the untrimmed run (dropout 0), and, trimmed and
    packed with dropout 0.1, a run stopped at step 3 then resumed equals an uninterrupted one."""
    from datasets import load_from_disk

    from mambaft.checkpoint import save_checkpoint
    from mambaft.config import make_config
    from mambaft.train import finetune
    from mambaft.train.metrics import read_metrics
    from tests.test_train_loop import QUIET, learnable_model, write_prepared

    data = write_prepared(tmp_path / "data")
    model = learnable_model(seed=1, dropout=0.0)
    seen = context_seen(model.config)
    train = load_from_disk(str(data))["train"]
    assert sum(len(trim_row(r, seen)["input_ids"]) for r in train) < sum(len(r) for r in train["input_ids"])
    sets = dict(lr=3e-3, warmup_steps=2, schedule="constant", batch_size=2, grad_accum=2,
                eval_every=100, keep_last=2)
    base = save_checkpoint(model, tmp_path / "base")
    plain = finetune(make_config("smoke", **sets, max_steps=5, save_every=5), base, data,
                     tmp_path / "plain", **QUIET)
    trimmed = finetune(make_config("smoke", **sets, max_steps=5, save_every=5, trim_context=True), base,
                       data, tmp_path / "trimmed", **QUIET)
    # fp32, the same trained tokens and weights, fewer zero terms in the sums: rounding only
    assert trimmed["losses"] == pytest.approx(plain["losses"], rel=1e-5)

    base = save_checkpoint(learnable_model(seed=1, dropout=0.1), tmp_path / "base_dropout")
    cfg = dict(sets, trim_context=True, packing=True, save_every=3)
    ref = finetune(make_config("smoke", **cfg, max_steps=6), base, data, tmp_path / "ref", **QUIET)
    out = tmp_path / "resumed"
    finetune(make_config("smoke", **cfg, max_steps=3), base, data, out, **QUIET)
    again = finetune(make_config("smoke", **cfg, max_steps=6), base, data, out, **QUIET)
    assert again["resumed_from"] == 3
    got = {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r and "event" not in r}
    assert sorted(got) == list(range(1, 7))
    for step, loss in enumerate(ref["losses"], start=1):
        assert got[step] == pytest.approx(loss, rel=1e-6, abs=1e-7), step


def _stream_rows(lengths_and_trained):
    """Dataset rows of the given lengths, each trained on its last `trained` tokens."""
    from datasets import Dataset
    rows = []
    for n, trained in lengths_and_trained:
        ids = [(7 * i + n) % 50000 for i in range(n)]
        rows.append({"input_ids": ids, "labels": [-100] * (n - trained) + ids[n - trained:]})
    return Dataset.from_list(rows)


@pytest.mark.parametrize("pack_to, one_row", [(None, False), (16, False), (16, True)])
def test_a_row_past_max_seq_len_is_refused_by_name_even_when_trimming_shortens_it(pack_to, one_row):
    """Trimmed, the 40-token row is 19 + 3 tokens long, but it still reads positions up to 39: the
    position table (max_seq_len 16) cannot hold it. Before, the length check passed and the model's
    position lookup raised IndexError (issue 28)."""
    from mambaft.train.batches import RowStream
    ds = _stream_rows([(40, 3), (40, 3)])
    stream = RowStream(ds, seed=0, pad_id=0, max_len=16, pack_to=pack_to, one_row=one_row, trim_to=19)
    with pytest.raises(ValueError, match=r"row \d+: 40 tokens, longer than max_seq_len 16"):
        stream.step_rows(0, batch_size=2, grad_accum=1, rank=0, world_size=1)


@pytest.mark.parametrize("pack_to, one_row", [(None, False), (8, False), (8, True)])
@pytest.mark.parametrize("trim_to", [None, SEEN])
def test_empty_rows_are_padding_that_trains_nothing_in_every_layout(pack_to, one_row, trim_to):
    """Rows with no tokens (hand-made data) crashed trimming (IndexError) and packing (one label more
    than tokens). They now train nothing, and the other rows train as if they were absent."""
    from mambaft.train.batches import RowStream
    from mambaft.train.step import count_trained_tokens
    ds = _stream_rows([(0, 0), (6, 2), (0, 0), (0, 0)])
    stream = RowStream(ds, seed=0, pad_id=0, max_len=16, pack_to=pack_to, one_row=one_row, trim_to=trim_to)
    got = stream.step_rows(0, batch_size=2, grad_accum=2, rank=0, world_size=1)
    assert sorted(got.row_ids) == [0, 1, 2, 3]
    assert sum(count_trained_tokens(m["labels"]) for m in got.micro_batches) == 2
    for m in got.micro_batches:
        assert m["input_ids"].shape[1] >= 1 and m["input_ids"].shape == m["labels"].shape
    model = make_small_gpt2_model(seed=3, d_model=32, n_layers=N_LAYERS, max_seq_len=16)
    losses = [model(m["input_ids"], labels=m["labels"], positions=m.get("positions"), loss_reduction="sum")
              for m in got.micro_batches]
    assert sum(int(out["n_tokens"]) for out in losses) == 2
    # an all-empty micro-batch trains nothing: its summed loss is exactly 0, not NaN
    assert all(torch.isfinite(out["loss"]) for out in losses)
