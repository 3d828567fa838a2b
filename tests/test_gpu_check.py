"""benchmarks/gpu_check.py --dry-run: every section of the GPU check runs on CPU at tiny sizes and
writes its JSON (the same code a GPU run executes, with device cpu and small shapes)."""
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
    assert rep["dry_run"] and rep["device"] == "cpu"
    assert not [k for k, v in s.items() if "error" in v]
    assert s["logits"]["max_abs_diff_logits"] == 0.0           # cpu against cpu in a dry run
    # our fp32 forward against the original code's logits: the measured bound of tests/numerics.py
    assert s["logits"]["max_abs_diff_vs_original_code"] <= FP32_FORWARD_TOL["atol"]
    assert s["train"]["runs"][0]["tokens_per_s"] > 0 and s["memory"]["peak_mem_mb"] > 0
    assert s["scan"]["mamba_ssm"] in (True, False)
    ft = s["finetune"]
    assert ft["resumed_from"] == [3] and ft["final_steps"] == 6 and ft["steps_logged"] == [1, 2, 3, 4, 5, 6]
    assert {(r["phase"], r["batch"]) for r in s["generate"]["runs"]} >= {("decode", 1), ("decode", 8)}
