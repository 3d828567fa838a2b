"""The model reproduces the original MambaSWELU exactly (fixtures written by the original code)."""
import json

import pytest
import torch

from mambaft.model import MambaSWELU, MambaSWELUConfig, count_parameters, model_facts, swelu
from tests.conftest import fixture_path
from tests.numerics import FP32_FORWARD_TOL, REFERENCE_TOL, TINY_LOSS_PATHS_TOL, log_softmax_abs_error


@pytest.mark.numerics
def test_logits_and_loss_match_original(tiny_model64, tiny_reference):
    """The same function as the original: in float64, so that only the reference's own fp32 rounding
    separates them, on every CPU (tests/numerics.py)."""
    ids = tiny_reference["input_ids"]
    with torch.no_grad():
        out = tiny_model64(ids, labels=ids)
    torch.testing.assert_close(out["logits"], tiny_reference["logits"], **REFERENCE_TOL)
    # the loss is a cross-entropy over 512 logits each within REFERENCE_TOL (<= 2.1e-4 at |x| = 20), so
    # it moves by at most twice that, plus two fp32 log-softmax roundings (2 x 3.1e-5): 4.8e-4
    assert abs(out["loss"].item() - tiny_reference["loss"].item()) < 2 * 2.1e-4 + 2 * log_softmax_abs_error(512, 20)
    assert tiny_reference["loss"].item() == 14.262341499328613        # the stored value itself


@pytest.mark.numerics
def test_fp32_forward_matches_original(tiny_model, tiny_reference):
    """What users run: fp32, on this CPU's kernels."""
    ids = tiny_reference["input_ids"]
    with torch.no_grad():
        out = tiny_model(ids, labels=ids)
    torch.testing.assert_close(out["logits"], tiny_reference["logits"], **FP32_FORWARD_TOL)
    # as above, with FP32_FORWARD_TOL's 3.0e-4 at |x| = 20: 2 x 3.0e-4 + 2 x 3.1e-5 = 6.6e-4
    assert abs(out["loss"].item() - tiny_reference["loss"].item()) < 2 * 3.0e-4 + 2 * log_softmax_abs_error(512, 20)


@pytest.mark.numerics
def test_chunked_loss_equals_full_loss_and_gradients(tiny_model, tiny_reference):
    ids = tiny_reference["input_ids"]
    labels = ids.clone()
    labels[:, :10] = -100  # a masked prompt
    tiny_model.train(False)
    full = tiny_model(ids, labels=labels)
    full["loss"].backward()
    g_full = {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}
    tiny_model.zero_grad()
    chunked = tiny_model(ids, labels=labels, return_logits=False, loss_chunk=7)
    assert chunked["logits"] is None
    chunked["loss"].backward()
    assert chunked["n_tokens"] == full["n_tokens"] == 2 * 30
    assert abs(chunked["loss"].item() - full["loss"].item()) < TINY_LOSS_PATHS_TOL
    # Gradients through two loss kernels: measured at most 0.40 of (1e-6 + 1e-4 |g|) (ATen DEFAULT kernels;
    # 0.28 AVX-512, 0.16 ATEN_CPU_CAPABILITY=avx2). A wrong chunk boundary changes some gradient by ~1/60.
    for n, p in tiny_model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, g_full[n], atol=1e-6, rtol=1e-4, msg=n)


@pytest.mark.numerics
def test_sum_reduction_counts_trained_tokens(tiny_model, tiny_reference):
    ids = tiny_reference["input_ids"]
    with torch.no_grad():
        mean = tiny_model(ids, labels=ids)["loss"]
        summed = tiny_model(ids, labels=ids, return_logits=False, loss_reduction="sum")
    assert summed["n_tokens"] == 2 * 39
    assert abs(summed["loss"].item() / 78 - mean.item()) < TINY_LOSS_PATHS_TOL


@pytest.mark.slow   # builds the 124M model
def test_real_config_has_the_124m_keys_and_parameter_count():
    keys = json.loads(fixture_path("mambaswelu_124m_keys.json").read_text())
    model = MambaSWELU(MambaSWELUConfig(**keys["constructor_kwargs"]))
    sd = model.state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == keys["state_dict_keys"]
    assert count_parameters(model) == keys["parameters_counted_once"] == 124_104_719
    facts = model_facts(model)
    assert facts["receptive_field_tokens"] == 19
    assert facts["dead_parameters"] == 6 * (16 * 2048 + 2048 * 2048 + 2048) == 25_374_720
    assert sum(facts["parameters_by_part"].values()) == 124_104_719


@pytest.mark.numerics
def test_swelu_is_fp32_under_autocast_and_bounded():
    z = torch.linspace(-6, 6, 101)
    k = torch.tensor(0.45)
    ref = torch.sign(z) * (1 - torch.exp(-torch.pow(z.abs() + 1e-8, k.abs() + 1e-6)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = swelu(z.to(torch.bfloat16), k)
    assert out.dtype == torch.float32
    assert out.abs().max() < 1.0
    # fp32 of bf16-rounded inputs: the steep region near 0 is kept (bf16 math would flatten it). The
    # same elementwise fp32 ops on the same values: assert_close's fp32 default (rel 1.3e-6, abs 1e-5)
    # only absorbs a different vector exp/pow (within 1-2 ulp: 2.4e-7 relative).
    torch.testing.assert_close(out, swelu(z.to(torch.bfloat16).float(), k))
    torch.testing.assert_close(swelu(z, k), ref)


def test_too_long_input_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="exceeds maximum 128"):
        tiny_model(torch.zeros(1, 129, dtype=torch.long))


def test_freeze_dead_keeps_keys_and_stops_gradients(tiny_model):
    n = tiny_model.freeze_dead()
    assert n == 2 * (16 * 128 + 128 * 128 + 128)
    ids = torch.randint(0, 512, (1, 12))
    tiny_model(ids, labels=ids)["loss"].backward()
    for name, p in tiny_model.dead_parameters():
        assert p.grad is None and not p.requires_grad, name
    assert "mamba_stack.layers.0.mamba.dt_proj.weight" in tiny_model.state_dict()
