"""The speed kernels compute what the plain ops compute: SWELU (custom autograd Function), the causal
depthwise conv, and the chunked fused cross-entropy. Values and gradients, fp32 and bf16 autocast."""
import pytest
import torch
import torch.nn.functional as F

from mambaft.model.kernels.conv import causal_depthwise_conv
from mambaft.model.kernels.loss import linear_cross_entropy
from mambaft.model.kernels.swelu import SWELU, swelu, swelu_gate, swelu_reference
from tests.numerics import assert_within_dot_bound



pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.numerics]   # fp32 results on this CPU's kernels: `make test` reruns them on the lowest ISA

def _grads(fn, z, k, g):
    z = z.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    out = fn(z, k)
    out.backward(g)
    return out.detach(), z.grad, k.grad


@pytest.mark.parametrize("k_value", [0.42, 1.0, 1.87, -0.6])
def test_swelu_function_equals_reference_fp32(k_value):
    z = torch.randn(3, 40, 64) * 2.5
    z[0, 0, :4] = 0.0                        # exact zeros: value 0, gradient 0 (as autograd gives)
    k = torch.tensor(k_value)
    g = torch.randn(3, 40, 64)
    out, gz, gk = _grads(swelu, z, k, g)
    ref, rz, rk = _grads(swelu_reference, z, k, g)
    assert torch.equal(out, ref)             # same ops in the same order: bit-identical forward
    # Backward recomputes pow/exp in place and in another order than autograd's chain: elementwise, a few
    # ulp (rtol 1e-5 = 170 u). dk is one sum of 7,680 terms in two orders (worst case 2 x 7,679 u = 9.2e-4
    # of sum|terms|); atol 1e-4 on top of rtol 1e-5 passes on AVX-512, AVX2 and ATen DEFAULT kernels.
    torch.testing.assert_close(gz, rz, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gk, rk, rtol=1e-5, atol=1e-4)
    assert gk.shape == k.shape and gk.abs() > 1e-3    # k really receives a gradient
    assert torch.all(gz[0, 0, :4] == 0)


def test_swelu_function_gradcheck_fp64():
    z = (torch.randn(5, 7, dtype=torch.float64) * 2).requires_grad_()
    k = torch.tensor(0.55, dtype=torch.float64, requires_grad=True)
    # float64 finite differences with eps 1e-6: truncation error ~eps x |f''| (~1e-6 here), rounding
    # ~u64 / eps = 1e-10; gradcheck's atol 1e-6 matches the truncation term
    assert torch.autograd.gradcheck(swelu, (z, k), eps=1e-6, atol=1e-6)


def test_swelu_function_under_bf16_autocast_matches_reference():
    x = torch.randn(4, 32, 48)
    w = torch.randn(48, 48) / 7
    k = torch.tensor(0.5)
    g = torch.randn(4, 32, 48)

    def run(fn):
        xx = x.clone().requires_grad_()
        kk = k.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = xx @ w                        # bf16 under autocast
            out = fn(z, kk)
        out.backward(g)
        return z.dtype, out, xx.grad, kk.grad

    zd, out, gx, gk = run(swelu)
    zr, ref, rx, rk = run(swelu_reference)
    assert zd == torch.bfloat16 and out.dtype == torch.float32   # computed in fp32 from bf16 input
    assert torch.equal(out, ref)
    # bf16 gradient into the matmul: 8 significant bits, u = 2^-9 = 2e-3, over a 48-term sum: 1e-2.
    # dk is fp32 on both sides (as above).
    torch.testing.assert_close(gx, rx, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gk, rk, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("autocast", [False, True])
def test_swelu_gate_equals_swelu_times_sigmoid(autocast):
    """The mixer's fused gate: values bit-identical, gradients for x, k and z as plain autograd's."""
    u = torch.randn(2, 24, 32)
    w = torch.randn(32, 64) / 5
    k = torch.tensor(0.61)
    g = torch.randn(2, 24, 32)

    def run(fused):
        uu, kk = u.clone().requires_grad_(), k.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            x, z = (uu @ w).chunk(2, dim=-1)               # strided views, bf16 under autocast
            out = swelu_gate(x, kk, z) if fused else swelu_reference(x, kk) * torch.sigmoid(z)
        out.backward(g)
        return out.detach(), uu.grad, kk.grad

    out, gu, gk = run(True)
    ref, ru, rk = run(False)
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    # autocast: the gradient into u goes back through a bf16 matmul (u = 2e-3 per operand, 64-term sums);
    # fp32: elementwise recomputation only, a few ulp (as test_swelu_function_equals_reference_fp32)
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gu, ru, **tol)             # through both x and z
    torch.testing.assert_close(gk, rk, rtol=1e-4, atol=1e-4)


def test_swelu_gate_gradcheck_fp64():
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    z = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    k = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(swelu_gate, (x, k, z), eps=1e-6, atol=1e-6)   # as for swelu above


def test_swelu_module_lam_variant_still_uses_the_reference_path():
    m = SWELU(k_init=0.7, lam_formula="outer")
    with torch.no_grad():
        m.lam.fill_(0.5)
    z = torch.randn(10)
    # the same elementwise fp32 ops: assert_close's fp32 default (rel 1.3e-6 = 22 u, abs 1e-5) is ample
    torch.testing.assert_close(m(z), 0.5 * swelu_reference(z, m.k))
    gate_in = torch.randn(10)
    torch.testing.assert_close(m.gate(z, gate_in), 0.5 * swelu_reference(z, m.k) * torch.sigmoid(gate_in))


def _conv_reference(x, weight, bias):
    conv = torch.nn.Conv1d(weight.shape[0], weight.shape[0], weight.shape[1], groups=weight.shape[0],
                           padding=weight.shape[1] - 1, bias=True)
    conv.weight = torch.nn.Parameter(weight.unsqueeze(1))
    conv.bias = torch.nn.Parameter(bias)
    L = x.shape[1]
    return conv(x.transpose(1, 2))[..., :L].transpose(1, 2), conv


def _conv_term_scales(full, weight, bias, g, E):
    """The reference conv and its gradients on |inputs| in float64: per output, the sum of |terms| of
    the dot product that computes it (the scale of tests.numerics.assert_within_dot_bound)."""
    xa = full.abs().double().requires_grad_()
    ref, conv = _conv_reference(xa[..., :E], weight.abs().double(), bias.abs().double())
    ref.backward(g.abs().double())
    return ref.detach(), xa.grad[..., :E], conv.weight.grad.squeeze(1), conv.bias.grad


@pytest.mark.numerics
@pytest.mark.parametrize("L", [1, 3, 37])
def test_causal_conv_equals_conv1d_in_values_and_gradients(L):
    B, E, K = 2, 24, 4
    full = torch.randn(B, L, 2 * E)
    weight, bias = torch.randn(E, K), torch.randn(E)
    g = torch.randn(B, L, E)
    x1 = full.clone().requires_grad_()
    ref, conv = _conv_reference(x1[..., :E], weight.clone(), bias.clone())   # a strided view
    ref.backward(g)
    x2 = full.clone().requires_grad_()
    w2, b2 = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    out = causal_depthwise_conv(x2[..., :E], w2, b2)
    out.backward(g)
    # Bit-identical on AVX-512 (oneDNN's order), not on every CPU (ATen's DEFAULT conv sums in another
    # order): both are dot products, so each value is within gamma_n x sum|terms| of exact, n = the
    # number of terms: K taps + bias for the output, K for dx, B x L positions for dw and db.
    s_out, s_x, s_w, s_b = _conv_term_scales(full, weight, bias, g, E)
    assert_within_dot_bound(out, ref, K + 1, s_out)
    assert_within_dot_bound(x2.grad[..., :E], x1.grad[..., :E], K, s_x)
    assert torch.all(x2.grad[..., E:] == 0) and torch.all(x1.grad[..., E:] == 0)   # the unused half
    assert_within_dot_bound(w2.grad, conv.weight.grad.squeeze(1), B * L, s_w)
    assert_within_dot_bound(b2.grad, conv.bias.grad, B * L, s_b)


def test_causal_conv_is_causal_and_accumulates_bf16_input_in_fp32():
    E = 8
    x = torch.randn(1, 10, E)
    w, b = torch.randn(E, 4), torch.randn(E)
    y = causal_depthwise_conv(x, w, b)
    x2 = x.clone()
    x2[:, 6:] += 5.0                          # change the future
    assert torch.equal(causal_depthwise_conv(x2, w, b)[:, :6], y[:, :6])
    xb = x.bfloat16().requires_grad_()
    yb = causal_depthwise_conv(xb, w, b)
    assert yb.dtype == torch.float32                         # no rounding before SWELU_s
    assert torch.equal(yb, causal_depthwise_conv(xb.detach().float(), w, b))
    yb.sum().backward()
    assert xb.grad.dtype == torch.bfloat16                   # the gradient goes back in x's dtype


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_linear_cross_entropy_equals_plain_cross_entropy(reduction):
    B, L, D, V = 2, 19, 16, 97
    h = torch.randn(B, L, D)
    w = torch.randn(V, D) / 4
    labels = torch.randint(0, V, (B, L))
    labels[0, :5] = -100                      # a masked prompt
    labels[1, 11:] = -100                     # padding
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss, n = linear_cross_entropy(h1, w1, labels, chunk=7, reduction=reduction)  # chunks cross rows
    loss.backward()
    h2, w2 = h.clone().requires_grad_(), w.clone().requires_grad_()
    logits = h2 @ w2.t()
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100,
                          reduction=reduction)
    ref.backward()
    assert n == int((labels[:, 1:] != -100).sum())
    # Both sides: the same 16-term logits (any kernel: 2 gamma_16 = 1.9e-6 of sum|h w|, ~1), log-softmax
    # over 97 (tests.numerics.log_softmax_abs_error: 5.8e-6 nats), then a sum over <= 36 tokens; the
    # loss (mean ~5, sum ~170) agrees within atol 1e-5 + rtol 1e-6. Gradients are 16- or 36-term sums
    # of softmax-weighted values (|.| < 1): 2 x 36 u = 4.3e-6 relative, inside rtol 1e-5 + atol 1e-6.
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-5, atol=1e-6)


def test_linear_cross_entropy_under_bf16_autocast_is_close_to_fp32():
    B, L, D, V = 2, 33, 32, 301
    h = torch.randn(B, L, D)
    w = torch.randn(V, D) / 6
    labels = torch.randint(0, V, (B, L))
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = linear_cross_entropy(h1, w1, labels, chunk=16)
    loss.backward()
    h2, w2 = h.clone().requires_grad_(), w.clone().requires_grad_()
    ref = F.cross_entropy((h2 @ w2.t())[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
    ref.backward()
    assert loss.dtype == torch.float32 and w1.grad.dtype == torch.float32
    # bf16 logits (u = 2e-3 relative per operand, 32-term dots of |.| ~ 1) move a loss of ~6 by ~1e-2
    assert abs(loss.item() - ref.item()) < 2e-2
    assert torch.nn.functional.cosine_similarity(w1.grad.flatten(), w2.grad.flatten(), dim=0) > 0.999
    assert torch.nn.functional.cosine_similarity(h1.grad.flatten(), h2.grad.flatten(), dim=0) > 0.999


def test_conv_of_one_token_leaves_its_bias_alone():
    """[1, 1, E] input (a one-token prompt at batch 1): bias.expand(...).contiguous() is the bias
    itself, and the taps used to be added into it in place (the weights changed under no_grad)."""
    w, bias = torch.randn(3, 4), torch.randn(3)
    before = bias.clone()
    with torch.no_grad():
        y = causal_depthwise_conv(torch.randn(1, 1, 3), w, bias)
    assert torch.equal(bias, before)
    assert not torch.equal(y[0, 0], bias)


# --- the one switch: the whole model on the fused kernels and on their plain-PyTorch twins -----------
def _model_loss_and_grads(model, ids, labels, positions=None):
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=labels, return_logits=False, loss_reduction="sum", positions=positions)
    out["loss"].backward()
    with torch.no_grad():
        logits = model(ids, positions=positions)["logits"]
    return logits, out["loss"].detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                          if p.grad is not None}


@pytest.mark.parametrize("packed", [False, True])
def test_the_reference_switch_gives_the_fused_models_logits_loss_and_gradients(packed, monkeypatch):
    """MAMBAFT_KERNELS=reference runs nn.Conv1d's conv, the user's SWELU op sequence, the plain gate and
    the full-logits F.cross_entropy; a model gives the same numbers both ways."""
    from mambaft.model.kernels.switch import ENV, fused, reference_kernels
    from tests.conftest import make_small_gpt2_model
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50257, (2, 30), generator=g)
    labels = ids.clone()
    labels[:, :6] = -100
    positions = None
    if packed:   # two conversations in row 0 (positions restart at 10), one in row 1
        positions = torch.cat([torch.cat([torch.arange(10), torch.arange(20)])[None], torch.arange(30)[None]])
        labels[0, 10] = -100
    model = make_small_gpt2_model(seed=5)
    assert fused()
    fast = _model_loss_and_grads(model, ids, labels, positions)
    with reference_kernels():
        assert not fused()
        ref = _model_loss_and_grads(model, ids, labels, positions)
    monkeypatch.setenv(ENV, "reference")
    assert not fused()
    monkeypatch.setenv(ENV, "fast-please")
    with pytest.raises(ValueError, match="MAMBAFT_KERNELS='fast-please': expected one of fused, reference"):
        fused()
    monkeypatch.delenv(ENV)
    # fp32 throughout. Measured here (AVX-512, one thread): logits and the summed loss (519.6 nats) equal
    # to the bit, gradients within 4.5e-8 absolute. The room is for other kernels: the loss is a
    # log-sum-exp by hand against F.cross_entropy's (a few ulp of ~10 nats per token, 48 tokens: 1e-5
    # relative is ~20x that), and the backward passes run other reductions (conv1d's weight gradient,
    # autograd's SWELU chain), whose differences sit far under atol 1e-6 for gradients of ~1e-3.
    torch.testing.assert_close(ref[0], fast[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref[1], fast[1], rtol=1e-5, atol=1e-5)
    assert ref[2].keys() == fast[2].keys()
    for name in fast[2]:
        torch.testing.assert_close(ref[2][name], fast[2][name], rtol=1e-4, atol=1e-6, msg=name)
