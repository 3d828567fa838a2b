"""The benchmarks' "original" side is the original computation: it reproduces the fixture written by
the original MambaSWELU code (logits, loss, greedy tokens also past max_seq_len), and its training
step is the plain one (every parameter in AdamW state only once it has a gradient, fp32 logits)."""
import json

import pytest
import torch

from mambaft.bench.original import OriginalMambaSWELU, original_optimizer, original_train_step
from tests.conftest import fixture_path
from tests.numerics import REFERENCE_TOL, log_softmax_abs_error



pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.numerics]   # fp32 results on this CPU's kernels: `make test` reruns them on the lowest ISA

def _original_from_fixture(tiny_ckpt_path):
    ckpt = torch.load(tiny_ckpt_path, weights_only=False)
    kwargs = json.loads(fixture_path("mambaswelu_tiny/manifest.json").read_text())["constructor_kwargs"]
    kwargs.pop("tie_embeddings")
    model = OriginalMambaSWELU(**kwargs)
    model.load_state_dict(ckpt["model_state_dict"], strict=True)    # the exact original key set
    return model.eval()


def test_original_reimplementation_reproduces_the_fixture(tiny_ckpt_path, tiny_reference):
    model = _original_from_fixture(tiny_ckpt_path)
    ids = tiny_reference["input_ids"]
    with torch.no_grad():
        out = model.double()(ids, labels=ids)         # float64: parity on every CPU (tests/numerics.py)
        model.float()
    torch.testing.assert_close(out["logits"].float(), tiny_reference["logits"], **REFERENCE_TOL)
    # a cross-entropy over 512 logits each within REFERENCE_TOL (<= 2.1e-4 at |x| = 20) moves by at most
    # twice that; the reference's own fp32 log-softmax adds at most 3.1e-5
    assert abs(out["loss"].item() - tiny_reference["loss"].item()) < 2 * 2.1e-4 + log_softmax_abs_error(512, 20)
    assert torch.equal(model.generate(tiny_reference["greedy_prompt"], 24), tiny_reference["greedy_output"])
    # 120 + 16 tokens cross max_seq_len = 128: the crop restarts positions at 0 inside the window
    assert torch.equal(model.generate(tiny_reference["long_prompt"], 16), tiny_reference["long_greedy_output"])


def test_original_training_step_updates_only_used_parameters(tiny_ckpt_path, tiny_reference):
    model = _original_from_fixture(tiny_ckpt_path).train()
    opt = original_optimizer(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = tiny_reference["input_ids"]
    loss = original_train_step(model, opt, [(ids[:1], ids[:1]), (ids[1:], ids[1:])])
    assert 10.0 < loss < 20.0                                   # ln(512) = 6.2; random weights: 14.3
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    dead = {n for n in before if ".x_proj." in n or ".dt_proj." in n}
    assert dead and not (moved & dead)            # never used by forward: no gradient, no AdamW step
    assert moved == set(before) - dead
    assert all(p.grad is None for p in model.parameters())      # zero_grad(set_to_none=True)
    assert len(opt.state) == len(list(model.parameters())) - len(dead)
