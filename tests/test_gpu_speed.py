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
