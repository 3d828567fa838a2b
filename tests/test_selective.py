"""The context repair: the selective upgrade preserves the original exactly at initialization, its scan
equals the reference loop (values and gradients), decoding equals the full forward, and it saves/loads."""
import json

import pytest
import torch

from mambaft.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mambaft.generate import generate
from mambaft.model import MambaSWELUConfig, build_model, upgrade_to_selective
from mambaft.model.kernels.scan import (HAS_MAMBA_SSM, chunk_length, selective_scan, selective_scan_ref,
                                selective_step)
from mambaft.model.selective import SelectiveMambaSWELU
from tests.numerics import FP32_FORWARD_TOL, STEP_TOL, TINY_LOSS_PATHS_TOL

pytestmark = pytest.mark.numerics   # fp32 results on this CPU's kernels: `make test` reruns them on the lowest ISA


def _open_gates(model, std=0.5, seed=1):
    """Give the gates (and so the scan) a visible effect, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.mamba_stack.layers:
            gate = layer.mamba.selective.gate
            gate.copy_(torch.randn(gate.shape, generator=g) * std)
    return model


def _scan_inputs(B=2, L=37, E=8, N=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, E, generator=g, dtype=dtype)
    delta = torch.nn.functional.softplus(torch.randn(B, L, E, generator=g, dtype=dtype) - 1)
    A = -torch.rand(E, N, generator=g, dtype=dtype) * 3
    Bm = torch.randn(B, L, N, generator=g, dtype=dtype)
    Cm = torch.randn(B, L, N, generator=g, dtype=dtype)
    D = torch.randn(E, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, delta, A, Bm, Cm, D)]


# --- function preservation --------------------------------------------------------------------------
def test_upgrade_computes_exactly_the_original(tiny_model, tiny_reference):
    ids = tiny_reference["input_ids"]
    up = upgrade_to_selective(tiny_model, ssm_state=16)
    with torch.no_grad():
        ref, out = tiny_model(ids, labels=ids), up(ids, labels=ids)
        chunked = up(ids, labels=ids, return_logits=False)
    # a + 0 * y == a in fp32: bit-for-bit equal, so well within the 1e-5 the issue asks for.
    assert torch.equal(out["logits"], ref["logits"])
    assert out["loss"].item() == ref["loss"].item()
    torch.testing.assert_close(out["logits"], tiny_reference["logits"], **FP32_FORWARD_TOL)  # fp32, any CPU
    assert abs(chunked["loss"].item() - ref["loss"].item()) < TINY_LOSS_PATHS_TOL
    # greedy generation is the original's too (prefill + O(1) steps)
    assert torch.equal(generate(up, tiny_reference["greedy_prompt"], 24), tiny_reference["greedy_output"])


def test_upgrade_is_exact_under_bf16_autocast(tiny_model, tiny_reference):
    ids = tiny_reference["input_ids"]
    up = upgrade_to_selective(tiny_model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = tiny_model(ids)["logits"], up(ids)["logits"]
    assert torch.equal(a, b)


def test_upgrade_adds_only_selective_keys_and_keeps_the_original(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    tiny_model.freeze_dead()
    up = upgrade_to_selective(tiny_model, ssm_state=8)
    assert isinstance(up, SelectiveMambaSWELU) and up.config.architecture == "selective"
    assert up.config.ssm_state == 8 and tiny_model.config.architecture == "original"
    new = set(up.state_dict()) - set(before)
    assert set(before) <= set(up.state_dict())
    per_layer = {"dbc_proj.weight", "delta_proj.weight", "delta_proj.bias", "A_log", "D", "gate"}
    assert new == {f"mamba_stack.layers.{i}.mamba.selective.{k}" for i in range(2) for k in per_layer}
    for k, v in before.items():                       # the input model is untouched, the copy equal
        assert torch.equal(tiny_model.state_dict()[k], v) and torch.equal(up.state_dict()[k], v), k
    # E = 128, N = 8, R = ceil(64 / 16) = 4: dbc 128 x (4 + 16), delta 4 x 128 + 128, A 128 x 8, D, gate
    assert sum(p.numel() for n, p in up.named_parameters() if ".selective." in n) == \
        2 * (128 * 20 + 4 * 128 + 128 + 128 * 8 + 128 + 128)
    # the dead projections stay frozen (flags carried over); the new path is trainable
    assert all(not p.requires_grad for _, p in up.dead_parameters())
    assert all(p.requires_grad for n, p in up.named_parameters() if ".selective." in n)
    assert len(up.dead_parameters()) == 6            # the new dbc/delta projections are not "dead"
    assert up.gates().abs().sum().item() == 0.0
    with pytest.raises(ValueError, match="only an 'original' model"):
        upgrade_to_selective(up)
    with pytest.raises(ValueError, match="ssm_state=0"):
        upgrade_to_selective(tiny_model, ssm_state=0)


def test_gate_gets_a_gradient_at_init_and_opens_the_path(tiny_model, tiny_reference):
    ids = tiny_reference["input_ids"]
    up = upgrade_to_selective(tiny_model).train(False)
    up(ids, labels=ids)["loss"].backward()
    for i, layer in enumerate(up.mamba_stack.layers):
        ssm = layer.mamba.selective
        assert ssm.gate.grad.abs().sum().item() > 1e-6, f"layer {i}: no gradient reaches the gate"
        # behind a closed gate the scan's own parameters see exactly zero gradient ...
        assert ssm.A_log.grad.abs().sum().item() == 0.0
    opt = torch.optim.AdamW([p for p in up.parameters() if p.requires_grad], lr=1e-3)
    before = up(ids, labels=ids)["loss"].item()
    opt.step()
    opt.zero_grad()
    out = up(ids, labels=ids)
    out["loss"].backward()
    # ... and a nonzero one once one step opened the gate (Adam moves each gate channel by ~lr)
    for layer in up.mamba_stack.layers:
        ssm = layer.mamba.selective
        assert ssm.gate.abs().max().item() == pytest.approx(1e-3, rel=1e-2)   # one Adam step of lr 1e-3 (|update| <= lr)
        assert ssm.A_log.grad.abs().sum().item() > 0 and ssm.dbc_proj.weight.grad.abs().sum().item() > 0
    assert out["loss"].item() < before


# --- the scan -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [2 * 8 * 4, 2 * 8 * 4 * 10, 1 << 18])   # 1, 10 and all 37 steps a chunk
def test_chunked_scan_equals_reference_values_and_grads(budget):
    args = _scan_inputs()
    y_ref, h_ref = selective_scan_ref(*args)
    (y_ref.sin().sum() + h_ref.cos().sum()).backward()      # a loss on both outputs
    g_ref = [a.grad.clone() for a in args]
    for a in args:
        a.grad = None
    y, h = selective_scan(*args, budget=budget)
    (y.sin().sum() + h.cos().sum()).backward()
    # float64: chunking only regroups the same products (37 steps): 37 u64 x |values| ~ 4e-15, far inside
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(h, h_ref, atol=1e-12, rtol=1e-10)
    for name, a, g in zip(("x", "delta", "A", "B", "C", "D"), args, g_ref):
        torch.testing.assert_close(a.grad, g, atol=1e-10, rtol=1e-8, msg=name)


def test_chunked_scan_passes_gradcheck():
    args = _scan_inputs(B=1, L=9, E=3, N=2)
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, budget=3 * 2 * 4), args)


def test_scan_fp32_matches_fp64_reference_over_a_long_sequence():
    # 1024 steps with strong decay and tiny steps mixed: no overflow, fp32 error stays small.
    args64 = _scan_inputs(B=1, L=1024, E=16, N=16, seed=3)
    y64, _ = selective_scan_ref(*[a.detach() for a in args64])
    y32, _ = selective_scan(*[a.detach().float() for a in args64])
    assert torch.isfinite(y32).all()
    # fp32 through 1,024 recurrent steps: each step rounds the state (u = 6e-8) and the decay
    # |exp(delta A)| < 1 damps old errors, so they stay ~ steps x u x max|y| = 6e-5 of max|y|; 1e-3 is 16x
    assert (y32.double() - y64).abs().max().item() < 1e-3 * y64.abs().max().item()


def test_chunks_bound_the_state_tensor():
    # one [T, B, E, N] tensor <= budget elements: 124M size, batch 4: 131,072 per step -> T = 2
    assert chunk_length(4, 1024, 2048, 16, budget=1 << 18) == 2
    assert chunk_length(1, 512, 1536, 16, budget=1 << 18) == 10
    assert chunk_length(2, 37, 8, 4, budget=1 << 18) == 37
    assert chunk_length(64, 10, 4096, 64, budget=1) == 1


def test_step_equals_scan():
    args = [a.detach() for a in _scan_inputs()]
    y_ref, h_ref = selective_scan_ref(*args)
    x, delta, A, Bm, Cm, D = args
    h, ys = None, []
    for t in range(x.shape[1]):
        y, h = selective_step(x[:, t], delta[:, t], A, Bm[:, t], Cm[:, t], D, h)
        ys.append(y)
    # float64 (assert_close's fp64 default, rel 1e-7, is 1e9 u64): the same products in another order
    torch.testing.assert_close(torch.stack(ys, 1), y_ref)
    torch.testing.assert_close(h, h_ref)


def test_kernel_request_without_mamba_ssm_is_a_clear_error():
    if HAS_MAMBA_SSM:
        pytest.skip("mamba_ssm is installed here")
    with pytest.raises(RuntimeError, match="mamba_ssm is not installed"):
        selective_scan(*[a.detach().float() for a in _scan_inputs()], use_kernel=True)


@pytest.mark.skipif(not (HAS_MAMBA_SSM and torch.cuda.is_available()), reason="needs CUDA and mamba_ssm")
def test_mamba_ssm_kernel_equals_chunked_scan():  # pragma: no cover - GPU only
    args = [a.detach().float().cuda().requires_grad_() for a in _scan_inputs(L=300, E=64, N=16)]
    y_k, h_k = selective_scan(*args, use_kernel=True)
    y_k.square().sum().backward()
    g_k = [a.grad.clone() for a in args]
    for a in args:
        a.grad = None
    y_c, h_c = selective_scan(*args, use_kernel=False)
    y_c.square().sum().backward()
    torch.testing.assert_close(y_k, y_c, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(h_k, h_c, atol=1e-3, rtol=1e-3)
    for a, g in zip(args, g_k):
        torch.testing.assert_close(a.grad, g, atol=1e-2, rtol=1e-2)


# --- decoding -----------------------------------------------------------------------------------------
def test_step_logits_equal_full_forward_with_open_gates(tiny_model, tiny_reference):
    ids = tiny_reference["input_ids"]                                  # [2, 40]
    up = _open_gates(upgrade_to_selective(tiny_model)).eval()
    with torch.no_grad():
        full = up(ids)["logits"]
        assert (full - tiny_model(ids)["logits"]).abs().max() > 0.1     # the scan now matters
    logits, state = up.prefill([ids[0, :1].tolist(), ids[1, :1].tolist()])
    assert state.ssm[0].shape == (2, 128, 16) and state.conv[0].shape == (2, 128, 3)
    got = [logits]
    for t in range(1, ids.shape[1]):
        got.append(up.step(ids[:, t], state))
    # STEP_TOL: the recurrence and the parallel scan sum in different orders; measured max 0.16 of it
    torch.testing.assert_close(torch.stack(got, 1), full, **STEP_TOL)


def test_prefill_of_different_lengths_equals_stepping(tiny_model, tiny_reference):
    ids = tiny_reference["input_ids"]
    up = _open_gates(upgrade_to_selective(tiny_model)).eval()
    with torch.no_grad():
        full = up(ids)["logits"]
    # right padding of the short row must not leak into its SSM state (delta = 0 on padding)
    logits, state = up.prefill([ids[0, :7].tolist(), ids[1, :30].tolist()])
    torch.testing.assert_close(logits, torch.stack([full[0, 6], full[1, 29]]), **STEP_TOL)
    nxt = up.step(torch.stack([ids[0, 7], ids[1, 30]]), state)
    torch.testing.assert_close(nxt, torch.stack([full[0, 7], full[1, 30]]), **STEP_TOL)


def test_decoding_past_max_seq_len_keeps_the_state_and_clamps_positions(tiny_model, tiny_reference):
    up = _open_gates(upgrade_to_selective(tiny_model)).eval()
    M = up.config.max_seq_len                                          # 128
    ids = torch.cat([tiny_reference["long_prompt"], tiny_reference["input_ids"][:1, :20]], 1)  # 140
    with torch.no_grad():
        f = up.features(ids, positions=up.clamped_positions(ids.shape[1]))
        want = up.lm_head(f).float()[0]                                # [140, V]
    logits, state = up.prefill([ids[0, :100].tolist()])
    got = [logits[0]]
    for t in range(100, ids.shape[1]):
        got.append(up.step(ids[:, t], state)[0])
    torch.testing.assert_close(torch.stack(got), want[99:], **STEP_TOL)
    assert int(state.pos[0]) == 140 > M
    # a prompt longer than max_seq_len is prefilled whole, not cropped
    logits_long, _ = up.prefill([ids[0].tolist()])
    torch.testing.assert_close(logits_long[0], want[-1], **STEP_TOL)
    with pytest.raises(ValueError, match="exceeds maximum 128"):     # training rows stay <= M
        up(ids)


# --- checkpoints and config ------------------------------------------------------------------------
def test_save_load_round_trip(tiny_model, tiny_reference, tmp_path):
    ids = tiny_reference["input_ids"]
    up = _open_gates(upgrade_to_selective(tiny_model)).eval()
    path = save_checkpoint(up, tmp_path / "selective", step=7)
    meta = json.loads((path / "config.json").read_text())
    assert meta["model"]["architecture"] == "selective" and meta["model"]["ssm_state"] == 16
    from safetensors.torch import load_file
    keys = set(load_file(str(path / "model.safetensors")))
    assert "mamba_stack.layers.1.mamba.selective.A_log" in keys
    assert "mamba_stack.layers.1.mamba.x_proj.weight" in keys        # original keys all kept
    loaded, info = load_checkpoint(path)
    assert isinstance(loaded, SelectiveMambaSWELU) and info.step == 7
    with torch.no_grad():
        assert torch.equal(loaded(ids)["logits"], up(ids)["logits"])
    assert generate(loaded, ids[:1, :10], 12).tolist() == generate(up, ids[:1, :10], 12).tolist()


def test_export_to_original_format_is_refused(tiny_model, tmp_path):
    up = upgrade_to_selective(tiny_model)
    with pytest.raises(CheckpointError, match="no selective-scan path"):
        save_checkpoint(up, tmp_path / "final_model.pt", format="original")
    assert not (tmp_path / "final_model.pt").exists()


def test_build_model_makes_a_fresh_selective_model_with_a_closed_gate():
    cfg = MambaSWELUConfig(vocab_size=64, d_model=32, n_layers=2, max_seq_len=16, dense_hidden_dim=48,
                           architecture="selective", ssm_state=4)
    model = build_model(cfg)
    assert isinstance(model, SelectiveMambaSWELU)
    ssm = model.mamba_stack.layers[0].mamba.selective
    assert ssm.gate.abs().sum().item() == 0 and ssm.A_log.shape == (64, 4)
    torch.testing.assert_close(-torch.exp(ssm.A_log[0]), -torch.arange(1.0, 5.0))   # S4D-real init
    dt = torch.nn.functional.softplus(ssm.delta_proj.bias)
    assert 1e-3 * 0.99 <= dt.min().item() and dt.max().item() <= 0.1 * 1.01     # Mamba's dt range
    with pytest.raises(ValueError, match="needs 'selective'"):
        SelectiveMambaSWELU(MambaSWELUConfig(vocab_size=64, d_model=32, n_layers=1, max_seq_len=16))


def test_optimizer_groups_for_an_upgraded_model(tiny_model):
    """The new parameters get lr x new_lr_mult; A_log/D/gate are never decayed; dead ones get no state."""
    from mambaft.model import upgrade_to_selective
    from mambaft.train.optim import build_optimizer
    from mambaft.train.step import optimizer_step
    sel = upgrade_to_selective(tiny_model)
    sel.freeze_dead()
    opt = build_optimizer(sel, lr=1e-3, weight_decay=0.1, new_lr_mult=10.0)
    new = {id(p) for n, p in sel.named_parameters() if n in set(sel.new_parameter_names())}
    for g in opt.param_groups:
        assert g["lr_mult"] == (10.0 if id(g["params"][0]) in new else 1.0)
        assert all((id(p) in new) == (g["lr_mult"] == 10.0) for p in g["params"])
        if any(getattr(p, "_no_weight_decay", False) or p.dim() < 2 for p in g["params"]):
            assert g["weight_decay"] == 0.0
    counted = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert counted == sum(p.numel() for p in sel.parameters() if p.requires_grad)
    ids = torch.randint(0, 512, (1, 12))
    sel(ids, labels=ids)["loss"].backward()
    optimizer_step(sel, opt, lr=2e-4, grad_clip=1.0)
    assert sorted({g["lr"] for g in opt.param_groups}) == [2e-4, 2e-3]


def test_the_loop_and_the_lr_sweep_build_the_same_groups_from_the_config(tiny_model):
    """run_optimizer (the loop's and lr_sweep's one builder) carries cfg.selective_lr_mult: the sweep
    once built its optimizer without it and so measured other lrs than the run would use."""
    import inspect

    from mambaft.config import make_config
    from mambaft.train import loop, sweep
    from mambaft.train.optim import run_optimizer
    sel = upgrade_to_selective(tiny_model)
    cfg = make_config("smoke", architecture="selective", selective_lr_mult=7.0, lr=1e-3)
    assert sorted({g["lr_mult"] for g in run_optimizer(sel, cfg).param_groups}) == [1.0, 7.0]
    assert sorted({g["lr"] for g in run_optimizer(sel, cfg, lr=2e-4).param_groups}) == [2e-4, 1.4e-3]
    for mod in (loop, sweep):
        assert "run_optimizer(" in inspect.getsource(mod) and "build_optimizer(" not in inspect.getsource(mod)
