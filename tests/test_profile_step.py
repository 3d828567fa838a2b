"""benchmarks/profile_step.py runs (a measurement script: nothing here asserts a time)."""
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_profile_step_prints_the_table_and_the_swelu_share():
    """benchmarks/profile_step.py at a tiny size: it restarts itself in the launcher environment and
    prints the step time, the profiler table and SWELU's share of the step."""
    args = [sys.executable, str(ROOT / "benchmarks" / "profile_step.py"), "--d-model", "32", "--n-layers", "1",
            "--batch", "1", "--seq", "16", "--steps", "1", "--threads", "1", "--precision", "fp32"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GLIBC_TUNABLES", "MAMBAFT_NO_RELAUNCH")}
    p = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "aten::mm" in p.stdout and "precision fp32, 1 threads, 1 x 16 tokens (50% prompt)" in p.stdout
    from mambaft.runtime import LAUNCH_ENV
    assert f"OMP_WAIT_POLICY={LAUNCH_ENV['OMP_WAIT_POLICY']}, GLIBC_TUNABLES={LAUNCH_ENV['GLIBC_TUNABLES']}" in p.stdout
    assert float(p.stdout.split("step: median ")[1].split(" s")[0]) > 0
    assert p.stdout.split("at the step's shapes: ")[1].split(" = ")[1].strip().endswith("% of the step")
