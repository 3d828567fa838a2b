"""The training step: token-weighted accumulation and the optimizer step (clip, skip on NaN)."""
from __future__ import annotations

import math

import pytest
import torch

from mambaft.train.optim import build_optimizer
from mambaft.train.step import count_trained_tokens, micro_step, optimizer_step
from tests.conftest import make_small_gpt2_model


def _batch(seed: int = 0):
    """4 rows of very different trained lengths (3, 40, 7, 25 label tokens), right-padded to 48."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50257, (4, 48), generator=g)
    labels = torch.full_like(ids, -100)
    for row, (start, n) in enumerate([(30, 3), (5, 40), (20, 7), (10, 25)]):
        labels[row, start:start + n] = ids[row, start:start + n]
    return ids, labels


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow   # many backward passes
@pytest.mark.numerics
def test_gradient_is_the_same_however_the_global_batch_is_split():
    ids, labels = _batch()
    n_global = count_trained_tokens(labels)
    assert n_global == 3 + 40 + 7 + 25

    whole = make_small_gpt2_model(seed=1)
    loss_whole, n_whole = micro_step(whole, ids, labels, loss_scale=1.0 / n_global)
    g_whole = _grads(whole)

    split = make_small_gpt2_model(seed=1)
    total, n_total = 0.0, 0
    for rows in ([0], [1, 2], [3]):  # uneven micro-batches: 3, 47 and 25 trained tokens
        loss, n = micro_step(split, ids[rows], labels[rows], loss_scale=1.0 / n_global)
        total, n_total = total + loss, n_total + n
    g_split = _grads(split)

    assert n_whole == n_total == n_global
    # Two fp32 orders of the same 75 token losses, through matmuls whose shape changes with the
    # micro-batch. Measured: rel 2.8e-8 for the loss, at most 0.0013 of (1e-7 + 1e-4 |g|) for the
    # gradients, on AVX-512 and ATen DEFAULT kernels alike; the naive mean below is off by more than
    # 1e-2 relative, so these tolerances sit between the two by orders of magnitude.
    assert math.isclose(loss_whole, total, rel_tol=1e-5)
    assert g_whole.keys() == g_split.keys() and len(g_whole) > 5
    for name in g_whole:
        torch.testing.assert_close(g_split[name], g_whole[name], rtol=1e-4, atol=1e-7, msg=name)

    # A naive mean of per-micro-batch means gives a different gradient (the thing this avoids).
    naive = make_small_gpt2_model(seed=1)
    for rows in ([0], [1, 2], [3]):
        n = count_trained_tokens(labels[rows])
        micro_step(naive, ids[rows], labels[rows], loss_scale=1.0 / (3 * n))
    w = "token_embedding.weight"
    assert not torch.allclose(_grads(naive)[w], g_whole[w], rtol=1e-2, atol=1e-6)


def test_optimizer_step_sets_lr_clips_and_clears():
    model = make_small_gpt2_model(seed=2)
    opt = build_optimizer(model, lr=1.0, weight_decay=0.0)
    ids, labels = _batch(1)
    micro_step(model, ids, labels, loss_scale=1000.0)  # a huge scale: the norm is far above 1
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    norm = optimizer_step(model, opt, lr=3e-4, grad_clip=1.0)
    assert norm > 1.0
    assert all(g["lr"] == 3e-4 for g in opt.param_groups)
    assert all(p.grad is None for p in model.parameters())
    moved = sum(int(not torch.equal(before[n], p.detach())) for n, p in model.named_parameters())
    assert moved > 5


def test_non_finite_gradient_skips_the_step():
    model = make_small_gpt2_model(seed=3)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    ids, labels = _batch(2)
    micro_step(model, ids, labels, loss_scale=1.0)
    next(model.parameters()).grad[0, 0] = float("nan")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    norm = optimizer_step(model, opt, lr=1e-3, grad_clip=1.0)
    assert not math.isfinite(norm)
    for n, p in model.named_parameters():
        assert torch.equal(before[n], p.detach()), n
        assert p.grad is None
    assert len(opt.state) == 0  # no moments were written


def test_the_micro_step_reads_no_device_value_when_given_the_host_label_index():
    """Issue 27: no host sync per micro-batch. The meta device holds shapes and no values, so any read
    of a tensor's value (int(), .item(), a boolean-mask index, nonzero) raises there. With the label
    index from the host's labels, a whole forward + backward runs on meta; without it, the loss has to
    find the trained positions on the device, and that read is refused."""
    from mambaft.model.kernels.loss import label_index
    ids, labels = _batch()
    model = make_small_gpt2_model(seed=1).to("meta")
    index = label_index(labels)                        # on the host, where the batch is built
    loss, n = micro_step(model, ids.to("meta"), labels.to("meta"), loss_scale=1.0 / 75, sync=False,
                         label_index=index.to("meta"))
    assert n == 3 + 40 + 7 + 25 and loss.device.type == "meta"
    # the same parameters get a gradient as on the CPU (x_proj and dt_proj are dead in the as-trained
    # architecture: the forward never reads them)
    cpu = make_small_gpt2_model(seed=1)
    micro_step(cpu, ids, labels, loss_scale=1.0 / 75)
    # (.to("meta") unties lm_head from the token embedding, so the meta model lists both)
    meta_grads = {n for n, p in model.named_parameters() if p.grad is not None} - {"lm_head.weight"}
    assert meta_grads == set(_grads(cpu))
    assert all(p.grad.device.type == "meta" for p in model.parameters() if p.grad is not None)
    with pytest.raises((RuntimeError, NotImplementedError)):
        micro_step(model, ids.to("meta"), labels.to("meta"), loss_scale=1.0 / 75, sync=False)


def test_the_host_label_index_gives_the_same_loss_and_gradients_bit_for_bit():
    """The index picks the same feature rows in the same (row-major) order as the boolean mask did:
    the same operations on the same values, so equality is exact, not within a tolerance."""
    from mambaft.model.kernels.loss import label_index
    ids, labels = _batch(seed=3)
    a, b = make_small_gpt2_model(seed=2), make_small_gpt2_model(seed=2)
    la, na = micro_step(a, ids, labels, loss_scale=1.0 / 75)
    lb, nb = micro_step(b, ids, labels, loss_scale=1.0 / 75, label_index=label_index(labels))
    assert (la, na) == (lb, nb)
    ga, gb = _grads(a), _grads(b)
    assert ga.keys() == gb.keys() and all(torch.equal(ga[k], gb[k]) for k in ga)
    flat = label_index(labels)
    L = labels.shape[1]
    # hand-checked: row 0 trains labels 30..32, so features 29..31 of row 0 are read first
    assert flat[:3].tolist() == [29, 30, 31] and flat[3].item() == 1 * L + 4
