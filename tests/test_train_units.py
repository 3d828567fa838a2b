"""Pieces of the fine-tuning engine: collation, the row stream, checkpoint rotation and atomicity, the
NaN guard, metrics, the plan's arithmetic, evaluation helpers, pre-flight, CLI errors, lr sweep."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from mambaft.config import ConfigError, make_config
from mambaft.template import DEFAULT_TEMPLATE
from mambaft.tokenizer import load_tokenizer
from mambaft.train import run_state as ck
from mambaft.train.batches import RowStream, collate
from mambaft.train.evaluation import heldout_perplexity, probe_answers, summarize_val, write_probe_answers
from mambaft.train.metrics import DivergenceGuard, MetricsLog, TrainingDiverged, read_metrics
from mambaft.train.plan import epochs_per_source, plan_lines, provenance
from tests.conftest import make_small_gpt2_model
from tests.test_train_loop import QA, learnable_model, write_prepared

EOS = 50256


# --- collation ---------------------------------------------------------------------------------
def test_collate_masks_padding_by_length_not_by_token_id():
    # row 0 ends with a REAL trained end token; padding uses the same id 50256
    rows = [{"input_ids": [10, 11, 12, EOS], "labels": [-100, 11, 12, EOS]},
            {"input_ids": [20, 21, 22, 23, 24, 25], "labels": [-100, -100, 22, 23, 24, 25]}]
    b = collate(rows, pad_id=EOS)
    assert b["input_ids"].tolist() == [[10, 11, 12, EOS, EOS, EOS], [20, 21, 22, 23, 24, 25]]
    assert b["labels"].tolist() == [[-100, 11, 12, EOS, -100, -100], [-100, -100, 22, 23, 24, 25]]
    assert b["lengths"].tolist() == [4, 6]


def test_collate_refuses_rows_longer_than_the_model_naming_the_row():
    with pytest.raises(ValueError, match="row 'r7'.*300 tokens.*256"):
        collate([{"id": "r7", "input_ids": [1] * 300, "labels": [1] * 300}], pad_id=0, max_len=256)
    with pytest.raises(ValueError, match="3 input_ids but 2 labels"):
        collate([{"input_ids": [1, 2, 3], "labels": [1, 2]}], pad_id=0)


def test_row_stream_is_deterministic_covers_each_epoch_and_splits_ranks_exactly():
    from datasets import Dataset
    ds = Dataset.from_list([{"input_ids": [1] * (i + 2), "labels": [1] * (i + 2)} for i in range(10)])
    s = RowStream(ds, seed=3, pad_id=0)
    stream = s.indices(0, 30)
    for e in range(3):                                   # every epoch is a permutation of all rows
        assert sorted(stream[10 * e:10 * e + 10]) == list(range(10))
    assert stream[:10] != stream[10:20]                  # reshuffled per epoch
    assert RowStream(ds, seed=3, pad_id=0).indices(7, 9) == stream[7:16]   # position -> same rows
    # one process with 2 x 2 rows == two ranks with 2 x 1 rows each: the same 4 rows
    one = s.step_rows(8, batch_size=2, grad_accum=2, rank=0, world_size=1)
    r0 = s.step_rows(8, batch_size=2, grad_accum=1, rank=0, world_size=2)
    r1 = s.step_rows(8, batch_size=2, grad_accum=1, rank=1, world_size=2)
    assert sorted(one.row_ids) == sorted(r0.row_ids + r1.row_ids) == sorted(stream[8:12])
    lengths = [int(n) for mb in one.micro_batches for n in mb["lengths"]]
    assert lengths == sorted(lengths)                    # sorted by length: less padding


# --- checkpoints -----------------------------------------------------------------------------------
def _save(out, step, model, val_loss):
    tmp = ck.begin(out, step)
    ck.write_rng(tmp, 0)
    return ck.commit(out, step, model, trainer_state={"step": step}, config={"strategy": "smoke"},
                     template=DEFAULT_TEMPLATE, tokenizer=load_tokenizer(),
                     training_meta={"val_loss": val_loss}, export_original=False)


@pytest.mark.slow   # a training run
def test_rotation_keeps_exactly_the_newest_k_plus_the_best(tmp_path):
    model = make_small_gpt2_model(d_model=16, dense_hidden_dim=16)
    vals = {2: 3.0, 4: 1.5, 6: 2.0, 8: None, 10: 2.5, 12: 1.9}   # best: step 4
    removed_all = []
    for step, v in vals.items():
        _save(tmp_path, step, model, v)
        removed_all += [p.name for p in ck.rotate(tmp_path, keep_last=2)]
    assert [r.step for r in ck.list_checkpoints(tmp_path)] == [4, 10, 12]
    assert sorted(removed_all) == ["step_0000002", "step_0000006", "step_0000008"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == \
        ["step_0000004", "step_0000010", "step_0000012"]
    # when a newer checkpoint becomes the best, the old best goes
    _save(tmp_path, 14, model, 1.0)
    ck.rotate(tmp_path, keep_last=2)
    assert [r.step for r in ck.list_checkpoints(tmp_path)] == [12, 14]
    assert ck.best_checkpoint(ck.list_checkpoints(tmp_path)).step == 14


@pytest.mark.slow   # training runs
def test_half_written_checkpoints_never_count_and_are_cleaned(tmp_path):
    model = make_small_gpt2_model(d_model=16, dense_hidden_dim=16)
    _save(tmp_path, 5, model, 2.0)
    tmp = ck.begin(tmp_path, 10)                         # killed while writing step 10
    ck.write_rng(tmp, 0)
    broken = tmp_path / "checkpoints" / "step_0000020"   # a folder that only looks like one
    broken.mkdir()
    (broken / "trainer_state.pt").write_bytes(b"")
    assert [r.step for r in ck.list_checkpoints(tmp_path)] == [5]
    assert ck.latest_checkpoint(tmp_path).step == 5
    assert [p.name for p in ck.clean_partial(tmp_path)] == [".tmp-step_0000010"]


def test_rng_round_trip_restores_every_generator():
    import random
    import numpy as np
    state = ck.capture_rng()
    a = (random.random(), float(np.random.rand()), torch.rand(3).tolist())
    ck.restore_rng(state)
    assert (random.random(), float(np.random.rand()), torch.rand(3).tolist()) == a


# --- guard and metrics -------------------------------------------------------------------------------
def test_guard_skips_nonfinite_stops_after_n_in_a_row_and_alarms_on_spikes():
    g = DivergenceGuard(max_bad=3, warmup=5, spike_factor=2.0)
    assert [g.check(i, 2.0, 1.0) for i in range(6)] == ["ok"] * 6
    assert g.check(6, 5.0, 1.0) == "spike"               # 5.0 > 2 x ~2.0
    assert g.check(7, float("nan"), 1.0) == "nonfinite"
    assert g.check(8, 2.0, float("inf")) == "nonfinite"
    assert g.check(9, 2.1, 1.0) == "ok" and g.consecutive_bad == 0 and g.total_bad == 2
    g.check(10, float("nan"), 0.0)
    g.check(11, float("nan"), 0.0)
    with pytest.raises(TrainingDiverged, match="3 optimizer steps in a row.*checkpoint is intact"):
        g.check(12, float("inf"), 0.0)


def test_metrics_truncate_after_resume_and_nonfinite_as_null(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for s in range(1, 8):
        log.write({"step": s, "loss": 1.0 / s})
    log.write({"step": 8, "loss": float("nan")})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 9, "lo')                        # a line cut by SIGKILL
    assert log.truncate_after(5) == 4
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    log.write({"step": 6, "loss": float("inf")})
    assert read_metrics(tmp_path / "metrics.jsonl")[-1] == {"step": 6, "loss": None, "nonfinite": ["loss"]}
    silent = MetricsLog(tmp_path / "other.jsonl", enabled=False)   # ranks > 0
    silent.write({"step": 1})
    assert not (tmp_path / "other.jsonl").exists()


@pytest.mark.slow   # training runs
def test_nan_steps_are_skipped_logged_and_repeated_ones_stop_the_run(tmp_path, monkeypatch):
    from mambaft.train import loop
    from mambaft.train import finetune
    data = write_prepared(tmp_path / "data")
    from mambaft.checkpoint import save_checkpoint
    base = save_checkpoint(learnable_model(), tmp_path / "base")
    real = loop.micro_step
    calls = {"n": 0}
    bad_steps = {3, 4}

    def flaky(model, ids, labels, **kw):                 # steps 3 and 4 produce a NaN loss
        calls["n"] += 1
        loss, n = real(model, ids, labels, **kw)
        return (loss * float("nan"), n) if calls["n"] in bad_steps else (loss, n)   # a tensor or a float

    monkeypatch.setattr(loop, "micro_step", flaky)
    cfg = make_config("smoke", max_steps=6, batch_size=2, save_every=6, eval_every=6, lr=3e-3, warmup_steps=1)
    quiet = dict(progress=False, threads=1, heldout_texts={}, probes=[], eval_at_start=False)
    finetune(cfg, base, data, tmp_path / "run", **quiet)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    events = [r["step"] for r in rows if r.get("event") == "nonfinite"]
    assert events == [3, 4]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r and "event" not in r}
    assert losses[3] is None and losses[4] is None and all(math.isfinite(losses[s]) for s in (1, 2, 5, 6))

    calls["n"] = 0
    bad_steps.update(range(3, 100))                      # from step 3 on, always NaN
    with pytest.raises(TrainingDiverged, match="5 optimizer steps in a row"):
        finetune(make_config("smoke", max_steps=20, batch_size=2, save_every=2, eval_every=20),
                 base, data, tmp_path / "run2", **quiet)
    assert ck.latest_checkpoint(tmp_path / "run2").step == 6   # the last good state is on disk


# --- plan ------------------------------------------------------------------------------------------------
def test_plan_arithmetic_provenance_and_the_plans_warnings():
    cfg = make_config("quick")
    assert provenance(cfg)["lr"] == "preset quick" and provenance(cfg)["seed"] == "default"
    assert provenance(make_config("quick", lr=1e-4))["lr"] == "override"
    assert provenance(make_config("quick", max_steps=50), {"max_steps": "--max-steps"})["max_steps"] == \
        "override (--max-steps)"
    assert provenance(cfg, {"max_steps": "--set"})["max_steps"] == "preset quick"   # same value passed again
    epochs = epochs_per_source(["alpaca"] * 52_002, 192 * 10_000)
    assert epochs["alpaca"] == pytest.approx(36.92, abs=0.01)          # the plan's "37 epochs" (1,920,000 / 52,002 = 36.922)
    lines, warns = plan_lines(cfg, world_size=6, train_sources=["alpaca"] * 52_002, n_params=124_104_719)
    text = "\n".join(lines)
    assert "4 rows x 8 accumulation x 6 process(es) = 192 rows/step" in text
    assert "192 x 512 = 98,304" in text
    assert any("36.9 epochs of alpaca" in w for w in warns)
    assert any("lr 1e-05" in w and "multi-billion" in w for w in warns)
    _, warns_one = plan_lines(cfg, world_size=1, train_sources=["alpaca"] * 52_002, n_params=124_104_719)
    assert any("6.2 epochs" in w for w in warns_one)                      # 4 x 8 x 1 x 10k rows
    _, ok = plan_lines(make_config("quick", lr=1e-4, max_steps=500), world_size=6,
                       train_sources=["alpaca"] * 52_002, n_params=124_104_719)
    assert ok == []                                                        # 1.8 epochs, lr in range


# --- evaluation helpers --------------------------------------------------------------------------------------
def test_val_summary_is_token_weighted():
    row = summarize_val({"a": [10.0, 5], "b": [30.0, 10], "c": [0.0, 0]})    # float64 arithmetic: approx's default
    assert row["val_loss"] == pytest.approx(40.0 / 15)
    assert row["val_loss/a"] == 2.0 and row["val_loss/b"] == 3.0 and "val_loss/c" not in row
    assert row["val_ppl"] == pytest.approx(math.exp(40.0 / 15))


def test_heldout_perplexity_equals_exp_of_the_mean_token_loss():
    model = make_small_gpt2_model(seed=4).eval()
    tok = load_tokenizer()
    texts = {"t": ["The cat sat on the mat. " * 3, "A second document follows here.", "A third one."]}
    res = heldout_perplexity(model, texts, tok, window=16, max_tokens=26, device=torch.device("cpu"))
    # each document cut on its own (no window spans two), every token but a window's first scored,
    # at most 26 scored tokens: 22 tokens -> windows of 16 + 6 (15 + 5 scored), 6 (5), then 4 cut to 2 (1)
    docs = [tok.encode(t) for t in texts["t"]]
    assert [len(d) for d in docs] == [22, 6, 4]
    total, n = 0.0, 0
    for w in (docs[0][:16], docs[0][16:], docs[1], docs[2][:2]):
        w = torch.tensor([w])
        with torch.no_grad():
            out = model(w, labels=w, loss_reduction="sum")
        total, n = total + float(out["loss"]), n + out["n_tokens"]
    assert n == 15 + 5 + 5 + 1
    # the same fp32 forwards summed in another order (26 token losses, each < 12): exp turns the mean's
    # absolute error 2 x 25 u x 12 = 3.6e-5 / 26 per token into a relative 1.4e-6 of the ppl; 1e-5 is 7x that
    assert res["heldout_ppl/t"] == pytest.approx(math.exp(total / n), rel=1e-5)
    assert res["heldout_ppl"] == res["heldout_ppl/t"]


def test_probe_answers_are_greedy_stop_and_are_written(tmp_path):
    model = make_small_gpt2_model(seed=5)
    tok = load_tokenizer()
    probes = [SimpleNamespace(id="p1", lang="en", messages=[{"role": "user", "content": q}],
                              check=lambda ans: len(ans) > 0) for q, _ in QA[:3]]
    rows = probe_answers(model, probes, tok, DEFAULT_TEMPLATE, max_new_tokens=5)
    assert len(rows) == 3
    for r in rows:
        assert r["prompt"].endswith("Assistant:") and 1 <= r["new_tokens"] <= 5
        assert r["answer"] == DEFAULT_TEMPLATE.clean_reply(r["raw"])
        assert r["stopped"] == (r["end_token"] or "\nUser:" in r["raw"])
    summary = write_probe_answers(tmp_path / "probes" / "step_7.jsonl", 7, rows)
    lines = [json.loads(l) for l in (tmp_path / "probes" / "step_7.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [7, 7, 7]
    assert summary["probe_pass_rate"] == sum(r["passed"] for r in rows) / 3


# --- pre-flight, CLI, lr sweep -------------------------------------------------------------------------
def test_preflight_reports_what_it_finds():
    from mambaft.train.preflight import preflight
    rep = preflight(num_processes=6)
    if not torch.cuda.is_available():
        assert not rep.ok and "no CUDA GPU visible" in rep.text()
    else:
        assert f"{torch.cuda.device_count()} GPU(s) visible" in rep.text()
        assert rep.ok == (torch.cuda.device_count() >= 6 and "FAIL" not in rep.text())


def test_cli_refuses_unknown_keys_and_missing_data(tmp_path):
    from mambaft.cli.finetune import main
    with pytest.raises(ConfigError, match="unknown config key.*bogus"):
        main(["--strategy", "smoke", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "bogus=1"])
    with pytest.raises(FileNotFoundError, match="nowhere: no such data folder"):
        main(["--strategy", "smoke", "--base", str(tmp_path), "--data", str(tmp_path / "nowhere"),
              "--out", str(tmp_path / "o"), "--no-progress"])


@pytest.mark.slow   # six short training runs
def test_lr_sweep_writes_curves_and_a_plot(tmp_path):
    from mambaft.checkpoint import save_checkpoint
    from mambaft.train.sweep import lr_sweep
    data = write_prepared(tmp_path / "data")
    base = save_checkpoint(learnable_model(), tmp_path / "base")
    res = lr_sweep(make_config("smoke", batch_size=8), base, data, tmp_path / "sweep", lrs=(1e-5, 3e-3),
                   steps=8, progress=False, threads=1)
    assert set(res["curves"]) == {"1e-05", "0.003"} and all(len(c) == 8 for c in res["curves"].values())
    # 1e-5 barely moves in 8 steps; 3e-3 does: the sweep must pick it
    assert res["best_lr"] == 3e-3 and res["scores"]["0.003"] < res["scores"]["1e-05"] - 0.5
    assert (tmp_path / "sweep" / "lr_sweep.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "sweep" / "lr_sweep.json").read_text())["best_lr"] == 3e-3


@pytest.mark.slow   # two training runs
def test_bf16_autocast_run_tracks_the_fp32_run(tmp_path):
    """precision=bf16 goes through mambaft.runtime.autocast (matmuls in bf16, SWELU and the loss's
    softmax in fp32): the first losses agree with fp32 to bf16 accuracy."""
    from mambaft.checkpoint import save_checkpoint
    from mambaft.train import finetune
    data = write_prepared(tmp_path / "data")
    base = save_checkpoint(learnable_model(seed=6), tmp_path / "base")
    quiet = dict(progress=False, threads=1, heldout_texts={}, probes=[], eval_at_start=False)
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = make_config("smoke", precision=precision, max_steps=4, batch_size=4, save_every=4,
                          eval_every=4, lr=3e-3, warmup_steps=1)
        runs[precision] = finetune(cfg, base, data, tmp_path / precision, **quiet)
    assert runs["bf16"]["losses"] != runs["fp32"]["losses"]              # bf16 really ran
    # bf16 keeps 8 significant bits (u = 2^-9 = 2e-3 per rounded operand); after 4 steps at lr 3e-3 the
    # losses stay within a few u of fp32 whether the bf16 matmul is native (AMX / AVX-512 BF16) or
    # emulated (AVX2): 3% is ~15 u
    for a, b in zip(runs["fp32"]["losses"], runs["bf16"]["losses"]):
        assert b == pytest.approx(a, rel=0.03)
    start = read_metrics(tmp_path / "bf16" / "metrics.jsonl")[0]
    assert start["event"] == "start" and start["precision"] == "bf16"


@pytest.mark.slow   # a training run
def test_selective_architecture_upgrades_the_base_first(tmp_path):
    """cfg.architecture="selective" on an original base: upgrade_to_selective, then train; the saved
    model is selective, and export_original is skipped (the original code cannot load it)."""
    from mambaft.checkpoint import load_checkpoint, save_checkpoint
    from mambaft.train import finetune
    data = write_prepared(tmp_path / "data")
    base = save_checkpoint(learnable_model(seed=7), tmp_path / "base")
    quiet = dict(progress=False, threads=1, heldout_texts={}, probes=[], eval_at_start=False)
    common = dict(max_steps=2, batch_size=4, save_every=2, eval_every=2, lr=3e-3, warmup_steps=1)
    orig = finetune(make_config("smoke", **common), base, data, tmp_path / "orig", **quiet)
    sel = finetune(make_config("smoke", architecture="selective", ssm_state=4, export_original=True, **common),
                   base, data, tmp_path / "sel", **quiet)
    # the upgrade starts as the same function: the first step's loss is the original model's
    # (a + 0 * y: the same fp32 function, so the same loss up to the loss kernels' summation order)
    assert sel["losses"][0] == pytest.approx(orig["losses"][0], rel=1e-5)
    model, _ = load_checkpoint(sel["final"])
    assert model.config.architecture == "selective" and model.config.ssm_state == 4
    assert sel["final_original"] is None and not (tmp_path / "sel" / "final_model.pt").exists()
