"""The context evaluation: loss by token position, the name-recall probe, the report and its plot."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from mambaft.cli.context import main
from mambaft.evaluate.context import (PROBE_NAMES, TRAIN_NAMES, ContextReport, log_bins,
                                      loss_by_position, make_recall_items, measure_context,
                                      paired_advantage, recall_probe, summarize_curve, text_windows,
                                      token_stream)
from mambaft.model import upgrade_to_selective
from mambaft.recipes.context_repair import recall_batch, repeat_batch
from mambaft.tokenizer import load_tokenizer
from tests.conftest import make_small_gpt2_model

TEXT = ("The committee met on Tuesday to discuss the budget for the coming year. Members raised "
        "questions about schools, roads and the harbour, and the chair promised an answer by spring. ")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def _open_gates(model, std=0.5):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.mamba_stack.layers:
            layer.mamba.selective.gate.copy_(torch.randn(layer.mamba.selective.gate.shape, generator=g) * std)
    return model


@pytest.mark.numerics
def test_loss_by_position_equals_cross_entropy_of_the_full_forward(tiny_model):
    ids = torch.randint(0, 512, (5, 40), generator=torch.Generator().manual_seed(0))
    per = loss_by_position(tiny_model, ids, batch_size=2, chunk=7)
    assert per.shape == (5, 39)
    with torch.no_grad():
        logits = tiny_model(ids)["logits"]
    want = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    # the same fp32 logits through a chunked log-softmax: measured at most 0.031 of this tolerance
    # (|diff| <= 2.9e-6 on losses up to 25, AVX-512 and ATen DEFAULT kernels)
    torch.testing.assert_close(per, want, atol=1e-5, rtol=1e-5)


def test_original_loss_ignores_tokens_beyond_its_reach_and_the_upgrade_does_not(tiny_model):
    # tiny fixture: 2 blocks of width 4 -> reach 1 + 2 x 3 = 7 tokens. Change tokens 0..4 only:
    # outputs at positions >= 4 + 7 = 11 cannot change, so neither can the loss of targets t >= 12.
    a = torch.randint(0, 512, (1, 60), generator=torch.Generator().manual_seed(0))
    b = a.clone()
    b[0, :5] = (b[0, :5] + 1) % 512
    la, lb = loss_by_position(tiny_model, a), loss_by_position(tiny_model, b)
    assert torch.equal(la[:, 11:], lb[:, 11:])
    assert (la[:, :11] - lb[:, :11]).abs().max() > 0
    up = _open_gates(upgrade_to_selective(tiny_model))
    ua, ub = loss_by_position(up, a), loss_by_position(up, b)
    assert (ua[:, 40:] - ub[:, 40:]).abs().max() > 1e-4     # 35+ tokens later, the state remembers


def test_summarize_curve_measures_the_gain_beyond_the_reach():
    t = torch.arange(1, 256, dtype=torch.float32)
    flat = (4.0 + 3.0 * torch.exp(-t / 2)).expand(8, -1)          # plateaus well before 19
    falling = (4.0 + 3.0 * torch.exp(-t / 2) - 0.3 * torch.log(t)).expand(8, -1)
    s_flat, s_fall = summarize_curve(flat), summarize_curve(falling)
    # flat: exp(-t/2) < 1e-4 past t = 19, so the gain is that tail (< 1e-4) plus fp32 means of ~4.0 (ulp 4.8e-7)
    assert abs(s_flat["gain_beyond_rf"]) < 1e-3
    # falling: 0.3 * (mean log t over the last quarter - over t = 19..37) = 0.3 * (5.36 - 3.28) ~ 0.62
    assert s_fall["gain_beyond_rf"] == pytest.approx(0.62, abs=0.02)    # 0.62 is the rounded hand value
    assert list(s_flat["loss_by_bucket"])[:3] == ["1-1", "2-3", "4-7"] and s_flat["windows"] == 8
    assert s_flat["length"] == 256


def test_paired_advantage_separates_context_use_from_a_uniform_gain():
    g = torch.Generator().manual_seed(0)
    ref = 5.0 + torch.randn(32, 127, generator=g)                 # noisy per-token losses
    uniform = ref - 0.1                                            # better everywhere alike
    context = ref - 0.2 * (torch.arange(1, 128) >= 64).float()    # better only with 64+ tokens
    u, c = paired_advantage(ref, uniform), paired_advantage(ref, context)
    # fp32 differences of values near 5 (ulp 4.8e-7) averaged: a few ulp, well inside abs 1e-5
    assert list(u) == ["1-18", "19-63", "64-127"]
    assert [m for m, _ in u.values()] == pytest.approx([0.1, 0.1, 0.1], abs=1e-5)
    assert [m for m, _ in c.values()] == pytest.approx([0.0, 0.0, 0.2], abs=1e-5)
    assert c["64-127"][1] < 1e-5                                   # paired: the token noise cancels
    xs, ys = log_bins([float(v) for v in range(1, 101)])           # curve value = position
    assert xs[0] == 1 and ys[0] == 1 and xs[-1] <= 100 and ys == pytest.approx(xs)


def test_recall_items_are_balanced_and_far_enough(tok):
    filler = token_stream(tok, [TEXT] * 20)
    items = make_recall_items(tok, filler, n_fillers=4, min_gap=50, max_gap=90)
    assert len(items) == 4 * len(PROBE_NAMES)
    assert all(50 <= it.gap <= 90 for it in items)
    assert sorted(it.answer for it in items[:10]) == list(range(10))     # each name once per filler
    first = items[0]
    assert tok.decode(first.ids).startswith("My name is Alice.")
    assert tok.decode(first.ids).endswith(" What is my name? My name is")
    assert first.ids[len(first.ids) - 1 - first.gap] == tok.encode(" Alice")[0]
    assert not set(PROBE_NAMES) & set(TRAIN_NAMES)                       # probe names never trained
    with pytest.raises(ValueError, match="single-token"):
        make_recall_items(tok, filler, names=["Alice", "Bartholomew"])


def test_original_scores_exactly_chance_on_the_recall_probe(tok):
    model = make_small_gpt2_model()               # reach 7 tokens; the name is 50+ tokens back
    filler = token_stream(tok, [TEXT] * 20)
    items = make_recall_items(tok, filler, n_fillers=3)
    r = recall_probe(model, items)
    assert r["accuracy"] == r["chance_accuracy"] == 0.1 and r["mean_rank"] == r["chance_rank"] == 5.5
    up = _open_gates(upgrade_to_selective(model), std=2.0)

    def scores(m, it):                             # one item at a time: the same shapes every call
        with torch.no_grad():
            return m.lm_head(m.features(torch.tensor([it.ids]))[0, -1])[it.candidates]
    # same filler, names 0 and 1: identical for the original (bit for bit), not for the upgrade
    # (the random model's logits are ~1e-4, so the difference is small, but it is there)
    assert torch.equal(scores(model, items[0]), scores(model, items[1]))
    assert (scores(up, items[0]) - scores(up, items[1])).abs().max() > 0


def test_recall_training_rows_train_only_the_answer(tok):
    stream = token_stream(tok, [TEXT] * 20)
    ids, labels = recall_batch(tok, stream, 6, torch.Generator().manual_seed(0), min_gap=20, max_gap=40)
    assert ids.shape == labels.shape and ids.shape[0] == 6
    for b in range(6):
        trained = (labels[b] != -100).nonzero().flatten().tolist()
        assert len(trained) == 1
        name = tok.decode([int(labels[b, trained[0]])]).strip()
        assert name in TRAIN_NAMES and int(ids[b, 3]) == int(labels[b, trained[0]])
        assert 20 <= trained[0] - 3 <= 41


def test_report_saves_json_and_plot(tok, tmp_path):
    model = make_small_gpt2_model(max_seq_len=64)
    up = upgrade_to_selective(model)
    texts = [TEXT * 3, TEXT * 2]
    rep = measure_context({"original": model, "selective": up}, tok, texts, length=64, windows=4, n_fillers=2)
    assert isinstance(rep, ContextReport)
    # closed gate: the upgraded model measures exactly like the original
    assert rep.curves["original"] == rep.curves["selective"] and len(rep.curves["original"]) == 63
    assert rep.recall["selective"]["accuracy"] == 0.1
    assert rep.reference == "original" and rep.advantage["selective"]["1-18"] == [0.0, 0.0]
    path = rep.save(tmp_path)
    data = json.loads(path.read_text())
    assert set(data) == {"curves", "summary", "recall", "advantage", "advantage_curves", "reach",
                         "ablation", "reference", "notes"} and data["notes"]["length"] == 64
    # measured reach: the closed gate leaves the upgraded model at the original's 1 + 2 layers x 3 = 7 tokens
    assert data["reach"]["original"]["receptive_field"] == data["reach"]["selective"]["receptive_field"] == 7
    # cutting the context to the last 19 tokens (true positions kept) changes nothing for either
    for name in ("original", "selective"):
        mean, se = data["ablation"][name]["20-63"]
        assert mean == 0.0 and set(data["ablation"][name]) == {"20-63"}       # 64-token windows
    png = tmp_path / "context.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "selective" in rep.table() and "chance" in rep.table()
    assert ContextReport.load(tmp_path).table() == rep.table()
    with pytest.raises(FileNotFoundError, match="no context report"):
        ContextReport.load(tmp_path / "missing")


def test_windows_and_cli_help(capsys):
    stream = torch.arange(1000)
    w = text_windows(stream, 100, 4)
    assert w.shape == (4, 100) and w[0, 0] == 0 and w[-1, -1] == 999
    with pytest.raises(ValueError, match="too short"):
        text_windows(torch.arange(50), 100, 4)
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "measure" in out


@pytest.mark.numerics
def test_reach_is_the_conv_reach_for_the_original_and_opens_with_the_gates():
    from mambaft.evaluate.context import reach
    model = make_small_gpt2_model(max_seq_len=64)
    up = upgrade_to_selective(model)
    assert reach(model, 40)["receptive_field"] == reach(up, 40)["receptive_field"] == 1 + 2 * 3
    with torch.no_grad():
        for layer in up.mamba_stack.layers:
            layer.mamba.selective.gate.fill_(0.5)
            # slow decay (A = -0.01 instead of S4D's -1..-16, whose e^-14 after 20 steps sits below fp32
            # rounding: the ablation was exactly 0 with AVX-512 kernels and not with DEFAULT ones): what lies
            # 20-63 tokens back now moves the logits far above rounding, on every CPU
            layer.mamba.selective.A_log.fill_(math.log(0.01))
    r = reach(up, 40)
    # the selective state carries every earlier token: all 40 tested distances move the logits
    assert r["saturated"] and r["receptive_field"] == 41 and r["rel_change_at"]["32"] > 1e-9
    # ... so cutting its context to 19 tokens changes its loss (the original's: not at all)
    from mambaft.evaluate.context import context_ablation
    win = torch.randint(0, 50257, (4, 64), generator=torch.Generator().manual_seed(0))
    for m, moved in ((model, False), (up, True)):
        ab = context_ablation(m, win, loss_by_position(m, win))["20-63"]
        # the original: the same rows through the same kernels, so exactly 0 (each GEMM row's sum order does
        # not depend on the batch); the selective model: a real change, its random logits are ~1e-3
        assert (ab[0] != 0.0) == moved, ab


@pytest.mark.slow   # a training run
def test_demo_with_frozen_original_trains_only_the_new_path(tmp_path):
    from mambaft.checkpoint import load_checkpoint
    from mambaft.recipes.context_repair import run_demo
    text = tmp_path / "texts"                    # a folder of documents: ~5 % of them are held out
    text.mkdir()
    for i in range(100):
        (text / f"doc{i:03d}.txt").write_text(f"Document {i}. " + TEXT * 3, encoding="utf-8")
    rep = run_demo(tmp_path / "out", texts=[str(text)], steps=2, continue_steps=2, d_model=16, n_layers=2,
                   length=128, batch=2, recall_rows=2, windows=2, n_fillers=1, freeze_original=True)
    assert list(rep.curves) == ["base", "selective+2"] and rep.reference == "base"
    assert rep.notes["freeze_original"] and set(rep.notes["continue_seconds"]) == {"selective"}
    base = load_checkpoint(tmp_path / "out" / "models" / "base")[0].state_dict()
    sel = load_checkpoint(tmp_path / "out" / "models" / "selective")[0].state_dict()
    # the original path is the base, bit for bit; only the new `.selective.` parameters moved
    assert all(torch.equal(sel[k], v) for k, v in base.items())
    assert any(not torch.equal(sel[k], torch.zeros_like(sel[k])) for k in sel if k.endswith("gate"))


def test_copy_rows_train_only_the_second_copy():
    stream = torch.arange(10_000)                       # distinct ids: every copy is identifiable
    ids, labels = repeat_batch(stream, 5, torch.Generator().manual_seed(0), seg=8, min_gap=20, max_gap=30)
    for b in range(5):
        trained = (labels[b] != -100).nonzero().flatten()
        n = int(trained[-1]) + 1                        # the row's real length (right padding after it)
        assert trained.tolist() == list(range(n - 8, n))
        assert torch.equal(ids[b, :8], ids[b, n - 8:n]) and torch.equal(labels[b, n - 8:n], ids[b, :8])
        assert 20 <= n - 16 <= 30                       # the other text between the two copies
        assert (ids[b, :8].diff() == 1).all()           # a contiguous piece of the stream


def test_loss_by_position_builds_no_autograd_graph():
    model = make_small_gpt2_model(max_seq_len=64)
    win = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(0))
    grad_on = []                                        # the forward itself must run without autograd
    model.mamba_stack.norm.register_forward_hook(lambda *_: grad_on.append(torch.is_grad_enabled()))
    loss_by_position(model, win)
    assert grad_on == [False]
