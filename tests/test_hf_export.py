"""`mambaft export --format hf` against the real transformers, offline: the exported folder gives
mambaft's logits, greedy tokens (also past max_seq_len), chat-template ids and masks, answers in a
pipeline, loads where mambaft cannot be imported, and comes back bit for bit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # everything below is local: never try the network

from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline  # noqa: E402  (dev dependency)
from transformers.utils import logging as hf_logging  # noqa: E402

from mambaft.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from mambaft.course import DEMO_BASE  # noqa: E402
from mambaft.generate import generate  # noqa: E402
from mambaft.model import upgrade_to_selective  # noqa: E402
from mambaft.template import DEFAULT_TEMPLATE, IGNORE_INDEX  # noqa: E402

hf_logging.set_verbosity_error()   # no weight-loading progress bars in the test log


def _hf(path: Path):
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()


@pytest.fixture(scope="module")
def tiny_original(tiny_ckpt_path, tmp_path_factory):
    model, info = load_checkpoint(tiny_ckpt_path)
    out = save_checkpoint(model, tmp_path_factory.mktemp("hf") / "tiny", "hf", template=info.template)
    return model, out


@pytest.fixture(scope="module")
def tiny_selective(tiny_ckpt_path, tmp_path_factory):
    """The tiny model upgraded, with open gates and moved SSM parameters so the scan matters."""
    base, _ = load_checkpoint(tiny_ckpt_path)
    torch.manual_seed(1)
    model = upgrade_to_selective(base, ssm_state=4).eval()
    with torch.no_grad():
        for layer in model.mamba_stack.layers:
            sel = layer.mamba.selective
            sel.gate.normal_(0, 1.0)
            sel.delta_proj.bias.add_(2.0)     # Delta ~ 2: memory of a few tokens, visible in 60
    out = save_checkpoint(model, tmp_path_factory.mktemp("hf") / "tiny_sel", "hf")
    return model, out


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    model, info = load_checkpoint(DEMO_BASE)
    out = save_checkpoint(model, tmp_path_factory.mktemp("hf") / "demo", "hf", template=info.template,
                          tokenizer=info.tokenizer, step=info.step, training=info.training)
    return model, info, out


# --- the folder --------------------------------------------------------------------------------
def test_cli_writes_every_file(tiny_ckpt_path, tmp_path):
    from mambaft.cli import main
    out = tmp_path / "hf"
    assert main(["export", str(tiny_ckpt_path), "--to", str(out), "--format", "hf"]) == 0
    names = {p.name for p in out.iterdir()}
    from mambaft.hf.ship import MODEL_FILES
    assert names == {"config.json", "generation_config.json", "configuration_mambaswelu.py",
                     "modeling_mambaswelu.py", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json", "README.md",
                     *MODEL_FILES.values()}
    cfg = json.loads((out / "config.json").read_text())
    model, _ = load_checkpoint(tiny_ckpt_path)
    assert cfg["model_type"] == "mambaswelu" and set(cfg["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}
    assert {k: cfg[k] for k in model.config.to_dict()} == model.config.to_dict()   # every field
    # the end token only: a sampling default would turn a caller's do_sample=False into greedy +
    # penalty, and max_new_tokens would override lm-eval's max_gen_toks
    assert json.loads((out / "generation_config.json").read_text()) == {"eos_token_id": 50256,
                                                                         "pad_token_id": 50256}
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.lm_head.weight" not in keys and "model.token_embedding.weight" in keys   # tied: once
    card = (out / "README.md").read_text()
    header = card.split("---")[1]
    for key in ("license:", "base_model:", "datasets:", "language:", "pipeline_tag: text-generation"):
        assert key in header
    assert f"last {model.config.receptive_field} tokens" in card


def test_the_folder_ships_mambafts_own_model_files(tiny_original):
    """One model source: every model file in the folder is mambaft/model/'s file with the rule of
    mambaft.hf.ship applied (a header line; imports flattened; template constants copied in), every
    other line identical and in order; the adapter defines no layer of its own."""
    import difflib
    import re
    from mambaft.hf.ship import MODEL_DIR, MODEL_FILES, shipped_text
    template_source = (MODEL_DIR.parent / "template.py").read_text(encoding="utf-8")
    _, path = tiny_original
    for source, name in MODEL_FILES.items():
        shipped = (path / name).read_text(encoding="utf-8")
        assert shipped == shipped_text(source), name
        original = (MODEL_DIR / source).read_text(encoding="utf-8").split("\n")
        lines = shipped.split("\n")
        copied_from = template_source.split("\n")
        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, original, lines, autojunk=False).get_opcodes():
            if op == "equal":
                continue
            # what the rule removed: relative imports only; what it added: the header, flattened
            # imports, and definitions copied verbatim from mambaft/template.py
            assert all(re.match(r"^from \.+[\w.]* import ", ln) for ln in original[i1:i2]), (name, op)
            assert all(j == 0 or re.match(r"^from \.\w+ import ", ln) or ln in copied_from
                       or ln.endswith("copied by mambaft export") for j, ln in zip(range(j1, j2), lines[j1:j2])), (name, op)
        assert "mambaft." not in "".join(re.findall(r"^\s*(?:from|import) \S+", shipped, re.M))
    adapter = (path / "modeling_mambaswelu.py").read_text(encoding="utf-8")
    assert not re.search(r"nn\.(Linear|Conv1d|Embedding|LayerNorm)\(", adapter)     # no second model
    with pytest.raises(ValueError, match="cannot import mambaft"):
        import mambaft.hf.ship as ship
        ship.MODEL_DIR, old = path.parent, ship.MODEL_DIR   # a model file that imports mambaft: refused
        try:
            (path.parent / "bad.py").write_text("import mambaft.cli\n", encoding="utf-8")
            shipped_text("bad.py")
        finally:
            ship.MODEL_DIR = old


def test_cli_refuses_bad_input(tmp_path, capsys):
    from mambaft.cli import main
    assert main(["export", str(tmp_path / "missing.pt"), "--to", str(tmp_path / "x")]) == 2
    assert "mambaft export: error:" in capsys.readouterr().err      # one line, no traceback
    with pytest.raises(SystemExit):
        main(["export", "x.pt", "--to", str(tmp_path / "x"), "--format", "gguf"])
    assert "invalid choice: 'gguf'" in capsys.readouterr().err


def test_model_card_is_filled_from_the_run(tiny_model):
    from mambaft.config import make_config
    from mambaft.hf.card import model_card
    run_cfg = make_config("quick", data_mode="offline").to_dict()
    training = {"config": run_cfg, "step": 300, "val_loss": 2.5}
    card = model_card(tiny_model.config, DEFAULT_TEMPLATE, training=training,
                      result={"steps": 300, "losses": [3.0, 2.25], "val_loss": 2.5},
                      evaluation="| model | stop_rate |\n|---|---|\n| fine-tuned | 0.9 |")
    assert "strategy: quick" in card and "optimizer steps: 300" in card
    assert "final training loss: 2.2500; validation loss: 2.5000" in card
    weight = run_cfg["offline_sources"]["wiki_en_first"]
    assert f"| wiki_en_first | registry:wiki | {weight:.2f} | n/a | CC BY-SA 4.0 |" in card   # source and licence
    assert "| fine-tuned | 0.9 |" in card
    assert f"last {tiny_model.config.receptive_field} tokens" in card   # the honest limit


# --- numbers -------------------------------------------------------------------------------------
# Tolerances. Both sides run on the same CPU, so equal ops on equal shapes give equal bits on any CPU
# class. The as-trained path is the same fp32 op sequence as mambaft (SWELU in mambaft's order, the
# tap-by-tap conv, the same Linear calls): measured max |diff| 0.0 with logits up to |21|, natively
# (AVX-512) and with ATEN_CPU_CAPABILITY=default. 1e-5 (about 5 fp32 ulps at |20|) only guards against
# a future kernel choosing another blocking for one of the two calls. The selective path differs in
# one place: the scan's C.h is an einsum over chunked states in mambaft and a bmm per step here, so the
# summation order of N = 4..16 products may differ: ~N x 2^-24 ~ 1e-6 relative per step, carried
# through out_proj and two blocks into logits of |20|: ~1e-5; 1e-4 keeps a 10x margin (measured: 0.0).
@pytest.mark.numerics
@pytest.mark.parametrize("which", ["tiny_original", "tiny_selective", "demo"])
def test_logits_equal_mambaft(which, request):
    got = request.getfixturevalue(which)
    model, path = got[0], got[-1]
    hf = _hf(path)
    assert hf.config.architecture == model.config.architecture
    ids = torch.randint(0, model.config.vocab_size, (2, 60))
    with torch.no_grad():
        ours = model(ids)["logits"]
        theirs = hf(ids).logits
    atol = 1e-4 if model.config.architecture == "selective" else 1e-5
    torch.testing.assert_close(theirs, ours, atol=atol, rtol=0)


@pytest.mark.numerics
@pytest.mark.parametrize("which", ["tiny_original", "tiny_selective"])
@pytest.mark.parametrize("prompt_len", [20, 110, 150])    # max_seq_len is 128: cross it, start past it
def test_greedy_generate_equals_mambaft(which, prompt_len, request):
    model, path = request.getfixturevalue(which)
    hf = _hf(path)
    torch.manual_seed(prompt_len)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len))
    ours = generate(model, prompt, max_new_tokens=40)
    theirs = hf.generate(prompt, do_sample=False, max_new_tokens=40, repetition_penalty=1.0)
    assert theirs.tolist() == ours.tolist()


def test_generate_without_cache_is_the_original_rule(tiny_original):
    """use_cache=False reruns the cropped sequence per token (the original's generate): same tokens."""
    model, path = tiny_original
    hf = _hf(path)
    prompt = torch.randint(0, model.config.vocab_size, (1, 110))
    ours = generate(model, prompt, max_new_tokens=30)
    assert hf.generate(prompt, do_sample=False, max_new_tokens=30, repetition_penalty=1.0,
                       use_cache=False).tolist() == ours.tolist()


def test_left_padded_batch_equals_mambaft(tiny_original, tiny_selective):
    for model, path in (tiny_original, tiny_selective):
        hf = _hf(path)
        rows = [torch.randint(0, model.config.vocab_size, (n,)).tolist() for n in (12, 5)]
        ours = generate(model, rows, max_new_tokens=15)
        ids = torch.zeros(2, 12, dtype=torch.long)
        mask = torch.zeros(2, 12, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, 12 - len(r):], mask[b, 12 - len(r):] = torch.tensor(r), 1
        out = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=15, repetition_penalty=1.0)
        assert [out[b, 12:].tolist() for b in range(2)] == [o[len(r):] for o, r in zip(ours, rows)]


def test_decoding_feeds_one_token_per_step(tiny_original):
    """O(1) per token: after the prompt, every forward gets 1 token and the decoding state, also
    past max_seq_len (where the step recomputes a fixed window of receptive_field tokens)."""
    model, path = tiny_original
    hf = _hf(path)
    seen = []
    hook = hf.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((kwargs["input_ids"].shape[1], kwargs.get("mambaswelu_state") is not None)),
        with_kwargs=True)
    windows = []
    features = hf.model.features
    hf.model.features = lambda ids, *a, **kw: windows.append(ids.shape[1]) or features(ids, *a, **kw)
    try:
        hf.generate(torch.randint(0, 512, (1, 100)), do_sample=False, max_new_tokens=50)
    finally:
        hook.remove()
        del hf.model.features
    assert seen[0] == (100, False)
    assert seen[1:] == [(1, True)] * 49
    assert windows[0] == 100 and set(windows[1:]) == {model.config.receptive_field}  # steps past 128


def test_do_sample_false_is_plain_greedy_and_the_penalty_is_on_the_reply_only(demo):
    """generation_config.json holds the end token only, so `generate(do_sample=False)` is mambaft's
    plain greedy (before: the chat's repetition_penalty 1.1 was applied too, and this prompt's tokens
    went into a loop of " United States,"); a penalty passed by the caller looks at the reply only,
    as in mambaft."""
    model, info, path = demo
    hf = _hf(path)
    prompt = torch.tensor([info.tokenizer.encode("The history of the city begins")])
    greedy = generate(model, prompt, max_new_tokens=30, stop_token_ids=[50256])
    assert hf.generate(prompt, do_sample=False, max_new_tokens=30).tolist() == greedy.tolist()
    ours = generate(model, prompt, max_new_tokens=30, repetition_penalty=1.3, stop_token_ids=[50256])
    theirs = hf.generate(prompt, do_sample=False, max_new_tokens=30, repetition_penalty=1.3)
    assert theirs.tolist() == ours.tolist() and ours.tolist() != greedy.tolist()


@pytest.mark.slow   # generates past 1024 tokens
@pytest.mark.numerics
def test_demo_greedy_past_max_seq_len(demo):
    model, info, path = demo
    hf = _hf(path)
    prompt = torch.randint(0, 50257, (1, 1015))
    ours = generate(model, prompt, max_new_tokens=20)
    assert hf.generate(prompt, do_sample=False, max_new_tokens=20, repetition_penalty=1.0).tolist() == ours.tolist()


# --- the chat template ---------------------------------------------------------------------------
CONVERSATIONS = {
    "multi-turn": [{"role": "user", "content": "What is the capital of France?"},
                   {"role": "assistant", "content": "Paris."},
                   {"role": "user", "content": "And of Italy?"},
                   {"role": "assistant", "content": "Rome, since 1871."}],
    "system": [{"role": "system", "content": "You answer in one short sentence."},
               {"role": "user", "content": "Why is the sky blue?"},
               {"role": "assistant", "content": "Air scatters blue light more than red."}],
    "french": [{"role": "user", "content": "Quelle est la capitale de l'Allemagne ? Réponds en français."},
               {"role": "assistant", "content": "C'est Berlin, évidemment !"},
               {"role": "user", "content": "Et celle de l'Espagne ?"},
               {"role": "assistant", "content": "Madrid — au centre du pays."}],
    # The traps: whitespace at segment joins (tokenized whole, " \n" + "Assistant" splits otherwise)
    # and "<|endoftext|>" typed in a message (text in mambaft, never the end token).
    "traps": [{"role": "system", "content": "  "},
              {"role": "user", "content": "end it here <|endoftext|> please \n\n"},
              {"role": "assistant", "content": " <|endoftext|>!"},
              {"role": "user", "content": ""},
              {"role": "assistant", "content": ""}],
}


@pytest.fixture(scope="module")
def demo_tokenizer(demo):
    return AutoTokenizer.from_pretrained(demo[-1], trust_remote_code=True)


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_chat_template_ids_and_masks_equal_mambaft(demo, demo_tokenizer, name):
    _, info, path = demo
    tok = demo_tokenizer
    conv = CONVERSATIONS[name]
    ids, labels = DEFAULT_TEMPLATE.render(conv, info.tokenizer)
    got = tok.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert list(got["input_ids"]) == ids
    assert list(got["assistant_masks"]) == [int(lab != IGNORE_INDEX) for lab in labels]   # TRL's mask
    prompt = tok.apply_chat_template(conv[:-1], tokenize=True, add_generation_prompt=True, return_dict=True)
    assert list(prompt["input_ids"]) == DEFAULT_TEMPLATE.prompt_ids(conv[:-1], info.tokenizer)
    if name == "traps":
        assert ids.count(50256) == 2                      # only the template's two end tokens
        assert tok.decode(tok("a<|endoftext|>b", add_special_tokens=False)["input_ids"]) == "a<|endoftext|>b"


def test_chat_template_text_has_no_private_use_characters(demo, demo_tokenizer):
    """The rendered text is plain (before: U+E000 between every two segments), and a U+E000 the user
    typed is kept, as mambaft keeps it (before: dropped). The one exception is the escape of an end
    text typed in a message ("<|" U+E000 "endoftext|>", the "traps" conversation)."""
    _, info, _ = demo
    for conv in CONVERSATIONS.values():
        text = demo_tokenizer.apply_chat_template(conv, tokenize=False)
        text = text.replace("<|\ue000endoftext|>", "")
        assert not [c for c in text if 0xE000 <= ord(c) <= 0xF8FF or c == "\u200b"], repr(text)
    conv = [{"role": "user", "content": "private \ue000 use"}, {"role": "assistant", "content": "ok \ue000"}]
    got = demo_tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True)
    assert list(got["input_ids"]) == DEFAULT_TEMPLATE.render(conv, info.tokenizer)[0]



@pytest.mark.numerics
def test_pipeline_answers_like_mambaft(demo):
    model, info, path = demo
    chat = pipeline("text-generation", model=str(path), trust_remote_code=True)
    messages = [{"role": "user", "content": "Tell me about the history of London."}]
    out = chat(messages, max_new_tokens=12, do_sample=False, repetition_penalty=1.0)
    reply = out[0]["generated_text"][-1]
    prompt = DEFAULT_TEMPLATE.prompt_ids(messages, info.tokenizer)
    ours = generate(model, [prompt], max_new_tokens=12, stop_token_ids=[50256])[0][len(prompt):]
    assert reply["role"] == "assistant" and reply["content"]
    assert reply["content"] == info.tokenizer.decode(ours, skip_special=True)


# --- back into mambaft -----------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["tiny_selective", "demo"])
def test_load_checkpoint_round_trips_bit_for_bit(which, request):
    got = request.getfixturevalue(which)
    model, path = got[0], got[-1]
    back, info = load_checkpoint(path)
    assert info.format == "hf" and back.config == model.config
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    if which == "demo":
        assert info.template == got[1].template and info.step == got[1].step
        assert info.training == got[1].training
        text = "Hello <|endoftext|> world\n  again"
        assert info.tokenizer.encode(text) == got[1].tokenizer.encode(text)
        assert info.tokenizer.tok.to_str() == got[1].tokenizer.tok.to_str()


@pytest.mark.slow   # a transformers save and load
def test_folder_resaved_by_transformers_comes_back(demo, demo_tokenizer, tmp_path):
    """What a Hub upload or a TRL run writes (save_pretrained) still loads into mambaft, bit for bit."""
    model, info, path = demo
    _hf(path).save_pretrained(tmp_path)
    demo_tokenizer.save_pretrained(tmp_path)
    back, got = load_checkpoint(tmp_path)
    assert got.format == "hf" and got.template == info.template and got.training == info.training
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())
    text = "Hi <|endoftext|> there \n"
    assert got.tokenizer.encode(text) == info.tokenizer.encode(text)


# --- without mambaft -------------------------------------------------------------------------------
NO_MAMBAFT = r"""
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "mambaft" or name.startswith("mambaft."):
            raise ImportError("mambaft is blocked in this process")
sys.meta_path.insert(0, Block())
try:
    import mambaft
    sys.exit("mambaft could be imported")
except ImportError:
    pass
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)   # the config class is remote code
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
ids = tok.apply_chat_template([{"role": "user", "content": "Hello there!"}], add_generation_prompt=True,
                              return_tensors="pt", return_dict=True)
out = model.generate(**ids, do_sample=False, max_new_tokens=10, repetition_penalty=1.0)
mods = sorted(m for m in sys.modules if m == "mambaft" or m.startswith("mambaft."))
print("RESULT " + json.dumps({"ids": out[0].tolist(), "modules": mods}))
"""


@pytest.mark.slow   # a fresh interpreter imports torch + transformers: 20-35 s on 2 busy cores
def test_exported_folder_loads_where_mambaft_cannot_be_imported(demo, tmp_path):
    model, info, path = demo
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"),   # a fresh remote-code cache
               TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
    # -I: no PYTHONPATH, no user site, not the current folder: only the venv's packages.
    res = subprocess.run([sys.executable, "-I", "-c", NO_MAMBAFT, str(path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, res.stdout[-2000:]
    got = json.loads(line[-1][len("RESULT "):])
    assert got["modules"] == []
    prompt = DEFAULT_TEMPLATE.prompt_ids([{"role": "user", "content": "Hello there!"}], info.tokenizer)
    assert got["ids"] == generate(model, [prompt], max_new_tokens=10, stop_token_ids=[50256])[0]
