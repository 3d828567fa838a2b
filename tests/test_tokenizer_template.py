"""The offline GPT-2 tokenizer and the one chat template."""
from mambaft.template import DEFAULT_TEMPLATE, IGNORE_INDEX, ChatTemplate, show_trained
from mambaft.tokenizer import load_tokenizer


def test_gpt2_offline():
    tok = load_tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.eos_id == 50256 and tok.vocab_size == 50257
    assert tok.decode(tok.encode(" café, naïve — ok")) == " café, naïve — ok"


def test_end_token_text_in_user_content_is_not_the_end_token():
    tok = load_tokenizer()
    assert 50256 not in tok.encode("say <|endoftext|> now")


def test_tokenizer_json_round_trip(tmp_path):
    tok = load_tokenizer()
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.encode("The capital of France is Paris.") == tok.encode("The capital of France is Paris.")


def test_render_masks_exactly_answers_and_end_tokens():
    tok = load_tokenizer()
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}]
    ids, labels = DEFAULT_TEMPLATE.render(msgs, tok)
    assert tok.decode(ids) == ("System: Be brief.\nUser: Capital of France?\nAssistant: Paris.<|endoftext|>\n"
                               "User: 2+2?\nAssistant: 4<|endoftext|>\n")
    trained = [t for t, l in zip(ids, labels) if l != IGNORE_INDEX]
    assert trained == tok.encode(" Paris.") + [50256] + tok.encode(" 4") + [50256]
    assert all(l in (IGNORE_INDEX, t) for t, l in zip(ids, labels))
    assert show_trained(ids, labels, tok).count("[") == 2
    # last-turn-only option
    _, last = DEFAULT_TEMPLATE.render(msgs, tok, train_on="last_assistant")
    assert [t for t, l in zip(ids, last) if l != IGNORE_INDEX] == tok.encode(" 4") + [50256]


def test_prompt_matches_training_prefix():
    """The chat prompt is token-for-token the prefix the model was trained on."""
    tok = load_tokenizer()
    hist = [{"role": "user", "content": "Capital of France?"}]
    prompt = DEFAULT_TEMPLATE.prompt_ids(hist, tok)
    ids, _ = DEFAULT_TEMPLATE.render(hist + [{"role": "assistant", "content": "Paris."}], tok)
    assert ids[:len(prompt)] == prompt
    assert DEFAULT_TEMPLATE.prompt_text(hist) == "User: Capital of France?\nAssistant:"


def test_stop_strings_and_reply_cleaning():
    t = DEFAULT_TEMPLATE
    assert t.stop_strings == ("\nUser:",)
    assert t.clean_reply(" Paris.\nUser: and Italy?") == "Paris."
    assert t.clean_reply(" Paris.<|endoftext|>junk") == "Paris."


def test_template_save_load(tmp_path):
    t = ChatTemplate(name="x", user_prefix="Human: ")
    t.save(tmp_path)
    assert ChatTemplate.load(tmp_path) == t
