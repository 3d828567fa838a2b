"""benchmarks/gpu_check.py --dry-run: every section of the GPU check runs on CPU at tiny sizes and
writes its JSON (the same code a GPU run executes, with device cpu and small shapes), and the fine-tune
section asserts what the six-GPU run relies on: two gloo ranks train what one process trains at the
same global batch, a killed run resumes to the same losses, rank 0 alone commits the checkpoints."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, fixture_path
from tests.numerics import FP32_FORWARD_TOL


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_section_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    args = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out),
            "--fixture", str(fixture_path("mambaswelu_tiny"))]
    p = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads(out.read_text())
    s = rep["sections"]
    assert rep["dry_run"] and rep["device"] == "cpu" and rep["ranks"] == 2
    assert not [k for k, v in s.items() if "error" in v], {k: v.get("error") for k, v in s.items()}
    # our fp32 forward against the original code's logits: the measured bound of tests/numerics.py
    assert s["logits"]["max_abs_diff_vs_original_code"] <= FP32_FORWARD_TOL["atol"]
    assert s["train"]["runs"][0]["tokens_per_s"] > 0 and s["memory"]["peak_mem_mb"] > 0
    # the chunked scan against the step-by-step definition, fp32 on random inputs of 16 steps: the
    # chunks only regroup the same products (1e-5 absolute on outputs of order 1)
    assert s["scan"]["chunked_vs_definition_max_abs_diff_y"] < 1e-5
    ft = s["finetune"]
    assert ft["world_size"] == 2 and ft["grad_comm"] == "fp32" and ft["steps_logged"] == [1, 2, 3, 4, 5, 6]
    assert ft["checkpoints"] == ["step_0000003", "step_0000006"]                # committed once, by rank 0
    assert ft["rng_files"] == ["rng_rank0.pt", "rng_rank1.pt"]                  # every rank's RNG
    assert ft["first_returncode"] != 0 and ft["resumed_from"] == [3] and ft["final_steps"] == 6
    assert ft["resumed_steps"] == [1, 2, 3, 4, 5, 6]
    # resumed on the same kernels in the same order: the losses repeat (rel 1e-6 as in test_train_loop)
    assert ft["resume_max_rel_diff"] <= 1e-6
    # 2 gloo ranks against one process with twice the accumulation: the all-reduce adds in another
    # order (~1e-7), carried through 6 AdamW steps (rel 2e-5, as tests/test_train_loop.py's)
    assert ft["ddp_vs_one_process_max_rel_diff"] <= 2e-5
    assert ft["last_loss"] < ft["first_loss"]
    assert {(r["phase"], r["batch"]) for r in s["generate"]["runs"]} >= {("decode", 1), ("decode", 8)}
