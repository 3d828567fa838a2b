"""The exported model behaves like a transformers causal LM: padding and packing honoured, bf16/fp16
weights, the Trainer's summed loss, beams refused, the anti-loop controls on the reply only, and a
one-token prompt that leaves the weights alone. Each test failed on the hand-kept copy of the model
that the export shipped before (see issue 25); the tiny fixture model keeps them fast."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from mambaft.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from mambaft.course import DEMO_BASE  # noqa: E402
from mambaft.generate import generate  # noqa: E402
from mambaft.template import DEFAULT_TEMPLATE  # noqa: E402

hf_logging.set_verbosity_error()

# Rows of one padded batch against each row alone: the same ops on other matrix shapes, whose GEMM
# blocking may sum the d_model = 64 products in another order: ~64 x 2^-24 relative per matmul, through
# 2 blocks and the head into logits of |x| <= 20: ~1e-5; 1e-4 leaves a 10x margin.
BATCH_ATOL = 1e-4


def _hf(path, **kw):
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, **kw).eval()


from tests.test_hf_export import tiny_original, tiny_selective  # noqa: E402,F401  (the shared exports)


@pytest.fixture(scope="module")
def tiny(tiny_original):
    return tiny_original


def _rows(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g) for n in lengths]


def _left_pad(rows, pad=0):
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, L - len(r):], mask[b, L - len(r):] = r, 1
    return ids, mask


# --- a one-token prompt ----------------------------------------------------------------------------
def test_one_token_prompt_leaves_the_conv_bias_alone(tiny):
    """Batch 1 x 1 token: the copy's conv started from `bias.expand(1, 1, E).contiguous()`, which is the
    bias itself, and added the taps into it: every block's conv bias changed for good."""
    model, path = tiny
    hf = _hf(path)
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    with torch.no_grad():
        hf(torch.tensor([[7]]))
    hf.generate(torch.tensor([[7]]), do_sample=False, max_new_tokens=3)
    assert all(torch.equal(v, hf.state_dict()[k]) for k, v in before.items())
    out = hf(torch.tensor([[7]]), labels=torch.tensor([[7, 8]])[:, :1])   # with gradients: raised before
    out.logits.sum().backward()
    with torch.no_grad():
        # One row: the matmuls are GEMVs, whose vector path depends on the weights' memory alignment
        # (transformers maps the file, mambaft copies it): measured 3.3e-6 at |logit| ~ 7, and 0.0 for
        # 3 tokens; 1e-5 allows that rounding, a changed bias moves logits by ~1 (measured 6.9).
        torch.testing.assert_close(out.logits, model(torch.tensor([[7]]))["logits"], atol=1e-5, rtol=0)


# --- attention_mask and position_ids ----------------------------------------------------------------
@pytest.mark.numerics
@pytest.mark.parametrize("which", ["tiny", "tiny_selective"])
def test_left_padded_forward_gives_each_rows_own_logits(which, request):
    model, path = request.getfixturevalue(which)
    hf = _hf(path)
    rows = _rows(model.config.vocab_size, (40, 13, 1))
    ids, mask = _left_pad(rows)
    with torch.no_grad():
        got = hf(ids, attention_mask=mask).logits                          # [3, 40, V]
        for b, r in enumerate(rows):
            alone = model(r[None])["logits"][0]                           # [n, V]
            torch.testing.assert_close(got[b, -len(r):], alone, atol=BATCH_ATOL, rtol=0)


@pytest.mark.numerics
def test_packed_position_ids_restart_the_conv_window(tiny):
    model, path = tiny
    hf = _hf(path)
    a, b = _rows(model.config.vocab_size, (25, 30), seed=3)
    ids = torch.cat([a, b])[None]
    pos = torch.cat([torch.arange(25), torch.arange(30)])[None]
    with torch.no_grad():
        got = hf(ids, position_ids=pos).logits[0]
        torch.testing.assert_close(got[:25], model(a[None])["logits"][0], atol=BATCH_ATOL, rtol=0)
        torch.testing.assert_close(got[25:], model(b[None])["logits"][0], atol=BATCH_ATOL, rtol=0)


def test_a_mask_with_a_hole_is_refused(tiny):
    _, path = tiny
    with pytest.raises(ValueError, match="hole"):
        _hf(path)(torch.ones(1, 5, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 0, 1, 1]]))


@pytest.mark.parametrize("use_cache", [True, False])
def test_left_padded_generate_equals_mambaft_with_and_without_cache(tiny, use_cache):
    model, path = tiny
    hf = _hf(path)
    rows = _rows(model.config.vocab_size, (12, 5, 1), seed=5)
    ids, mask = _left_pad(rows)
    ours = generate(model, [r.tolist() for r in rows], max_new_tokens=15)
    out = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=15, use_cache=use_cache,
                      pad_token_id=0)
    assert [out[b, 12:].tolist() for b in range(3)] == [o[len(r):] for o, r in zip(ours, rows)]


# --- dtypes -----------------------------------------------------------------------------------------
@pytest.mark.numerics
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_forward_and_generate(tiny, dtype):
    model, path = tiny
    hf = _hf(path, dtype=dtype)
    assert hf.get_output_embeddings().weight.dtype == dtype
    ids = _rows(model.config.vocab_size, (30,), seed=7)[0][None]
    with torch.no_grad():
        got = hf(ids).logits
    # bf16 keeps 8 bits of mantissa (fp16: 11): each weight and activation rounded by up to 2^-9
    # relative, over 2 blocks and the head; logits here are |x| <= ~10: 0.5 bounds that drift
    # (measured max 0.12 for bf16) while a wrong cast (garbage or a dtype error) is far off.
    torch.testing.assert_close(got, model(ids)["logits"], atol=0.5, rtol=0)
    out = hf.generate(ids, do_sample=False, max_new_tokens=5)
    assert out.shape == (1, 35)


# --- the Trainer's loss ------------------------------------------------------------------------------
def test_num_items_in_batch_gives_the_summed_loss(tiny):
    model, path = tiny
    hf = _hf(path)
    ids = _rows(model.config.vocab_size, (20,), seed=9)[0][None]
    labels = ids.clone()
    labels[:, :8] = -100
    with torch.no_grad():
        mean = hf(ids, labels=labels).loss
        summed = hf(ids, labels=labels, num_items_in_batch=torch.tensor(100)).loss
    n = int((labels[:, 1:] != -100).sum())                                   # 12 trained tokens
    torch.testing.assert_close(summed, mean * n / 100, atol=1e-6, rtol=1e-6)  # fp32 rounding of a sum
    with pytest.raises(TypeError, match="unexpected keyword"):
        hf(ids, not_an_argument=1)


# --- generate's options -------------------------------------------------------------------------------
def test_beam_search_is_refused(tiny):
    _, path = tiny
    with pytest.raises(ValueError, match="beam search"):
        _hf(path).generate(torch.tensor([[1, 2, 3]]), num_beams=2, do_sample=False, max_new_tokens=4)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    model, info = load_checkpoint(DEMO_BASE)
    out = save_checkpoint(model, tmp_path_factory.mktemp("hf") / "demo", "hf", template=info.template,
                          tokenizer=info.tokenizer)
    return model, info, out


@pytest.mark.numerics
def test_no_repeat_ngram_looks_at_the_reply_only(demo):
    """A second chat turn with n = 2: the prompt holds (".", end) and ("\\n", "User") from the first
    turn; banned over the whole input, the reply could not end where mambaft's does."""
    model, info, path = demo
    hf = _hf(path)
    conv = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": "Tell me about London."}]
    prompt = DEFAULT_TEMPLATE.prompt_ids(conv, info.tokenizer)
    ours = generate(model, [prompt], max_new_tokens=40, no_repeat_ngram_size=2, stop_token_ids=[50256])[0]
    theirs = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=40, no_repeat_ngram_size=2)
    assert theirs[0].tolist() == ours
