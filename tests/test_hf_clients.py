"""The ecosystem's own tools on an exported folder, as their users run them (offline, CPU, a small
random model with the GPT-2 vocabulary): TRL's SFTTrainer, transformers' Trainer with gradient
accumulation, PEFT's LoRA merged back into mambaft, and lm-evaluation-harness on a local task.
Their versions are ranged in pyproject.toml's `test-clients` extra (`make install` installs it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from conftest import make_small_gpt2_model  # noqa: E402
from mambaft.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from mambaft.template import DEFAULT_TEMPLATE, IGNORE_INDEX  # noqa: E402
from mambaft.tokenizer import load_tokenizer  # noqa: E402

hf_logging.set_verbosity_error()

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "Name a red fruit."}, {"role": "assistant", "content": "A strawberry."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Two plus two?"},
     {"role": "assistant", "content": "Four."}],
    [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi, how can I help?"},
     {"role": "user", "content": "Say bye."}, {"role": "assistant", "content": "Bye!"}],
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An exported folder of a small random model (d_model 32, 2 blocks, GPT-2 vocabulary, dropout 0:
    the gradient comparisons need a deterministic forward)."""
    model = make_small_gpt2_model(seed=0, dropout=0.0)
    return model, save_checkpoint(model, tmp_path_factory.mktemp("clients") / "hf", "hf",
                                  template=DEFAULT_TEMPLATE, tokenizer=load_tokenizer())


def _hf(path):
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)


# --- TRL -----------------------------------------------------------------------------------------------
@pytest.mark.slow   # TRL tokenizes and trains 10 steps: ~20 s on 2 busy cores
def test_trl_sft_trainer_assistant_only_loss(folder, tmp_path):
    """TRL's SFTTrainer with its defaults (gradient checkpointing on, its fused LM head from 1.15 on)
    and assistant_only_loss=True: it trains, the loss falls, and its labels are mambaft's."""
    from datasets import Dataset
    import trl
    from trl import SFTConfig, SFTTrainer

    # set by the older-minor test below, which runs this same test against TRL_OLDER
    assert trl.__version__ == os.environ.get("MAMBAFT_EXPECT_TRL", trl.__version__), trl.__file__
    _, path = folder
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)   # (config.json's class is remote code)
    data = Dataset.from_list([{"messages": c} for c in CONVERSATIONS * 5])
    args = SFTConfig(output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=4,
                     learning_rate=3e-3, assistant_only_loss=True, logging_steps=1, save_strategy="no",
                     report_to=[], use_cpu=True, seed=0)
    trainer = SFTTrainer(model=_hf(path), args=args, train_dataset=data, processing_class=tok)
    rows = [trainer.train_dataset[i] for i in range(len(CONVERSATIONS))]
    batch = trainer.data_collator(rows)
    ours = [DEFAULT_TEMPLATE.render(c, load_tokenizer()) for c in CONVERSATIONS]
    L = batch["input_ids"].shape[1]
    for b, (ids, labels) in enumerate(ours):
        assert batch["input_ids"][b, :len(ids)].tolist() == ids
        assert batch["labels"][b].tolist() == labels + [IGNORE_INDEX] * (L - len(ids))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    # A random model starts at ln(50257) = 10.82 nats; 10 steps at lr 3e-3 (decaying) measured 10.82 ->
    # 10.67, every step lower. 0.05 nats is a third of that drop; a model that does not train stays put.
    assert losses[-1] < losses[0] - 0.05 and losses[-1] < min(losses[:3]), losses


OLDER_TRL = Path(__file__).resolve().parents[1] / ".venv" / "trl-older"   # the Makefile's TRL_OLDER


@pytest.mark.slow   # a fresh interpreter imports TRL and trains 10 steps
def test_trl_older_minor_sft_trainer_assistant_only_loss():
    """The same SFTTrainer test at one older TRL minor (1.14: before TRL's fused LM head, where its
    default loss called the model differently), as a user still on it runs it."""
    dist = sorted(OLDER_TRL.glob("trl-*.dist-info"))
    assert dist, f"{OLDER_TRL}: no older TRL installed (make install puts it there)"
    version = dist[0].name[len("trl-"):-len(".dist-info")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(OLDER_TRL), os.environ.get("PYTHONPATH", "")]),
           "MAMBAFT_EXPECT_TRL": version}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          f"{__file__}::test_trl_sft_trainer_assistant_only_loss"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]


# --- transformers' Trainer -----------------------------------------------------------------------------------
def _rows_with_uneven_labels(n=8, L=24, vocab=50257):
    """Rows whose trained-token counts differ (3..24), so a mean of per-micro-batch means is not the
    mean over the global batch's tokens."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        ids = torch.randint(0, vocab, (L,), generator=g)
        labels = ids.clone()
        labels[:max(0, L - 3 - 3 * i)] = IGNORE_INDEX
        rows.append({"input_ids": ids, "labels": labels})
    return rows


@pytest.mark.slow   # two Trainer runs
def test_hf_trainer_gradient_accumulation_matches_one_big_batch(folder, tmp_path):
    """Accumulation 1 x batch 8 and 4 x batch 2: the same loss and the same gradient. The Trainer passes
    num_items_in_batch (the global batch's trained tokens) and then does not divide by the
    accumulation steps itself; the old copy swallowed it and returned a mean (loss x 4 at accum 4)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    _, path = folder
    data = _rows_with_uneven_labels()

    class Grab(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            self.grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    got = {}
    for accum, bs in ((1, 8), (4, 2)):
        grab = Grab()
        args = TrainingArguments(output_dir=str(tmp_path / str(accum)), max_steps=1, learning_rate=1e-3,
                                 per_device_train_batch_size=bs, gradient_accumulation_steps=accum,
                                 logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                                 dataloader_drop_last=True, max_grad_norm=1e9, seed=0)   # (no clipping)
        trainer = Trainer(model=_hf(path), args=args, train_dataset=data, callbacks=[grab],
                          data_collator=lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]})
        trainer.train()
        got[accum] = ([h["loss"] for h in trainer.state.log_history if "loss" in h][0], grab.grads)
    (loss1, g1), (loss4, g4) = got[1], got[4]
    # fp32 sums of 4 partial sums instead of one: ~1e-6 relative; the logged loss is rounded to 4 digits
    assert loss4 == pytest.approx(loss1, rel=1e-3)
    assert g1.keys() == g4.keys() and len(g1) > 10
    for name in g1:
        torch.testing.assert_close(g4[name], g1[name], rtol=1e-4, atol=1e-7, msg=name)


# --- PEFT ----------------------------------------------------------------------------------------------------
def test_peft_lora_all_linear_merged_loads_back_into_mambaft(folder, tmp_path):
    """LoRA on every Linear but the (tied) output layer, merged, saved by transformers: mambaft loads
    it and computes exactly the merged model's logits."""
    from peft import LoraConfig, get_peft_model

    model, path = folder
    torch.manual_seed(0)
    lora = get_peft_model(_hf(path), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    wrapped = {n.split(".base_layer")[0].rsplit("model.", 1)[-1] for n, _ in lora.named_modules()
               if n.endswith("base_layer")}
    assert {"dense1", "dense2", "dense3"} <= wrapped and not any("lm_head" in w for w in wrapped)
    merged = lora.merge_and_unload().eval()
    merged.save_pretrained(tmp_path / "merged")
    back, info = load_checkpoint(tmp_path / "merged")
    assert info.format == "hf"
    ids = torch.randint(0, 50257, (2, 30))
    with torch.no_grad():
        theirs = merged(ids).logits
        ours = back(ids)["logits"]
        before = model(ids)["logits"]
    assert (ours - before).abs().max() > 1e-3                          # the adapter changed the model
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)           # same weights, same code: exact


# --- lm-evaluation-harness -------------------------------------------------------------------------------------
TASK = """task: mambaft_local_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""
# lm-eval joins context and choice with its target_delimiter, " "
QUESTIONS = [{"question": "The capital of France is", "choices": ["Paris", "Rome", "a cat"], "answer": 0},
             {"question": "Two plus two equals", "choices": ["four", "seven"], "answer": 0}]


@pytest.mark.slow   # lm-eval imports and evaluates (its built-in task index left out)
def test_lm_eval_harness_loglikelihoods_equal_mambaft(folder, tmp_path):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, path = folder
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (tmp_path / "task.yaml").write_text(TASK.format(data=data))
    lm = HFLM(pretrained=str(path), trust_remote_code=True, batch_size=2, device="cpu")
    out = lm_eval.simple_evaluate(model=lm, tasks=["mambaft_local_choice"], log_samples=True,
                                  task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))
    samples = out["samples"]["mambaft_local_choice"]
    tok = load_tokenizer()
    for s in samples:
        q = QUESTIONS[s["doc_id"]]
        for choice, resp in zip(q["choices"], s["resps"]):
            ctx = tok.encode(q["question"])
            cont = tok.encode(q["question"] + " " + choice)[len(ctx):]
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids)["logits"][0, :-1], -1)
            ours = float(logp[torch.arange(len(ctx) - 1, ids.shape[1] - 1), ids[0, len(ctx):]].sum())
            # lm-eval batches and pads the choices (other matmul shapes): fp32 rounding, ~1e-6 per logit
            assert resp[0][0] == pytest.approx(ours, abs=1e-4)
