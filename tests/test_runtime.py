""""auto" precision follows the CPU class: an AVX2-only CPU gets fp32, and so does an AVX-512 machine
told to behave as one (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA), so that emulated runs measure what
the real machine runs."""
import os
import subprocess
import sys

import pytest
import torch

from mambaft import runtime
from tests.conftest import ROOT

CPU = torch.device("cpu")


@pytest.mark.parametrize("capability", ["AVX2", "DEFAULT"])
def test_auto_is_fp32_when_aten_reports_a_cpu_below_avx512(monkeypatch, capability):
    monkeypatch.setattr(runtime.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert runtime.cpu_has_bf16() is False
    assert runtime.resolve_precision("auto", CPU) == "fp32"
    assert runtime.resolve_precision("bf16", CPU) == "bf16"      # an explicit choice is kept


@pytest.mark.parametrize("env", [{"ATEN_CPU_CAPABILITY": "default"}, {"ATEN_CPU_CAPABILITY": "avx2"},
                                 {"ONEDNN_MAX_CPU_ISA": "AVX2"}])
@pytest.mark.slow   # a fresh interpreter per case
def test_each_avx2_emulation_resolves_auto_to_fp32(env):
    """Each variable alone (they are read once, at process start: hence a child process)."""
    code = ("import torch; from mambaft.runtime import resolve_precision; "
            "print(resolve_precision('auto', torch.device('cpu')))")
    child_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                   os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.split()[-1] == "fp32", out.stderr
