"""The fault matrix of issue 15, on a tiny run through the real CLI (subprocesses, real SIGKILLs):

    10 SIGKILLs at seeded-random points (5 between steps, 5 inside checkpoint saves), each followed by
       a rerun of the same command; a corrupt newest checkpoint; two writers on one run folder; a full
       disk (a small tmpfs) during a save; a kill during `prepare`.

After each case the rerun either continues with losses identical to an uninterrupted run or stops with
a clear one-line message, and no earlier output is lost. The test prints the matrix as figures:

    python -m pytest -q -s tests/test_fault_matrix.py
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mambaft.checkpoint import save_checkpoint
from mambaft.config import make_config
from mambaft.train import finetune
from mambaft.train import run_state as ck
from tests.test_run_safety import _ids, _prepare_cli, mount_tmpfs
from tests.test_train_loop import QUIET, learnable_model, run_env, train_losses, write_prepared

SETS = dict(lr=3e-3, warmup_steps=2, max_steps=12, batch_size=2, eval_every=4, save_every=2, keep_last=2)
POINT_ORDER = ("after_step", "save_model", "in_save", "after_rename")   # the order they happen within a step
SAVE_STEPS = range(2, 13, 2)


def kill_points(seed: int = 15) -> list:
    """5 kills between steps and 5 inside saves, at random steps, in the order a run meets them (each
    strictly after the previous, so every rerun gets there)."""
    rng = random.Random(seed)
    between = rng.sample([("after_step", s) for s in range(1, 13)], 5)
    inside = rng.sample([(p, s) for p in POINT_ORDER[1:] for s in SAVE_STEPS], 5)
    return sorted(between + inside, key=lambda ps: (ps[1], POINT_ORDER.index(ps[0])))


def cli(data: Path, base: Path, out: Path) -> list:
    return [sys.executable, "-m", "mambaft", "finetune", "--strategy", "smoke", "--base", str(base),
            "--data", str(data), "--out", str(out), "--threads", "1", "--heldout", "none", "--no-probes",
            "--no-progress", "--no-eval-at-start", *[f"--set={k}={v}" for k, v in SETS.items()]]


def same_losses(out: Path, ref: list) -> bool:
    """Every logged training loss equals the uninterrupted run's at that step. Same CPU, same one
    thread, same kernels: the values agree to the last bit; 1e-6 relative only absorbs nothing else."""
    got = train_losses(out)
    return all(abs(v - ref[s - 1]) <= 1e-6 * abs(ref[s - 1]) for s, v in got.items())


def intact_steps(out: Path) -> list:
    return [r.step for r in ck.list_checkpoints(out) if not ck.verify(r.path)]


@pytest.mark.slow
def test_fault_matrix(tmp_path):
    data = write_prepared(tmp_path / "data")
    base = save_checkpoint(learnable_model(seed=1, dropout=0.1), tmp_path / "base")
    ref = finetune(make_config("smoke", **SETS), base, data, tmp_path / "ref", **QUIET)["losses"]
    assert len(ref) == 12
    m = {"cases run": 0, "clear errors": 0, "resumed-identical": 0, "recovered": 0, "data lost": 0}
    rows = []

    def record(case: str, outcome: str, lost: bool) -> None:
        """outcome: "clear errors" | "resumed-identical" | "recovered" (a prepare rerun: no losses)."""
        m["cases run"] += 1
        m[outcome] += 1
        m["data lost"] += int(lost)
        rows.append(f"{case:<32} {outcome:<18} data lost: {int(lost)}")

    # --- 10 SIGKILLs, each followed by a rerun that must continue exactly ------------------------------
    out = tmp_path / "run"
    args = cli(data, base, out)
    newest = 0
    for point, step in kill_points():
        p = subprocess.run(args, env=run_env(MAMBAFT_FAULT=f"{point}={step}"), capture_output=True, text=True)
        assert p.returncode == -9, (point, step, p.stderr[-3000:])
        steps = intact_steps(out)
        lost = bool(steps and max(steps) < newest) or any(ck.verify(r.path) for r in ck.list_checkpoints(out))
        newest = max(steps or [0])
        assert same_losses(out, ref), (point, step)           # every row the killed rerun logged is exact
        record(f"SIGKILL {point}={step}", "resumed-identical", lost)
    p = subprocess.run(args, env=run_env(), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(train_losses(out)) == list(range(1, 13)) and same_losses(out, ref)
    json.loads((out / "result.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))

    # --- a corrupt newest checkpoint: the rerun falls back, says so in one line, keeps the damaged one --
    last = ck.latest_checkpoint(out)
    f = last.path / "model" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    p = subprocess.run(args, env=run_env(), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"{last.path.name} is damaged" in p.stdout and "newest intact" in p.stdout
    kept = last.path.with_name("damaged-" + last.path.name)
    assert sorted(train_losses(out)) == list(range(1, 13)) and same_losses(out, ref)
    record("corrupt newest checkpoint", "resumed-identical", not (kept / "model" / "model.safetensors").is_file())

    # --- two writers: the second is refused (one line, PID) while the first finishes exactly ----------------
    out2 = tmp_path / "two"
    first = subprocess.Popen(cli(data, base, out2), env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 300
    while not (out2 / "metrics.jsonl").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGSTOP)                         # holds the lock, frozen mid-run
    try:
        second = subprocess.run(cli(data, base, out2), env=run_env(), capture_output=True, text=True)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first_out, first_err = first.communicate(timeout=600)
    assert second.returncode == 2 and len(second.stderr.splitlines()) == 1, second.stderr[-2000:]
    assert "another trainer is writing" in second.stderr and f"PID {first.pid}" in second.stderr
    assert first.returncode == 0, first_err[-3000:]
    assert sorted(train_losses(out2)) == list(range(1, 13)) and same_losses(out2, ref)
    record("two writers (second refused)", "clear errors", False)
    record("two writers (first finishes)", "resumed-identical", False)

    # --- a full disk during a save: a clear error, the earlier checkpoints intact; more room -> exact ------
    disk = tmp_path / "disk"
    if mount_tmpfs(disk, "24m"):                              # first checkpoint (~20 MB) fits, second does not
        try:
            out3 = disk / "run"
            p = subprocess.run(cli(data, base, out3), env=run_env(), capture_output=True, text=True)
            assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr[-3000:]
            assert "disk full while writing checkpoint step_0000004" in p.stderr
            lost = intact_steps(out3) != [2]
            record("full disk during a save", "clear errors", lost)
            subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
            p = subprocess.run(cli(data, base, out3), env=run_env(), capture_output=True, text=True)
            assert p.returncode == 0 and "step 2 of 12" in p.stdout, p.stderr[-3000:]
            assert sorted(train_losses(out3)) == list(range(1, 13)) and same_losses(out3, ref)
            record("full disk: rerun with room", "resumed-identical", False)
        finally:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    else:
        rows.append("full disk                        not run (mounting a tmpfs needs root)")

    # --- a kill during prepare: nothing half-written is left at the target; the rerun completes ----------
    target = tmp_path / "prepared"
    p = _prepare_cli(target, 2, fault="prepare_saved")
    assert p.returncode == -9, p.stderr[-2000:]
    left = target.exists()
    p = _prepare_cli(target, 2)
    assert p.returncode == 0, p.stderr[-2000:]
    record("SIGKILL during prepare", "recovered", left or not _ids(target))

    table = "\n".join(["fault matrix (issue 15):", *rows, ", ".join(f"{k} {v}" for k, v in m.items())])
    print("\n" + table)
    (tmp_path / "fault_matrix.txt").write_text(table + "\n")
    assert m["data lost"] == 0, table
    assert m["cases run"] >= 14 or "not run" in table
