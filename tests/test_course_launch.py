"""What the course does around its notebooks and its training processes: paths as the user typed them,
how many processes and which launcher, the GPU pre-flight's environment, the world-size check.
The two-rank test really starts the launcher notebook 03 builds on a CPU (torchrun, gloo)."""
from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from mambaft import course
from mambaft.cli import course as course_cli
from mambaft.config import make_config
from mambaft.course import launch
from mambaft.course import runner as course_runner
from mambaft.train.preflight import preflight
from tests.conftest import ROOT


@pytest.fixture()
def cpu(monkeypatch):
    monkeypatch.setattr(course, "has_gpu", lambda: False)


# --- paths as the user types them --------------------------------------------------------------------
def test_relative_base_and_out_are_the_callers_not_the_repositorys(tmp_path, monkeypatch):
    """`mambaft course --base final_model.pt --out runs` in the user's folder: the kernels run in the
    repository root, so every path parameter must reach them absolute, against the caller's folder."""
    caller = tmp_path / "user"
    caller.mkdir()
    (caller / "final_model.pt").write_bytes(b"x")
    (caller / "six.yaml").write_text("num_processes: 6\n")
    monkeypatch.chdir(caller)
    seen = []
    monkeypatch.setattr(course_runner, "run_notebook", lambda name, run_dir, params, **kw: seen.append(
        (name, Path(run_dir), dict(params))))
    code = course_cli.main(["--strategy", "smoke", "--base", "final_model.pt", "--out", "runs",
                            "--only", "03_finetune_multi_gpu", "--set", "ACCELERATE_CONFIG=six.yaml",
                            "--no-progress"])
    assert code == 0
    (name, run_dir, params), = seen
    assert run_dir == caller / "runs" / "smoke"
    assert params["BASE"] == str(caller / "final_model.pt")
    assert params["RUN_DIR"] == str(caller / "runs" / "smoke")
    assert params["ACCELERATE_CONFIG"] == str(caller / "six.yaml")
    record = json.loads((caller / "runs" / "smoke" / "course.json").read_text())   # the record too
    assert record["base"] == str(caller / "final_model.pt") and record["params"]["RUN_DIR"] == str(run_dir)
    assert not (ROOT / "runs").exists()


def test_a_missing_relative_base_is_named_as_typed_before_any_notebook(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert course_cli.main(["--strategy", "smoke", "--base", "final_model.pt", "--out", "runs"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mambaft course: --base final_model.pt: no such file or folder") and \
        str(tmp_path / "final_model.pt") in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow   # one real kernel
def test_a_real_kernel_reads_the_relative_base_and_writes_under_the_relative_out(tmp_path, monkeypatch):
    """papermill starts the kernel in the repository root: the notebook still finds ./base.bin of the
    caller and writes into ./runs of the caller."""
    src = tmp_path / "nbs"
    src.mkdir()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('STRATEGY = "smoke"\nBASE = ""\nRUN_DIR = "outputs/quick"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "import os, pathlib\n"
        "p = pathlib.Path(RUN_DIR, '00_diagnosis'); p.mkdir(parents=True, exist_ok=True)\n"
        "(p / 'seen.txt').write_text(open(BASE).read() + '|' + os.getcwd())")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(src / "00_diagnosis.ipynb"))
    caller = tmp_path / "user"
    caller.mkdir()
    (caller / "base.bin").write_text("the user's base")
    monkeypatch.chdir(caller)
    res = course_runner.run_course("smoke", "base.bin", "runs", only=["00_diagnosis"], source_dir=src,
                                   progress=False)
    assert res["run_dir"] == caller / "runs" / "smoke"
    text, kernel_cwd = (caller / "runs" / "smoke" / "00_diagnosis" / "seen.txt").read_text().split("|")
    assert text == "the user's base" and Path(kernel_cwd) == ROOT     # found although the kernel ran elsewhere
    assert (caller / "runs" / "smoke" / "00_diagnosis.ipynb").is_file()


# --- how many processes, and the launcher that starts them -------------------------------------------
def test_num_processes_one_per_visible_gpu_capped_by_the_preset():
    quick = make_config("quick")                                  # the plan: num_gpus 6
    assert launch.num_processes(quick, 0, gpus=6)[0] == 6
    n, why = launch.num_processes(quick, 0, gpus=8)
    assert n == 6 and "capped by the preset's num_gpus=6" in why
    assert launch.num_processes(quick, 0, gpus=2)[0] == 2
    assert launch.num_processes(quick, 0, gpus=0) == (1, "1 process: no GPU visible (NUM_PROCESSES=0 means "
                                                         "one per GPU)")
    assert launch.num_processes(quick, 2, gpus=0)[0] == 2         # asked: a gloo rehearsal on the CPU
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="NUM_PROCESSES="):
            launch.num_processes(quick, bad, gpus=0)


def test_visible_gpus_counts_nvidia_smi_within_cuda_visible_devices(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nfor i in 0 1 2 3 4 5; do echo \"GPU $i: NVIDIA GeForce RTX 4090 (UUID: GPU-$i)\"; done\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert launch.visible_gpus() == 6
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,3")
    assert launch.visible_gpus() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launch.visible_gpus() == 0


def test_cpu_ranks_are_started_by_torchrun_gpus_by_accelerate(cpu, monkeypatch):
    cfg = make_config("smoke")
    two = launch.finetune_command(cfg, "", "D", "O", num_processes=2)
    assert two[1:3] == ["-m", "torch.distributed.run"] and two[two.index("--nproc_per_node") + 1] == "2"
    one = launch.finetune_command(cfg, "", "D", "O", num_processes=1)
    assert one[1:3] == ["-m", "accelerate.commands.launch"] and "--cpu" in one
    monkeypatch.setattr(course, "has_gpu", lambda: True)
    six = launch.finetune_command(cfg, "", "D", "O", num_processes=6)
    assert six[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in six and "--cpu" not in six
    assert six[six.index("--num_processes") + 1] == "6"


def test_a_run_with_another_world_size_than_asked_is_refused(tmp_path):
    cfg = make_config("smoke", batch_size=2, grad_accum=1)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "event": "start", "world_size": 1}) + "\n")
    launch.check_world_size(cfg, tmp_path, 1)
    with pytest.raises(RuntimeError, match=r"started 1 process\(es\), 2 were asked.*global batch is 2 rows, not 4"):
        launch.check_world_size(cfg, tmp_path, 2)

    class Done:   # an exited process: check_finished reads the metrics, not its exit code, first
        def wait(self):
            return 0
    with pytest.raises(RuntimeError, match="2 were asked"):
        launch.check_finished(Done(), tmp_path / "log", cfg=cfg, run=tmp_path, expected=2)


@pytest.mark.slow   # two training processes through torchrun, and one in-process
def test_the_course_launcher_starts_two_gloo_ranks_equal_to_one_process(cpu, tmp_path):
    """The command notebook 03 runs for NUM_PROCESSES=2 on a CPU starts two ranks (the accelerate
    --cpu spelling started one) and trains what one process trains at the same global batch."""
    from mambaft.checkpoint import save_checkpoint
    from mambaft.train import finetune
    from tests.test_train_loop import QUIET, learnable_model, train_losses, write_prepared
    data = write_prepared(tmp_path / "data")
    base = save_checkpoint(learnable_model(seed=2), tmp_path / "base")
    common = dict(lr=3e-3, warmup_steps=2, max_steps=4, batch_size=2, save_every=4, eval_every=4, keep_last=1,
                  precision="fp32")
    one = finetune(make_config("smoke", **common, grad_accum=2), base, data, tmp_path / "one", **QUIET)
    cfg = make_config("smoke", **common, grad_accum=1)                  # 2 rows x 1 x 2 ranks = 4 rows
    out = tmp_path / "two"
    cmd = launch.finetune_command(cfg, base, data, out, num_processes=2,
                                  extra=["--threads", "1", "--heldout", "none", "--no-probes", "--no-progress",
                                         "--no-eval-at-start"])
    env = {**launch.child_env(), "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    launch.check_world_size(cfg, out, 2)                                  # the start event says 2
    assert "2 process(es)" in p.stdout and "gradient all-reduce in fp32" in p.stdout   # auto on a CPU
    two = train_losses(out)
    assert len(two) == len(one["losses"]) == 4
    # as tests/test_train_loop.py's two-rank test: the all-reduce sums in another order than one
    # process's accumulation (~1e-7 relative), carried through 4 AdamW steps: rel 2e-5
    for a, b in zip(one["losses"], [two[s] for s in sorted(two)]):
        assert b == pytest.approx(a, rel=2e-5)
    # the same two ranks with the bf16 gradient all-reduce (the CUDA default): a different sum, close
    out16 = tmp_path / "two_bf16"
    cmd16 = launch.finetune_command(dataclasses.replace(cfg, grad_comm="bf16"), base, data, out16, num_processes=2,
                                    extra=cmd[cmd.index("--threads"):])
    p = subprocess.run(cmd16, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "gradient all-reduce in bf16" in p.stdout
    start = [json.loads(x) for x in (out16 / "metrics.jsonl").read_text().splitlines()][0]
    assert start["grad_comm"] == "bf16" and start["world_size"] == 2
    bf16 = train_losses(out16)
    assert bf16[1] == two[1]                                            # before any update: the same
    later = [abs(bf16[s] - two[s]) / two[s] for s in (2, 3, 4)]
    assert max(later) > 0                                               # the hook did change the sum
    # bf16 keeps 8 mantissa bits: each gradient off by <= 2^-9 = 0.2% relative; AdamW divides by
    # sqrt(v), so each update moves by at most about that share of lr. Measured on a 2-core AMD EPYC
    # (AVX-512 BF16): 4.4e-6, 6.0e-6, 4.0e-6 at steps 2-4 (the fp32 pair: ~1e-7); 1e-4 is ~17x that
    # and still 100x below what 4 steps of training move the loss (> 1%)
    assert max(later) < 1e-4, later


# --- the GPU pre-flight: its environment reaches the training processes ------------------------------
class _FakeCuda:
    """torch.cuda as six RTX 4090s that report peer access but copy wrongly between 0 and 1."""
    def __init__(self, monkeypatch, broken=((0, 1),), free_gb=22.0):
        from mambaft.train import preflight as pf
        c = torch.cuda
        for name, fn in {"is_available": lambda: True, "device_count": lambda: 6,
                         "get_device_name": lambda i: "NVIDIA GeForce RTX 4090",
                         "mem_get_info": lambda i: (free_gb * 2**30, 24 * 2**30),
                         "get_device_capability": lambda i: (8, 9),
                         "can_device_access_peer": lambda i, j: True}.items():
            monkeypatch.setattr(c, name, fn)
        monkeypatch.setattr(pf, "_p2p_copy_ok", lambda i, j: (i, j) not in broken)


def test_preflight_on_4090s_asks_for_p2p_off_and_the_course_applies_it(monkeypatch, tmp_path):
    monkeypatch.delenv("NCCL_P2P_DISABLE", raising=False)
    _FakeCuda(monkeypatch, broken=())
    rep = preflight(6)
    assert rep.ok and rep.env == {"NCCL_P2P_DISABLE": "1"} and not rep.blocking   # consumer cards: advised
    said = []
    env = launch.apply_preflight(rep.to_dict(), say=said.append)
    assert env == {"NCCL_P2P_DISABLE": "1"}
    assert any(s.startswith("pre-flight: set NCCL_P2P_DISABLE=1 for the training processes") for s in said)
    # and the training process sees it
    log = tmp_path / "log"
    proc = launch.launch_finetune([sys.executable, "-c", "import os; print(os.environ.get('NCCL_P2P_DISABLE'))"],
                                  log, env=env)
    assert proc.wait() == 0 and log.read_text().strip() == "1"
    # the user's own setting is kept, and said
    monkeypatch.setenv("NCCL_P2P_DISABLE", "0")
    said.clear()
    assert launch.apply_preflight(rep.to_dict(), say=said.append) == {}
    assert any("NCCL_P2P_DISABLE=0 kept" in s for s in said)


def test_preflight_broken_copy_is_fixed_by_the_env_but_a_full_gpu_blocks(monkeypatch):
    monkeypatch.delenv("NCCL_P2P_DISABLE", raising=False)
    _FakeCuda(monkeypatch, broken=((0, 1),))
    rep = preflight(6)
    assert not rep.ok and rep.p2p_failed == [(0, 1)] and rep.env == {"NCCL_P2P_DISABLE": "1"}
    assert rep.blocking == []                              # NCCL_P2P_DISABLE=1 routes around it
    assert launch.apply_preflight(rep.to_dict(), say=lambda s: None) == {"NCCL_P2P_DISABLE": "1"}
    _FakeCuda(monkeypatch, broken=(), free_gb=2.0)
    full = preflight(6)
    assert len(full.blocking) == 6
    with pytest.raises(RuntimeError, match="pre-flight failed: cuda:0 NVIDIA GeForce RTX 4090: 2.0 of 24.0 GiB"):
        launch.apply_preflight(full.to_dict(), say=lambda s: None)


def test_preflight_is_skipped_on_a_cpu_with_a_line():
    said = []
    assert launch.preflight_env(2, gpu=False, say=said.append) == {}
    assert said == ["pre-flight: skipped (no GPU visible; the CPU run needs no NCCL settings)"]


def test_the_estimate_command_times_exactly_the_notebooks_config(cpu, small_gpt2_folder):
    from mambaft.cli import plan as plan_cli
    from mambaft.config import parse_overrides
    values = course.course_overrides("quick", str(small_gpt2_folder))
    cfg = make_config("quick", **values.overrides)
    cmd = launch.estimate_command(cfg, "D", 2, steps=3)
    assert cmd[1:4] == ["-m", "mambaft", "plan"]
    a = plan_cli.build_parser().parse_intermixed_args(cmd[4:])
    assert (a.target, a.num_processes, a.measure_steps, a.data, a.base) == \
        ("quick", 2, 3, str(Path("D").absolute()), str(small_gpt2_folder))
    assert make_config(a.target, base=a.base, **parse_overrides(a.overrides)) == cfg
    # the plan's own box is estimated on the plan, not on the CPU budget the course passes
    plan = plan_cli.plan_config("quick", parse_overrides(a.overrides))
    assert (plan.max_steps, plan.num_gpus, plan.batch_size, plan.grad_accum) == (10_000, 6, 4, 8)
    assert plan_cli.plan_config("quick", {"max_steps": 5000}).max_steps == 5000   # a user's own value stays


def test_an_accelerate_yaml_sets_the_expected_process_count(tmp_path):
    (tmp_path / "six.yaml").write_text((ROOT / "configs" / "accelerate" / "6x4090.yaml").read_text())
    n, why = launch.num_processes(make_config("quick"), 0, gpus=0, accelerate_config=tmp_path / "six.yaml")
    assert n == 6 and "six.yaml" in why
    with pytest.raises(FileNotFoundError, match="ACCELERATE_CONFIG='nope.yaml'"):
        launch.num_processes(make_config("quick"), 0, accelerate_config="nope.yaml")
