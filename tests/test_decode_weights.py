"""bf16 weights for generation: the copy keeps norms/SWELU/conv in fp32, decodes under autocast, leaves
the fp32 model untouched; the byte count is that of the weights a decode step reads; the greedy
difference is measured, not assumed; the generate bench reports the bandwidth fraction."""
import json

import pytest
import torch

from mambaft.generate import generate
from mambaft.model.decode_weights import (decode_autocast, decode_weight_bytes, greedy_difference,
                                          with_bf16_weights)
from tests.conftest import make_small_gpt2_model


@pytest.mark.slow   # generates many tokens
def test_bf16_copy_halves_the_bytes_a_step_reads_and_still_generates():
    model = make_small_gpt2_model().eval()
    fast = with_bf16_weights(model)
    assert all(p.dtype == torch.float32 for p in model.parameters())          # original untouched
    assert fast.mamba_stack.layers[0].norm.weight.dtype == torch.float32
    assert fast.mamba_stack.layers[0].mamba.in_proj.weight.dtype == torch.bfloat16
    cfg = model.config
    E = cfg.d_inner
    # live weights: everything but the dead x_proj/dt_proj and the position table
    dead = cfg.n_layers * (E * cfg.d_state + E * E + E)
    live = sum(p.numel() for p in model.parameters()) - dead - cfg.max_seq_len * cfg.d_model
    assert decode_weight_bytes(model) == 4 * live
    assert decode_weight_bytes(fast) < 0.55 * decode_weight_bytes(model)
    prompt = [[464, 3290, 318, 257]]
    with decode_autocast(fast):
        out = generate(fast, prompt, max_new_tokens=6, temperature=0.0)
    assert len(out[0]) == 10
    # without the autocast context it runs too: the model casts SWELU's fp32 results to the next
    # Linear's dtype (mambaswelu.as_input; before, the dtypes clashed with a RuntimeError)
    assert len(generate(fast, prompt, max_new_tokens=2, temperature=0.0)[0]) == 6


@pytest.mark.slow   # generates many tokens
def test_greedy_difference_counts_identical_and_diverging_continuations():
    model = make_small_gpt2_model().eval()
    same = greedy_difference(model, model, [[1, 2, 3], [4, 5]], new_tokens=5)
    assert same == {"prompts": 2, "new_tokens": 5, "identical_fraction": 1.0,
                    "mean_first_difference": 5.0, "token_agreement": 1.0}
    other = make_small_gpt2_model(seed=7).eval()
    diff = greedy_difference(model, other, [[1, 2, 3], [4, 5]], new_tokens=5)
    assert diff["identical_fraction"] < 1.0 and diff["mean_first_difference"] < 5.0


@pytest.mark.slow   # bench worker processes
def test_generate_bench_reports_the_bandwidth_fraction_and_the_bf16_difference(capsys):
    from mambaft.bench.__main__ import main
    assert main(["generate", "--impl", "mambaft", "--weights", "fp32,bf16", "--d-model", "32",
                 "--n-layers", "2", "--vocab", "257", "--threads", "1", "--contexts", "", "--prompt", "8",
                 "--new", "4", "--batches", "1,2", "--probe", "3", "--repeats", "1", "--warmup", "0",
                 "--agreement-prompts", "2", "--agreement-new", "4", "--no-memory", "--in-process"]) == 0
    objs = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    dec = [o for o in objs if o["phase"] == "decode"]
    assert {(o["precision"], o["batch"]) for o in dec} == {("fp32", 1), ("fp32", 2), ("bf16", 1), ("bf16", 2)}
    for o in dec:
        assert o["ms_per_step"] == pytest.approx(1e3 * o["median_s"] / 3)
        assert o["bandwidth_limit_ms_per_step"] == pytest.approx(
            1e3 * o["weight_mb_per_step"] * 1e6 / (o["copy_bandwidth_gb_s"] * 1e9))
        assert o["bandwidth_fraction"] == pytest.approx(o["bandwidth_limit_ms_per_step"] / o["ms_per_step"])
    assert all("greedy_vs_fp32" in o for o in objs if o["precision"] == "bf16")
    assert not any("greedy_vs_fp32" in o for o in objs if o["precision"] == "fp32")
