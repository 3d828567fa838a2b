"""GPU speed by design, checked on CPU: no host sync per micro-batch (the loop reads the step's loss
once), the bf16 gradient all-reduce chosen for CUDA only, and the planner's micro-batch from memory
with the same global batch. The bf16 all-reduce itself runs in tests/test_course_launch.py (2 ranks)."""
from __future__ import annotations

import pytest
import torch

from mambaft.config import make_config
from mambaft.train.loop import grad_comm
from mambaft.train.step import micro_step
from tests.conftest import make_small_gpt2_model


def test_micro_step_without_sync_returns_the_same_loss_on_the_device():
    model = make_small_gpt2_model(seed=0)
    ids = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    a, na = micro_step(model, ids, ids, loss_scale=0.1)
    ga = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    b, nb = micro_step(model, ids, ids, loss_scale=0.1, sync=False)
    assert isinstance(a, float) and isinstance(b, torch.Tensor) and b.dim() == 0 and not b.requires_grad
    assert float(b) == a and na == nb
    gb = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.equal(x, y) for x, y in zip(ga, gb))


@pytest.mark.slow   # two short fine-tunes
def test_the_loop_reads_the_loss_once_per_step_not_per_micro_batch(tmp_path, monkeypatch):
    """Tensor -> Python number conversions (each a host sync on CUDA) over a whole 2-step run: the
    same with 1 and with 4 micro-batches per step (before: one more per extra micro-batch)."""
    from mambaft.checkpoint import save_checkpoint
    from mambaft.train import finetune
    from tests.test_train_loop import QA, QUIET, learnable_model, write_prepared
    data = write_prepared(tmp_path / "data", QA * 2, QA[:2])
    base = save_checkpoint(learnable_model(seed=1), tmp_path / "base")
    counts = {}
    real_float, real_item = torch.Tensor.__float__, torch.Tensor.item
    for accum in (1, 4):
        n = [0]

        def counting_float(self, n=n):
            n[0] += 1
            return real_float(self)

        def counting_item(self, n=n):
            n[0] += 1
            return real_item(self)
        monkeypatch.setattr(torch.Tensor, "__float__", counting_float)
        monkeypatch.setattr(torch.Tensor, "item", counting_item)
        cfg = make_config("smoke", max_steps=2, batch_size=2, grad_accum=accum, save_every=2, eval_every=2,
                          keep_last=1, eval_batches=1, precision="fp32")
        finetune(cfg, base, data, tmp_path / f"run{accum}", **QUIET)
        monkeypatch.setattr(torch.Tensor, "__float__", real_float)
        monkeypatch.setattr(torch.Tensor, "item", real_item)
        counts[accum] = n[0]
    assert counts[4] == counts[1], counts


def test_bf16_gradient_all_reduce_on_cuda_only_and_never_for_one_process():
    cfg = make_config("smoke")
    assert cfg.grad_comm == "auto"
    assert grad_comm(cfg, torch.device("cuda"), 6) == "bf16"
    assert grad_comm(cfg, torch.device("cpu"), 2) == "fp32"       # the gloo rehearsal stays exact
    assert grad_comm(cfg, torch.device("cuda"), 1) == "none"
    assert grad_comm(make_config("smoke", grad_comm="fp32"), torch.device("cuda"), 6) == "fp32"
    with pytest.raises(Exception, match="grad_comm='fp8'"):
        make_config("smoke", grad_comm="fp8")


def test_the_planner_picks_the_largest_micro_batch_that_fits_with_the_same_rows():
    from mambaft.train.plan import MEMORY_HEADROOM, micro_batch_for_memory
    cfg = make_config("conversational")                       # the plan: 2 rows x 16 accumulation x 1024 tokens
    n, t = 124_104_719, 123_000_000
    static = 4 * n + 12 * t                                   # 2.0 GB of weights, gradients and moments
    per_token = 0.2345 * 2**20                                # measured by activation_bytes at 124M in bf16
    # a 24 GiB RTX 4090: 0.75 x 24 GiB - 1.97 GB = 16.2 GiB of activations = 68.9 rows of 1024 tokens -> 32
    b, a, why = micro_batch_for_memory(cfg, free_bytes=24 * 2**30, n_params=n, n_trainable=t,
                                       act_bytes_per_token=per_token)
    assert (b, a) == (32, 1) and b * a == cfg.batch_size * cfg.grad_accum
    assert why.startswith("batch_size=32 x grad_accum=1 (was 2 x 16; 32 rows per process either way)")
    # 8 GiB: (0.75 x 8 GiB - 1.97 GB) / (1024 x 0.2345 MiB) = 17.8 rows -> the largest divisor of 32: 16
    assert micro_batch_for_memory(cfg, free_bytes=8 * 2**30, n_params=n, n_trainable=t,
                                  act_bytes_per_token=per_token)[:2] == (16, 2)
    # nothing fits: one row at a time, said
    b, a, why = micro_batch_for_memory(cfg, free_bytes=2 * 2**30, n_params=n, n_trainable=t,
                                       act_bytes_per_token=per_token)
    assert (b, a) == (1, 32) and why.startswith("even 1 row") and MEMORY_HEADROOM == 0.75


def test_activation_bytes_grow_with_the_row_and_count_the_fixed_part():
    from mambaft.train.estimate import activation_bytes
    model = make_small_gpt2_model(seed=0, d_model=32, n_layers=2)
    per_token, fixed = activation_bytes(model, precision="fp32", lengths=(16, 32))
    # at least the fp32 residual stream of each layer is saved per token: 2 layers x 32 x 4 B
    assert per_token >= 2 * 32 * 4 and fixed > 0
    # the loss kernel's fp32 [V, D] gradient is fixed, whatever the length: 50257 x 32 x 4 B = 6.4 MB
    assert fixed >= 50257 * 32 * 4 * 0.99


@pytest.mark.slow   # two short fine-tunes
def test_the_planners_micro_batch_trains_what_the_plans_trains(tmp_path):
    """2 x 4 (the plan's shape) against 8 x 1 (what the planner picks with memory to spare): the same
    rows per step, the same token-weighted gradient."""
    from mambaft.checkpoint import save_checkpoint
    from mambaft.train import finetune
    from mambaft.train.plan import micro_batch_for_memory
    from tests.test_train_loop import QA, QUIET, learnable_model, write_prepared
    data = write_prepared(tmp_path / "data", QA * 2, QA[:2])
    base = save_checkpoint(learnable_model(seed=4), tmp_path / "base")
    common = dict(max_steps=3, lr=3e-3, warmup_steps=1, save_every=3, eval_every=3, keep_last=1, eval_batches=1,
                  precision="fp32")
    plan = make_config("smoke", batch_size=2, grad_accum=4, **common)
    b, a, _ = micro_batch_for_memory(plan, free_bytes=2**30, n_params=2_000_000, n_trainable=2_000_000,
                                     act_bytes_per_token=4096, row_tokens=64)
    assert (b, a) == (8, 1)
    ref = finetune(plan, base, data, tmp_path / "plan", **QUIET)
    big = finetune(make_config("smoke", batch_size=b, grad_accum=a, **common), base, data, tmp_path / "big", **QUIET)
    # the same rows, padded per micro-batch and summed in another order: fp32 reordering (~1e-7)
    # through 3 AdamW steps, rel 2e-5 as the two-rank test
    for x, y in zip(ref["losses"], big["losses"]):
        assert y == pytest.approx(x, rel=2e-5)
