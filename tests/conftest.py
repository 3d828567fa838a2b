"""Shared test fixtures. Everything the tests read lives in tests/fixtures/ (provenance in its
README.md): a missing fixture is a broken checkout, so it fails the test, never skips it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_relaunch(monkeypatch):
    """`mambaft pretrain` restarts itself with the launcher environment (runtime.relaunch_in_launch_env);
    called in this process, an exec would replace pytest, so in-process calls run in place. A test
    whose subprocess must relaunch removes the variable from that subprocess's environment."""
    monkeypatch.setenv("MAMBAFT_NO_RELAUNCH", "1")
FIXTURES = ROOT / "tests" / "fixtures"


def fixture_path(rel: str) -> Path:
    """tests/fixtures/<rel>, or a test failure naming the missing file."""
    path = FIXTURES / rel
    if not path.exists():
        pytest.fail(f"missing test fixture {path}: it is part of the repository (see tests/fixtures/README.md)")
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture()
def one_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls on a shared, oversubscribed CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def lam_checkpoint(tiny_ckpt_path: Path, out: Path, lam: float) -> Path:
    """The tiny original checkpoint with a `lam` key beside every SWELU `k` (later SWELU versions)."""
    ckpt = torch.load(tiny_ckpt_path, weights_only=True)
    sd = ckpt["model_state_dict"]
    for key in [k for k in sd if k.endswith(".k")]:
        sd[key[:-2] + ".lam"] = torch.tensor(lam)
    torch.save(ckpt, out)
    return out


@pytest.fixture(scope="session")
def tiny_ckpt_path() -> Path:
    return fixture_path("mambaswelu_tiny/checkpoint.pt")


@pytest.fixture(scope="session")
def tiny_reference() -> dict:
    return torch.load(fixture_path("mambaswelu_tiny/reference.pt"), weights_only=True)


@pytest.fixture()
def tiny_model(tiny_ckpt_path):
    from mambaft.checkpoint import load_checkpoint
    model, _ = load_checkpoint(tiny_ckpt_path)
    return model


@pytest.fixture()
def tiny_model64(tiny_model):
    """The fixture model in float64: its logits are exact to ~1e-13 on any CPU (the lm_head output is
    then rounded to fp32, 1.2e-6 at |x| = 20), so parity with the reference does not depend on kernels."""
    return tiny_model.double()


def make_small_gpt2_model(seed: int = 0, d_model: int = 32, n_layers: int = 2, max_seq_len: int = 256,
                          dense_hidden_dim: int = 64, dropout: float = 0.0):
    """A small random MambaSWELU with the GPT-2 vocabulary (so real tokenized text fits)."""
    from mambaft.model import MambaSWELU, MambaSWELUConfig
    torch.manual_seed(seed)
    cfg = MambaSWELUConfig(vocab_size=50257, d_model=d_model, n_layers=n_layers,
                           max_seq_len=max_seq_len, dense_hidden_dim=dense_hidden_dim, dropout=dropout)
    return MambaSWELU(cfg)


@pytest.fixture(scope="session")
def small_gpt2_folder(tmp_path_factory) -> Path:
    """A saved mambaft model folder of `make_small_gpt2_model()` (random weights, GPT-2 vocab)."""
    from mambaft.checkpoint import save_checkpoint
    path = tmp_path_factory.mktemp("models") / "small_gpt2"
    save_checkpoint(make_small_gpt2_model(), path)
    return path


# The smoke course's papermill parameters: tiny sizes, every notebook, the chat cell included.
COURSE_PARAMS = {"SMOKE_STEPS": 2, "SWEEP_STEPS": 2, "MAX_NEW_TOKENS": 12, "EVAL_LIMIT": 3, "BENCH_LIMIT": 0,
                 "CONTEXT_WINDOWS": 2, "CHAT": True, "PREVIEW_ROWS": 2, "SEED": 3}


@pytest.fixture(scope="session")
def smoke_course(small_gpt2_folder, tmp_path_factory):
    """The five notebooks run once per session by papermill on the small model (a few minutes on
    2 cores): (run_dir, base). tests/test_notebooks.py asserts what they record, the browser test opens
    the executed notebooks in JupyterLab."""
    # Typed as a user types it: `mambaft course --base base --out runs` in the user's own folder
    # (relative paths; the kernels run in the repository root): everything must land under ./runs.
    import json
    import shutil

    from mambaft.cli import course as course_cli
    caller = tmp_path_factory.mktemp("user")
    shutil.copytree(small_gpt2_folder, caller / "base")
    sets = [a for k, v in COURSE_PARAMS.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    here = os.getcwd()
    os.chdir(caller)
    try:
        assert course_cli.main(["--strategy", "smoke", "--base", "base", "--out", "runs", "--no-progress",
                                *sets]) == 0
    finally:
        os.chdir(here)
    assert sorted(p.name for p in caller.iterdir()) == ["base", "runs"]     # nothing else written here
    return caller / "runs" / "smoke", caller / "base"
