"""Rendering, loss masks (token by token), truncation, padding and packing of mambaft.data.render."""
from __future__ import annotations

import pytest
import torch

from mambaft.data.render import longest_reply, pack_text, render_batch, render_conversations
from mambaft.template import DEFAULT_TEMPLATE, IGNORE_INDEX
from mambaft.tokenizer import load_tokenizer
from mambaft.train.batches import collate

EOT = 50256


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def test_single_turn_mask_token_by_token(tok):
    """'User: What is 2+2?\\nAssistant: 4<eot>\\n': only ' 4' and the end token are trained."""
    r = render_conversations([[U("What is 2+2?"), A("4")]], tok)[0]
    prompt = tok.encode("User: What is 2+2?\n") + tok.encode("Assistant:")
    answer = tok.encode(" 4")
    assert r.input_ids == prompt + answer + [EOT] + tok.encode("\n")
    expected = [IGNORE_INDEX] * len(prompt) + answer + [EOT] + [IGNORE_INDEX]
    assert r.labels == expected
    assert tok.decode(r.input_ids) == "User: What is 2+2?\nAssistant: 4<|endoftext|>\n"
    # the end token is a real trained label, and it is the only 50256 in the row
    assert r.labels.count(EOT) == 1 and r.input_ids.count(EOT) == 1


def test_multi_turn_masks_all_and_last(tok):
    conv = [{"role": "system", "content": "Be brief."}, U("Hi"), A("Hello!"), U("Capital of Italy?"), A("Rome.")]
    seg = {k: tok.encode(k) for k in ("System: Be brief.\n", "User: Hi\n", "Assistant:", " Hello!", "\n",
                                      "User: Capital of Italy?\n", " Rome.")}
    M = lambda key: [IGNORE_INDEX] * len(seg[key])  # noqa: E731
    ids = (seg["System: Be brief.\n"] + seg["User: Hi\n"] + seg["Assistant:"] + seg[" Hello!"] + [EOT] + seg["\n"]
           + seg["User: Capital of Italy?\n"] + seg["Assistant:"] + seg[" Rome."] + [EOT] + seg["\n"])
    all_labels = (M("System: Be brief.\n") + M("User: Hi\n") + M("Assistant:") + seg[" Hello!"] + [EOT] + M("\n")
                  + M("User: Capital of Italy?\n") + M("Assistant:") + seg[" Rome."] + [EOT] + M("\n"))
    last_labels = (M("System: Be brief.\n") + M("User: Hi\n") + M("Assistant:") + M(" Hello!") + [IGNORE_INDEX]
                   + M("\n") + M("User: Capital of Italy?\n") + M("Assistant:") + seg[" Rome."] + [EOT] + M("\n"))
    r_all = render_conversations([conv], tok, "all_assistant")[0]
    r_last = render_conversations([conv], tok, "last_assistant")[0]
    assert r_all.input_ids == ids and r_last.input_ids == ids
    assert r_all.labels == all_labels
    assert r_last.labels == last_labels
    # batched rendering equals the template's own render, for both options
    for train_on, r in (("all_assistant", r_all), ("last_assistant", r_last)):
        assert (r.input_ids, r.labels) == DEFAULT_TEMPLATE.render(conv, tok, train_on)


def test_batch_equals_template_render(tok):
    convs = [[U("a"), A("b")], [U("Tell me a joke about cats."), A("Why did the cat sit on the computer? "
                                                                   "To keep an eye on the mouse."), U("Another"),
                                A("No.")], [U("<|endoftext|> typed by a user"), A("ok")]]
    for conv, r in zip(convs, render_conversations(convs, tok)):
        assert (r.input_ids, r.labels) == DEFAULT_TEMPLATE.render(conv, tok)
        assert r.dropped_messages == 0 and not r.too_long
    # text "<|endoftext|>" typed by a user never becomes the end token: one 50256 per answer only
    assert render_conversations([convs[2]], tok)[0].input_ids.count(EOT) == 1


def _conv3():
    return [{"role": "system", "content": "Be brief."}, U("Hi there"), A("Hello!"), U("2+2?"), A("4")]


def test_truncation_drops_whole_oldest_turns(tok):
    conv = _conv3()
    full = len(DEFAULT_TEMPLATE.render(conv, tok)[0])
    kept_sys = [conv[0], conv[3], conv[4]]
    n_sys = len(DEFAULT_TEMPLATE.render(kept_sys, tok)[0])
    n_last = len(DEFAULT_TEMPLATE.render(conv[3:], tok)[0])
    assert n_last < n_sys < full
    # fits exactly: untouched
    r = render_conversations([conv], tok, max_seq_len=full)[0]
    assert r.dropped_messages == 0 and len(r.input_ids) == full
    # one token short: the oldest user+assistant pair goes, the system message stays
    r = render_conversations([conv], tok, max_seq_len=full - 1)[0]
    assert (r.input_ids, r.labels) == DEFAULT_TEMPLATE.render(kept_sys, tok)
    assert r.dropped_messages == 2 and not r.too_long
    # the system message no longer fits beside the last exchange: it goes too
    r = render_conversations([conv], tok, max_seq_len=n_sys - 1)[0]
    assert (r.input_ids, r.labels) == DEFAULT_TEMPLATE.render(conv[3:], tok)
    assert r.dropped_messages == 3
    # the last exchange alone is too long: never cut into the final answer, the row is flagged
    r = render_conversations([conv], tok, max_seq_len=n_last - 1)[0]
    assert r.too_long
    # the final answer and its end token are always complete when kept
    for L in range(n_last, full + 1):
        r = render_conversations([conv], tok, max_seq_len=L)[0]
        assert len(r.input_ids) <= L
        trained = [t for t, lab in zip(r.input_ids, r.labels) if lab != IGNORE_INDEX]
        assert trained[-len(tok.encode(" 4")) - 1:] == tok.encode(" 4") + [EOT]


def test_truncation_never_starts_on_an_assistant_turn(tok):
    long_answer = "word " * 50
    conv = [U("q1"), A(long_answer), U("q2"), A("a2")]
    n_last = len(DEFAULT_TEMPLATE.render(conv[2:], tok)[0])
    r = render_conversations([conv], tok, max_seq_len=n_last + 5)[0]
    assert r.dropped_messages == 2
    assert tok.decode(r.input_ids).startswith("User: q2\n")


def test_render_batch_columns(tok):
    out = render_batch({"messages": [[U("Hi"), A("Hello")], [U("x" * 3000), A("y")]]}, tok, "all_assistant", 64)
    assert out["n_tokens"][0] == len(out["input_ids"][0])
    assert out["n_trained"][0] == len(tok.encode(" Hello")) + 1
    assert out["too_long"] == [False, True]
    assert len(out["minhash"][0]) == 32


def test_longest_reply_counts_the_longest_trained_reply_without_its_end_marker(tok):
    convs = [[U("Hi"), A("4"), U("And?"), A("Paris is the capital of France.")]]
    long = len(tok.encode(" Paris is the capital of France."))      # the answer lead " " joins its first word
    assert longest_reply(render_conversations(convs, tok)[0].labels) == long
    assert longest_reply(render_conversations([[U("Hi"), A("4")]], tok)[0].labels) == 1
    assert render_batch({"messages": convs}, tok, "all_assistant", 256)["longest_reply"] == [long]
    assert longest_reply([IGNORE_INDEX] * 3) == 0


def test_padding_is_masked_by_length_not_by_id(tok):
    """pad = eos: the padded positions are masked, the real trained end tokens are not."""
    a = render_conversations([[U("Hi"), A("Hello")]], tok)[0]
    b = render_conversations([[U("Tell me more please"), A("Sure, here is more.")]], tok)[0]
    rows = [{"input_ids": a.input_ids, "labels": a.labels}, {"input_ids": b.input_ids, "labels": b.labels}]
    batch = collate(rows, pad_id=EOT, pad_to=40)
    ids, labels = batch["input_ids"], batch["labels"]
    mask = (torch.arange(40) < batch["lengths"][:, None]).long()   # what a model's attention mask would be
    assert ids.shape == labels.shape == mask.shape == (2, 40)
    for i, r in enumerate((a, b)):
        n = len(r.input_ids)
        assert ids[i, :n].tolist() == r.input_ids and labels[i, :n].tolist() == r.labels
        assert ids[i, n:].tolist() == [EOT] * (40 - n)          # padded with the end token ...
        assert labels[i, n:].tolist() == [IGNORE_INDEX] * (40 - n)   # ... yet never trained there
        assert mask[i].tolist() == [1] * n + [0] * (40 - n)
        assert labels[i, :n].tolist().count(EOT) == 1                # the real end token stays trained


def test_pack_text_rows(tok):
    docs = [{"id": f"d{i}", "text": "The quick brown fox jumps over the lazy dog. " * 5, "lang": "en"} for i in range(4)]
    rows = pack_text(docs, tok, 32, "text")
    per_doc = len(tok.encode(docs[0]["text"])) + 1
    assert sum(r["n_tokens"] for r in rows) == 4 * per_doc
    assert all(r["n_tokens"] == 32 for r in rows[:-1]) and 0 < rows[-1]["n_tokens"] <= 32
    assert all(r["labels"] == r["input_ids"] and r["messages"] == [] and r["kind"] == "text" for r in rows)
    assert sum(r["input_ids"].count(EOT) for r in rows) == 4   # one end token between documents


def _brute_force(conv, tok, max_len):
    """The reference: the earliest user turn from which the template's full rendering fits."""
    system = conv[:1] if conv[0]["role"] == "system" else []
    body = conv[len(system):]
    for sys_part in (system, []):
        for k in range(len(body)):
            if body[k]["role"] != "user":
                continue
            ids, labels = DEFAULT_TEMPLATE.render(sys_part + body[k:], tok)
            if len(ids) <= max_len:
                return ids, labels
    return None


@pytest.mark.parametrize("content", ["a sentence of ordinary English words, repeated for length. " * 4,
                                     "=" * 2000])   # ~32 characters per token: forces the second pass
@pytest.mark.slow   # brute force over every cut
def test_long_conversations_match_brute_force(tok, content):
    conv = [{"role": "system", "content": "Be helpful."}]
    for i in range(16):
        conv += [U(f"question {i}: {content}"), A(f"answer {i}: {content}")]
    for max_len in (128, 1024):
        r = render_conversations([conv], tok, max_seq_len=max_len)[0]
        expected = _brute_force(conv, tok, max_len)
        if expected is None:
            assert r.too_long
        else:
            assert not r.too_long and (r.input_ids, r.labels) == expected
            assert (r.input_ids, r.labels) == DEFAULT_TEMPLATE.render([conv[i] for i in r.kept], tok)
