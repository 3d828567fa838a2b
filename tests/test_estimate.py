"""The time and disk estimate printed before a run (mambaft.train.estimate, `mambaft plan`), held
against a run it estimated, and the `mambaft config` / `mambaft plan` argument order."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mambaft.cli import config as config_cli
from mambaft.cli import plan as plan_cli
from mambaft.config import make_config
from mambaft.model.mambaswelu import MambaSWELUConfig
from mambaft.train import estimate as est


def test_config_and_plan_take_overrides_after_the_options(capsys):
    """`mambaft config quick --budget cpu base=X` was "unrecognized arguments: base=X"."""
    assert config_cli.main(["quick", "--budget", "cpu", "base=final_model.pt", "lr=5e-5"]) == 0
    out = capsys.readouterr().out
    assert "base = 'final_model.pt'  (override)" in out or '"base": "final_model.pt"' in out
    assert '"lr": 5e-05' in out and "CPU budget" in out
    assert plan_cli.main(["quick", "--budget", "cpu", "max_steps=20"]) == 0
    assert "strategy quick: 20 optimizer steps" in capsys.readouterr().out


def test_disk_counts_weights_adam_moments_and_the_kept_checkpoints():
    # the 124M run of the CPU course: 300 steps / save_every 25 = 12 checkpoints, all kept (keep_last 12)
    cfg = make_config("quick", "cpu")
    n, trainable = 124_104_719, 123_000_000
    ckpt = est.checkpoint_bytes(cfg, n, trainable)
    extra = est.MODEL_FOLDER_EXTRA_BYTES                       # the tokenizer files beside each model
    assert ckpt == 4 * n + 8 * trainable + extra               # fp32 weights + AdamW exp_avg, exp_avg_sq
    total, note = est.disk_bytes(cfg, n, trainable)
    assert cfg.keep_last == 12 and total == 12 * ckpt + 4 * n + extra   # 12 x 1.48 GB + final 0.50 GB = 18.3 GB
    assert "12 checkpoints" in note
    # the plan's quick run: 10 checkpoints, keep_last 5 + the best + the one being written = 7 at once
    plan = make_config("quick")
    assert est.disk_bytes(plan, n, trainable)[0] == 7 * ckpt + 4 * n + extra
    spec = make_config("specialized", "cpu", export_original=True)
    assert est.checkpoint_bytes(spec, n, trainable) == 8 * n + 8 * trainable + extra
    assert est.disk_bytes(spec, n, trainable)[0] > 2 * est.disk_bytes(cfg, n, trainable)[0] * 0.9   # two phases


def test_the_plans_six_gpus_from_the_table_say_they_are_not_measured():
    cfg = make_config("conversational")                         # 25,000 steps of 2 x 16 rows per GPU
    e = est.table_estimate(cfg, MambaSWELUConfig(), n_params=124_104_719, n_trainable=123_000_000)
    assert e.where == "6 x RTX 4090" and "assumed 15% MFU, not measured on a GPU" in e.source
    # per GPU: 16 x train_flops(2, 1024) = 16 x 2 x 1024 x 586 MFLOP x (1 + lm_head share) ~ 22 TFLOP
    # / (165 TFLOP/s x 0.15) ~ 0.8 s, + 2 x 5/6 x 246 MB (bf16, grad_comm auto) / 10 GB/s = 41 ms
    assert 0.5 < e.step_s < 1.5 and e.steps == 25_000
    assert 3 * 3600 < e.total_s < 12 * 3600 and "all-reduce of 246 MB (bf16)" in e.notes[0]
    fp32 = est.table_estimate(make_config("conversational", grad_comm="fp32"), MambaSWELUConfig(),
                              n_params=124_104_719, n_trainable=123_000_000)
    assert fp32.step_s - e.step_s == pytest.approx(2 * 5 / 6 * 123e6 * 2 / 10e9)   # the hook halves the bytes
    with pytest.raises(ValueError, match="gpu 'TPU'"):
        est.table_estimate(cfg, MambaSWELUConfig(), "TPU", n_params=1, n_trainable=1)
    assert est.duration(30) == "30 s" and est.duration(3 * 86400) == "3.0 days"


@pytest.mark.slow   # times a run, then runs it
def test_the_measured_estimate_is_within_2x_of_the_run_it_estimates(tmp_path):
    """At smoke size: `measure` on 3 steps of the run's own batches, then the real fine-tune; its
    training loop's wall time and its run folder's size against the estimate."""
    from mambaft.checkpoint import save_checkpoint
    from mambaft.train import finetune
    from mambaft.train.metrics import read_metrics
    from tests.conftest import make_small_gpt2_model
    from tests.test_train_loop import QA, QUIET, write_prepared

    data = write_prepared(tmp_path / "data", QA * 4, QA[:4])
    model = make_small_gpt2_model(seed=0, d_model=96, n_layers=3)
    base = save_checkpoint(model, tmp_path / "base")
    cfg = make_config("smoke", lr=1e-3, warmup_steps=2, max_steps=24, batch_size=4, grad_accum=2,
                      save_every=12, eval_every=12, keep_last=1, eval_batches=2, precision="fp32")
    from datasets import load_from_disk
    train = load_from_disk(str(data))["train"].select_columns(["input_ids", "labels"])
    m = est.measure(model, cfg, train, steps=4, decode=False)
    n_params = sum(p.numel() for p in model.parameters())
    e = est.measured_estimate(cfg, m, where="this machine", n_params=n_params, n_trainable=n_params,
                              eval_replies=0, eval_at_start=False)
    t0 = time.perf_counter()
    finetune(cfg, base, data, tmp_path / "run", **QUIET)
    wall = time.perf_counter() - t0
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "elapsed_s" in r]
    loop_s = rows[-1]["elapsed_s"]
    print(f"estimate {e.total_s:.2f} s, training loop {loop_s:.2f} s, finetune() {wall:.2f} s")
    # the estimate covers the loop (steps, evaluations, checkpoints); a 2-core box under load moves a
    # step's time by up to ~1.5x between two runs, so the bound (2x) is the test's
    assert 0.5 <= e.total_s / loop_s <= 2.0, (e.total_s, loop_s)
    size = sum(f.stat().st_size for f in (tmp_path / "run").rglob("*") if f.is_file())
    # "up to": never below what the run wrote; tokenizer/template files and JSON add < 2x on a model this small
    assert size / 2 <= e.disk_bytes and e.disk_bytes >= 0.8 * size, (e.disk_bytes, size)


def test_the_finetune_header_prints_the_disk_the_run_will_take():
    from mambaft.train.plan import plan_lines
    lines, _ = plan_lines(make_config("quick", "cpu"), world_size=1, n_params=124_104_719)
    disk = [ln for ln in lines if ln.startswith("disk: up to ")]
    # 12 checkpoints x (12 B x 124.1M + 4 MB) + the final 4 B x 124.1M + 4 MB = 18.42 GB
    assert disk == ["disk: up to 18.42 GB in the run folder (1 phase(s) x (12 checkpoints x 1.49 GB + final "
                    "0.50 GB); every parameter counted as trainable)"]


def test_the_remaining_time_is_the_median_step_times_the_steps_left_plus_the_evaluations():
    t0 = 1_000_000.0
    # median(2, 1, 3) = 2 s x 100 steps + 3 evaluations x 10 s = 230 s = 3.8 min
    line = est.remaining_time([2.0, 1.0, 3.0], 100, 3, 10.0, now=t0)
    end = time.strftime("%H:%M", time.localtime(t0 + 230))
    assert line == (f"time: 2 s/step (median of 3 timed steps) x 100 steps left + 3 evaluations x 10 s = "
                    f"about 3.8 min (ends about {end})")
    assert "+ 2 evaluations (not timed yet) = about 40 s" in est.remaining_time([0.4], 100, 2, None, now=t0)
    assert "steps left = about 40 s" in est.remaining_time([0.4], 100, 0, None, now=t0)


def test_a_run_says_how_long_it_will_take_after_timing_its_first_steps(tmp_path, capsys):
    """Issue 27: the time before the long part of the run, from this run's own steps (the first
    warms up and is not timed), printed once."""
    from mambaft.train import finetune
    from tests.test_run_safety import base as _base, data as _data, tiny   # noqa: F401 (fixtures)
    from tests.test_train_loop import QUIET, learnable_model, write_prepared
    from mambaft.checkpoint import save_checkpoint
    data = write_prepared(tmp_path / "data")
    base = save_checkpoint(learnable_model(seed=4), tmp_path / "base")
    finetune(tiny(8, eval_every=4), base, data, tmp_path / "run", **QUIET)
    said = [ln for ln in capsys.readouterr().out.splitlines() if "s/step (median of 3 timed steps)" in ln]
    # steps 2-4 timed, 4 steps left; the evaluations at steps 4 (right after the line) and 8 are left,
    # and none has run yet (QUIET: no evaluation at step 0)
    assert len(said) == 1 and "x 4 steps left + 2 evaluations (not timed yet)" in said[0], said
