"""Run safety (issue 15): one test (or a few) per finding 0-9. Each would fail on the code before the fix.

Small models (the GPT-2-vocabulary MambaSWELU of conftest, d_model 32) and 2-6 step runs: seconds each.
"""
from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mambaft import durable
from mambaft.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mambaft.config import ConfigError, make_config
from mambaft.data.schema import BadRows, FormatError
from mambaft.errors import DataError, RunLockError
from mambaft.train import finetune
from mambaft.train import run_state as ck
from mambaft.train.metrics import TrainingDiverged
from tests.test_train_loop import QUIET, learnable_model, run_env, train_losses, write_prepared

FIX = Path(__file__).parent / "fixtures"
HUB = FIX / "hub"
TINY = dict(lr=3e-3, warmup_steps=1, batch_size=2, eval_every=2, save_every=2, keep_last=5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("safety") / "data")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_checkpoint(learnable_model(seed=4, dropout=0.1), tmp_path_factory.mktemp("safety") / "base")


def tiny(max_steps: int = 4, **kw):
    return make_config("smoke", **{**TINY, "max_steps": max_steps, **kw})


def mambaft_cli(*args: str, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mambaft", *args], env=env or run_env(), capture_output=True,
                          text=True, timeout=timeout)


# --- 0. --no-resume never destroys a run before its inputs are loaded ---------------------------------
def test_no_resume_from_the_runs_own_final_model_moves_the_old_run_aside(tmp_path, data, base):
    out = tmp_path / "run"
    first = finetune(tiny(2), base, data, out, **QUIET)
    before = {p: p.read_bytes() for p in (out / "final").iterdir()}
    old_metrics = (out / "metrics.jsonl").read_text()
    # the command: base = OUT/final, out = OUT, --no-resume
    again = finetune(tiny(2), out / "final", data, out, resume=False, **QUIET)
    assert again["steps"] == 2 and Path(again["final"], "model.safetensors").is_file()
    aside = [p for p in out.iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1, sorted(p.name for p in out.iterdir())
    assert (aside[0] / "metrics.jsonl").read_text() == old_metrics               # nothing of the first run lost
    assert {p.name: p.read_bytes() for p in (aside[0] / "final").iterdir()} == {p.name: b for p, b in before.items()}
    assert [r.step for r in ck.list_checkpoints(aside[0])] == [2]
    assert first["losses"] != again["losses"]                                    # it trained from the first final
    # a --no-resume whose input is missing leaves the run exactly as it was
    snapshot = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(FileNotFoundError):
        finetune(tiny(2), tmp_path / "no_such_base", data, out, resume=False, **QUIET)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == snapshot


# --- 1. prepare is atomic; a folder without the completion marker is refused ---------------------------
def _prepare_cli(out: Path, max_examples: int, fault: str = "") -> subprocess.CompletedProcess:
    env = run_env(**({"MAMBAFT_FAULT": fault} if fault else {}))
    return mambaft_cli("prepare", "--strategy", "conversational", "--quiet", "--out", str(out),
                       "--source", f"alpaca={HUB / 'alpaca_data.json'}", "--set", "data_mode=offline",
                       "--set", 'offline_sources={"alpaca": 1.0}', "--set", "val_fraction=0.3",
                       "--set", "max_seq_len=64", "--set", f"max_examples_per_source={max_examples}", env=env)


def _ids(path: Path) -> list:
    from mambaft.data.prepare import load_prepared
    dd = load_prepared(path)
    return sorted(list(dd["train"]["id"]) + list(dd["val"]["id"]))


@pytest.mark.slow   # a killed subprocess
def test_prepare_killed_while_overwriting_leaves_the_previous_output(tmp_path):
    out = tmp_path / "data"
    p = _prepare_cli(out, 2)
    assert p.returncode == 0, p.stderr[-2000:]
    old = _ids(out)
    files = {f.relative_to(out): f.read_bytes() for f in out.rglob("*") if f.is_file()}
    p = _prepare_cli(out, 3, fault="prepare_saved")          # killed with the new dataset fully written
    assert p.returncode == -9, p.stderr[-2000:]
    assert {f.relative_to(out): f.read_bytes() for f in out.rglob("*") if f.is_file()} == files
    assert _ids(out) == old
    p = _prepare_cli(out, 3)                                   # the rerun replaces it and cleans the temp folder
    assert p.returncode == 0, p.stderr[-2000:]
    assert len(_ids(out)) > len(old)
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".tmp-")]


def test_a_dataset_folder_without_the_completion_marker_is_refused(tmp_path, base):
    data = write_prepared(tmp_path / "data")
    (data / "prepare_complete.json").unlink()                 # as a prepare killed after dataset_dict.json
    with pytest.raises(DataError, match="incomplete `mambaft prepare` output"):
        finetune(tiny(2), base, data, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# --- 2. durable checkpoints: manifest, fsync, verified resume with fallback, full disk ---------------------
def test_every_checkpoint_file_and_folder_is_fsynced_before_the_rename(tmp_path, data, base, monkeypatch):
    synced = []
    real = durable.fsync_path
    monkeypatch.setattr(durable, "fsync_path", lambda p: (synced.append(Path(p)), real(p)))
    finetune(tiny(2), base, data, tmp_path / "run", **QUIET)
    step = tmp_path / "run" / "checkpoints" / "step_0000002"
    tmp_name = Path(str(step).replace("step_0000002", ".tmp-step_0000002"))
    expect = {tmp_name / p.relative_to(step) for p in step.rglob("*")} | {tmp_name}
    assert expect <= set(synced), sorted(map(str, expect - set(synced)))[:5]
    assert step.parent in synced                              # the folder holding the rename, after it
    manifest = json.loads((step / "manifest.json").read_text())["files"]
    assert set(manifest) == {str(p.relative_to(step)) for p in step.rglob("*") if p.is_file()} - {"manifest.json"}
    assert ck.verify(step) == []


@pytest.mark.slow   # training runs
def test_damaged_newest_checkpoints_fall_back_to_the_newest_intact_one_and_are_kept(tmp_path, data, base, capsys):
    out = tmp_path / "run"
    ref = finetune(tiny(6), base, data, out, **QUIET)["losses"]     # checkpoints 2, 4, 6
    for step, name in ((6, "model/model.safetensors"), (4, "rng_rank0.pt")):
        f = out / "checkpoints" / ck.step_dirname(step) / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])       # truncated, as by a power loss
    capsys.readouterr()
    res = finetune(tiny(6), base, data, out, **QUIET)
    said = capsys.readouterr().out
    line = next(x for x in said.splitlines() if "newest intact" in x)   # one line says it all
    assert line.startswith("resuming from the newest intact checkpoint step_0000002: step_0000006 is damaged "
                           "(model/model.safetensors has"), line
    assert "step_0000004 is damaged (rng_rank0.pt has" in line and "kept as damaged-step_0000004" in line
    for step, name in ((6, "model/model.safetensors"), (4, "rng_rank0.pt")):
        assert (out / "checkpoints" / f"damaged-{ck.step_dirname(step)}" / name).is_file()   # kept, never deleted
    assert res["resumed_from"] == 2
    got = train_losses(out)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for s, loss in enumerate(ref, start=1):                     # same process, same CPU: bit-identical
        assert got[s] == loss, s


def test_zero_length_files_without_a_manifest_are_not_a_checkpoint(tmp_path, data, base):
    out = tmp_path / "run"
    finetune(tiny(4), base, data, out, **QUIET)
    step = out / "checkpoints" / "step_0000004"
    (step / "manifest.json").unlink()                          # as written before manifests existed
    (step / "trainer_state.pt").write_bytes(b"")              # what a power loss after the rename leaves
    assert ck.verify(step) == ["no manifest.json"]            # issue 28: unverified, unless trusted explicitly
    assert ck.verify(step, trust_legacy=True) == ["trainer_state.pt is missing or empty"]
    assert ck.verify(out / "checkpoints" / "step_0000002") == []


def test_all_checkpoints_damaged_stops_with_a_clear_message(tmp_path, data, base):
    out = tmp_path / "run"
    finetune(tiny(2), base, data, out, **QUIET)
    (out / "checkpoints" / "step_0000002" / "trainer_state.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no intact checkpoint.*--no-resume"):
        finetune(tiny(4), base, data, out, **QUIET)
    assert (out / "checkpoints" / "damaged-step_0000002").is_dir() and (out / "metrics.jsonl").is_file()


def mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


@pytest.fixture()
def small_disk(tmp_path):
    """A 24 MiB tmpfs: room for the run's first checkpoint of the small model (~20 MB with AdamW state)
    but not the second. Needs root (mount); elsewhere the test is skipped, saying why."""
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "24m"):
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk test runs where it can")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_during_a_save_keeps_the_earlier_checkpoints(small_disk, data, base):
    from mambaft.errors import DiskFullError
    out = small_disk / "run"
    with pytest.raises(DiskFullError) as e:
        finetune(tiny(6, keep_last=5), base, data, out, **QUIET)
    msg = str(e.value)
    assert "disk full while writing checkpoint" in msg and "intact checkpoints: step_0000002" in msg
    assert [r.step for r in ck.list_checkpoints(out)] == [2]
    assert ck.verify(out / "checkpoints" / "step_0000002") == []
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]   # half-written one removed


# --- 3. non-finite settings and results ----------------------------------------------------------------
@pytest.mark.parametrize("key,value", [("lr", math.inf), ("weight_decay", math.inf), ("grad_clip", math.nan),
                                       ("beta2", math.nan), ("selective_lr_mult", math.inf)])
def test_non_finite_settings_are_refused_at_config_time(key, value):
    with pytest.raises(ConfigError, match=f"{key}=.*finite"):
        make_config("smoke", **{key: value})


@pytest.mark.parametrize("threads", [0, -1])
def test_threads_must_be_positive(tmp_path, data, base, threads):
    with pytest.raises(ConfigError, match="threads"):
        finetune(tiny(2), base, data, tmp_path / "run", **{**QUIET, "threads": threads})


def test_a_nan_validation_loss_stops_the_run_and_is_never_best(tmp_path, data, base, monkeypatch):
    import mambaft.train.loop as loop
    real = loop.summarize_val
    monkeypatch.setattr(loop, "summarize_val", lambda sums: {**real(sums), "val_loss": math.nan})
    with pytest.raises(TrainingDiverged, match="validation loss is val_loss=nan"):
        finetune(tiny(4), base, data, tmp_path / "run", **QUIET)
    assert ck.list_checkpoints(tmp_path / "run") == []         # the broken weights were not saved
    assert not (tmp_path / "run" / "result.json").exists()


def test_result_json_and_final_model_pt_are_fsynced_renamed_and_their_folder_fsynced(tmp_path, data, base,
                                                                                     monkeypatch):
    """A power loss after the run says "done" must leave the whole new file or the old one: each final
    file is written beside itself, fsynced, renamed, and then its folder is fsynced (issue 28)."""
    import os
    events, real_fsync, real_replace = [], durable.fsync_path, os.replace
    monkeypatch.setattr(durable, "fsync_path", lambda p: (events.append(("fsync", Path(p))), real_fsync(p)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", Path(a), Path(b))),
                                                      real_replace(a, b)))
    out = tmp_path / "run"
    finetune(tiny(2, export_original=True), base, data, out, **QUIET)
    for name in ("result.json", "final_model.pt"):
        i = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == out / name)
        tmp = events[i][1]
        assert tmp.parent == out and tmp.name != name
        assert ("fsync", tmp) in events[:i], f"{name}: not fsynced before its rename"
        assert ("fsync", out) in events[i + 1:], f"{name}: its folder was not fsynced after the rename"
    assert json.loads((out / "result.json").read_text())["steps"] == 2
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_result_json_is_strict_json_and_a_nan_val_loss_is_never_best(tmp_path, data, base):
    from accelerate import Accelerator
    from mambaft.train.loop import write_final
    out = tmp_path / "run"
    finetune(tiny(2), base, data, out, **QUIET)
    meta = out / "checkpoints" / "step_0000002" / "model" / "config.json"
    m = json.loads(meta.read_text())
    m["training"]["val_loss"] = math.nan                         # as the old code saved a diverged run
    meta.write_text(json.dumps(m))
    write_final(tiny(2), out, Accelerator(cpu=True), out / "checkpoints" / "step_0000002")
    res = json.loads((out / "result.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert res["best_val_loss"] is None and res["best_checkpoint"] is None


@pytest.mark.slow   # a fresh interpreter
def test_generate_refuses_a_nonsensical_temperature(small_gpt2_folder):
    from mambaft.generate import check_temperature, generate
    model, _ = load_checkpoint(small_gpt2_folder)
    for t in (1e-45, math.nan, math.inf, -1.0):
        with pytest.raises(ConfigError, match="temperature"):
            check_temperature(t)
        with pytest.raises(ConfigError, match="temperature"):
            generate(model, [[1, 2, 3]], max_new_tokens=2, temperature=t)
    assert check_temperature(0) == 0.0 and check_temperature(0.7) == 0.7
    p = mambaft_cli("generate", "--model", str(small_gpt2_folder), "--temperature", "1e-45")
    assert p.returncode == 2 and p.stderr.strip().startswith("mambaft generate: error: temperature="), p.stderr


def test_a_checkpoint_with_nan_weights_is_refused_on_load_and_as_a_base(tmp_path, data):
    model = learnable_model(seed=5)
    with torch.no_grad():
        model.dense1.weight[0, 0] = math.nan
    path = save_checkpoint(model, tmp_path / "nan_model")
    with pytest.raises(CheckpointError, match=r"hold NaN/inf \(e.g. dense1.weight\)"):   # issue 28: every entry point
        load_checkpoint(path)
    with pytest.warns(RuntimeWarning, match="hold NaN/inf"):                     # `info` asks to see them
        _, info = load_checkpoint(path, allow_nonfinite=True)
    assert info.nonfinite == ["dense1.weight"]
    with pytest.raises(CheckpointError, match="refusing to fine-tune from it"):
        finetune(tiny(2), path, data, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_plot_follow_on_a_missing_file_errors_or_says_it_waits(tmp_path):
    p = mambaft_cli("plot", str(tmp_path / "no_such_run" / "metrics.jsonl"), "--follow", timeout=60)
    assert p.returncode == 2 and "no such file, and no folder" in p.stderr, p.stderr
    (tmp_path / "run").mkdir()
    # the old code waited forever here: the subprocess timeout (60 s) turns that into a failure
    p = mambaft_cli("plot", str(tmp_path / "run" / "metrics.jsonl"), "--follow", "--timeout", "0.5",
                    "--interval", "0.1", timeout=60)
    assert "waiting for" in p.stdout and "giving up after 0.5 s" in p.stdout, p.stdout
    assert p.returncode == 2 and "did not appear within 0.5 s" in p.stderr, p.stderr


# --- 4. precision guard ----------------------------------------------------------------------------------
def test_accelerate_mixed_precision_that_disagrees_is_refused_naming_both(tmp_path, data, base, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(ConfigError, match=r"mixed precision is 'bf16'.*precision is 'fp32'"):
        finetune(tiny(2), base, data, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")     # "no" leaves the run's own precision
    finetune(tiny(2), base, data, tmp_path / "run", **QUIET)


@pytest.mark.parametrize("var", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_fsdp_and_deepspeed_configs_are_refused(tmp_path, data, base, monkeypatch, var):
    monkeypatch.setenv(var, "true")
    with pytest.raises(ConfigError, match="plain data parallel only"):
        finetune(tiny(2), base, data, tmp_path / "run", **QUIET)


def test_fp16_always_runs_with_a_grad_scaler(tmp_path, data, base):
    res = finetune(tiny(2, precision="fp16"), base, data, tmp_path / "run", **QUIET)
    state = ck.load_trainer_state(ck.latest_checkpoint(tmp_path / "run").path)
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0
    assert all(math.isfinite(x) for x in res["losses"])


# --- 5. one writer per run folder --------------------------------------------------------------------------
HOLD = ("import sys, time; from mambaft.train.runlock import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(60)")


def test_a_second_writer_is_refused_with_the_holders_pid_and_host(tmp_path, data, base):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env=run_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockError, match=f"PID {holder.pid} on host {socket.gethostname()}"):
            finetune(tiny(2), base, data, out, **QUIET)
        assert not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is stale and taken over, with a note
    res = finetune(tiny(2), base, data, out, **QUIET)
    assert res["steps"] == 2
    assert json.loads((out / "run.lock").read_text() or "{}") == {}       # released at the end


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path, data, base, capsys):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / "run.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    finetune(tiny(2), base, data, out, **QUIET)
    assert f"took over the lock of {out} left by PID {int(dead.stdout)}" in capsys.readouterr().out


# --- 6. resume on another world size -----------------------------------------------------------------------
def test_resume_on_another_world_size_says_what_changes_and_needs_the_flag(tmp_path, data, base, capsys):
    out = tmp_path / "run"
    finetune(tiny(2), base, data, out, **QUIET)
    step = out / "checkpoints" / "step_0000002"
    state = ck.load_trainer_state(step)
    state.update(world_size=2, global_batch=8)                  # as saved by two processes
    torch.save(state, step / "trainer_state.pt")
    durable.write_manifest(step)
    with pytest.raises(ConfigError, match=r"saved with 2 process\(es\), this run has 1.*global batch changes "
                                          r"from 8 to 2.*data order.*RNG.*--allow-world-size-change"):
        finetune(tiny(4), base, data, out, **QUIET)
    res = finetune(tiny(4), base, data, out, allow_world_size_change=True, **QUIET)
    assert res["steps"] == 4 and "note: the checkpoint was saved with 2 process(es)" in capsys.readouterr().out


# --- 7. row-level data errors; wrong file types; missing local paths ---------------------------------------
def test_bad_lines_are_counted_with_file_and_line_and_skipped(tmp_path):
    from mambaft.data.sources import load_source
    good = [json.loads(x) for x in (HUB / "databricks-dolly-15k.jsonl").read_text().splitlines()]
    f = tmp_path / "dolly.jsonl"
    lines = [json.dumps(r).encode() for r in good[:3]]
    lines.insert(1, b'{"instruction": "caf\xe9 \xff", "response": "x"}')          # invalid UTF-8
    lines.insert(3, b"[" * 100_000 + b"]" * 100_000)                           # nested past the recursion limit
    f.write_bytes(b"\n".join(lines) + b"\n")
    bad = BadRows()
    rows = load_source("dolly", str(f), bad=bad).rows
    assert len(rows) == 3
    assert bad.counts["dolly"] == 2
    assert bad.examples["dolly"][0].startswith(f"{f}:2: invalid UTF-8")
    assert bad.examples["dolly"][1].startswith(f"{f}:4: JSON nested too deep")


def test_a_file_of_another_type_is_refused_with_its_detected_type(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mambaft.data.sources import load_source
    rows = [json.loads(x) for x in (HUB / "databricks-dolly-15k.jsonl").read_text().splitlines()]
    f = tmp_path / "dolly.json"
    pq.write_table(pa.Table.from_pylist(rows), f)
    with pytest.raises(FormatError, match=r"dolly.json: is a Parquet file \(detected from its first bytes\)"):
        load_source("dolly", str(f))


def test_an_empty_source_stops_prepare_with_a_clear_message(tmp_path):
    from mambaft.data.prepare import prepare
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = make_config("conversational", data_mode="offline", offline_sources={"dolly": 1.0}, max_seq_len=64)
    with pytest.raises(DataError, match=r"source dolly: no conversations in local:.*empty.jsonl"):
        prepare(cfg, tmp_path / "out", sources={"dolly": str(empty)}, progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))


def test_a_missing_local_path_is_an_error_never_a_hub_lookup(tmp_path, monkeypatch):
    import mambaft.data.sources as sources
    from mambaft.data.prepare import resolve_sources
    monkeypatch.setattr(sources, "_hub_rows", lambda *a: pytest.fail("tried the hub"))
    missing = str(tmp_path / "alpaca_data.json")
    with pytest.raises(FileNotFoundError, match="no such file or folder.*owner/name"):
        sources.load_source("alpaca", missing)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        sources.load_source("alpaca", "outputs/data/alpaca")              # owner/name has one slash
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        resolve_sources({"alpaca": 1.0}, {}, {"alpaca": missing}, "auto", check_hub=lambda: True)
    assert sources.is_hub_id("tatsu-lab/alpaca") and sources.is_hub_id("HuggingFaceH4/ultrachat_200k:train_sft")
    assert not sources.is_hub_id("outputs/alpaca.json") and not sources.is_hub_id("./x/y")


# --- 8. one-line CLI errors; bad model config values -------------------------------------------------------
@pytest.mark.slow   # fresh interpreters
def test_known_errors_are_one_line_with_exit_2_and_debug_shows_the_traceback(tmp_path, data):
    p = mambaft_cli("info", str(tmp_path / "nope"))
    assert p.returncode == 2 and p.stderr == f"mambaft info: error: {tmp_path / 'nope'}: no such checkpoint file or model folder\n"
    p = mambaft_cli("info", str(tmp_path / "nope"), "--debug")
    assert p.returncode == 1 and "Traceback" in p.stderr and "FileNotFoundError" in p.stderr
    p = mambaft_cli("finetune", "--strategy", "smoke", "--data", str(data), "--out", str(tmp_path / "r"),
                    "--set", "grad_clip=NaN")
    assert p.returncode == 2 and p.stderr.splitlines() == ["mambaft finetune: error: grad_clip=nan: must be a finite number"]
    p = mambaft_cli("finetune", "--strategy", "smoke", "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "r"))
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and "no such data folder" in p.stderr
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    p = mambaft_cli("generate", "--model", str(bad))
    assert p.returncode == 2 and p.stderr.startswith("mambaft generate: error: ") and len(p.stderr.splitlines()) == 1
    # python -m mambaft.finetune (what accelerate launch runs) prints the same one line
    p = subprocess.run([sys.executable, "-m", "mambaft.finetune", "--strategy", "smoke", "--data", str(data),
                        "--out", str(tmp_path / "r"), "--set", "lr=-1"], env=run_env(), capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.splitlines() == ["mambaft finetune: error: lr=-1.0: must be > 0"]


@pytest.mark.parametrize("key,value,msg", [("d_model", -4, "positive integer"), ("n_layers", "two", "positive integer"),
                                           ("vocab_size", [1, 2], "positive integer"), ("dropout", 2.0, r"\[0, 1\)"),
                                           ("tie_embeddings", "yes", "true or false"),
                                           ("architecture", "transformer", "'original' or 'selective'")])
def test_bad_values_in_a_model_folders_config_are_clear_errors(tmp_path, small_gpt2_folder, key, value, msg):
    import shutil
    folder = tmp_path / "m"
    shutil.copytree(small_gpt2_folder, folder)
    meta = json.loads((folder / "config.json").read_text())
    meta["model"][key] = value
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"config.json: model.{key}=.*{msg}"):
        load_checkpoint(folder)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        load_checkpoint(folder)


# --- 9. truncation keeps as many whole recent turns as fit -------------------------------------------------
def test_truncation_without_the_system_message_keeps_every_turn_that_fits():
    from mambaft.data.render import _plan_start
    roles = ["system", "user", "assistant", "user", "assistant"]
    assert _plan_start([50, 5, 5, 5, 5], roles, 30) == (1, False, True)      # both exchanges (20 tokens)
    assert _plan_start([50, 5, 5, 15, 15], roles, 30) == (3, False, True)    # only the last one fits
    assert _plan_start([10, 5, 5, 5, 5], roles, 25) == (3, True, True)       # system kept beside what fits
    assert _plan_start([10, 5, 5, 20, 20], roles, 30)[2] is False             # nothing fits: too long
