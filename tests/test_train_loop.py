"""The fine-tuning loop end to end on small models: learning (masking + shift + end token), crash and
resume, two processes against one. Each test prepares a tiny dataset in the exact `mambaft prepare`
format (a DatasetDict saved to disk, rows rendered with DEFAULT_TEMPLATE)."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mambaft.checkpoint import load_checkpoint, save_checkpoint
from mambaft.config import make_config
from mambaft.data.prepare import mark_complete
from mambaft.generate import generate
from mambaft.template import DEFAULT_TEMPLATE
from mambaft.tokenizer import load_tokenizer
from mambaft.train import finetune
from mambaft.train import run_state as ck
from mambaft.train.metrics import read_metrics
from tests.conftest import ROOT, make_small_gpt2_model

QA = [("What color is the sky?", "Blue."), ("Name a fruit.", "An apple."), ("What is 2+2?", "Four."),
      ("Say hello.", "Hello there!"), ("Capital of France?", "Paris."), ("Opposite of hot?", "Cold."),
      ("How many legs has a cat?", "Four legs."), ("Translate chat to English.", "Cat.")]


def write_prepared(path: Path, pairs=QA, val_pairs=QA[:3]) -> Path:
    """A `mambaft prepare`-format folder: DatasetDict(train, val) with input_ids, labels, source,
    kind, n_trained (sources alternate "alpha"/"beta"); every val row is of the selection split (the
    `heldout` column: the rows training scores), so each evaluation sees them all."""
    from datasets import Dataset, DatasetDict

    tok = load_tokenizer()

    def rows(items, split):
        out = []
        for i, (q, a) in enumerate(items):
            ids, labels = DEFAULT_TEMPLATE.render([{"role": "user", "content": q},
                                                   {"role": "assistant", "content": a}], tok)
            out.append({"id": f"{split}-{i}", "conversation_id": f"{split}-{i}",
                        "source": "alpha" if i % 2 == 0 else "beta", "lang": "en", "kind": "chat",
                        "input_ids": ids, "labels": labels, "n_tokens": len(ids),
                        "n_trained": sum(x != -100 for x in labels)})
        return out

    val = [{**r, "heldout": "selection"} for r in rows(val_pairs, "val")]
    DatasetDict({"train": Dataset.from_list(rows(pairs, "train")),
                 "val": Dataset.from_list(val)}).save_to_disk(str(path))
    DEFAULT_TEMPLATE.save(path)
    mark_complete(path)
    return path


def learnable_model(seed: int = 0, dropout: float = 0.0, max_seq_len: int = 256):
    """The small GPT-2-vocabulary MambaSWELU, re-initialised so that it CAN learn from scratch.

    With the as-trained init (every weight N(0, 0.02)), each dense layer of the SWELU head shrinks its
    input ~6x at this width, so the biases learn a constant feature long before the weights carry any
    context: the features saturate at +-1 and the loss sticks at the unigram entropy of the answers
    (measured: 2.12 after 300 steps at lr 3e-4..3e-2, d_model 32..128). Weights with std 1/sqrt(fan_in)
    and embeddings with std 0.2 reach a loss of 0.01 in 200 steps on the same data."""
    model = make_small_gpt2_model(seed=seed, dropout=dropout, max_seq_len=max_seq_len)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name != "lm_head":
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / math.sqrt(mod.in_features))
        for emb in (model.token_embedding, model.position_embedding):
            emb.weight.copy_(torch.randn(emb.weight.shape, generator=g) * 0.2)
    return model


def cli(*args: str) -> list:
    return [sys.executable, "-m", "mambaft.finetune", *args, "--threads", "1", "--heldout", "none",
            "--no-probes", "--no-progress", "--no-eval-at-start"]


def run_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MAMBAFT_FAULT",)}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def train_losses(out: Path) -> dict:
    rows = read_metrics(out / "metrics.jsonl")
    steps = [r["step"] for r in rows if "loss" in r and "event" not in r]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: r["loss"] for r in rows if "loss" in r and "event" not in r}


EOS_ID = 50256
QUIET = dict(progress=False, threads=1, heldout_texts={}, probes=[], eval_at_start=False)


@pytest.mark.slow   # trains until the model learns
def test_tiny_model_learns_answers_and_the_end_token(tmp_path):
    data = write_prepared(tmp_path / "data")
    base = save_checkpoint(learnable_model(), tmp_path / "base")
    cfg = make_config("smoke", lr=3e-3, warmup_steps=20, max_steps=200, batch_size=8, save_every=200,
                      eval_every=100, keep_last=1)
    res = finetune(cfg, base, data, tmp_path / "run", **QUIET)
    losses = res["losses"]
    assert len(losses) == 200 and res["steps"] == 200
    assert losses[0] > 10.0                                   # ln(50257) = 10.8 at the start
    assert sum(losses[-10:]) / 10 < 0.1, losses[-10:]        # memorised
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [100, 200]
    assert {"val_loss/alpha", "val_loss/beta"} <= set(evals[-1])
    assert evals[-1]["val_loss"] < 0.5 * evals[0]["val_loss"] or evals[-1]["val_loss"] < 1.0

    # Generation with the saved model and its saved template: each trained answer, then the end token.
    model, info = load_checkpoint(res["final"])
    tok = info.tokenizer
    assert info.template == DEFAULT_TEMPLATE
    exact = 0
    for q, a in QA:
        prompt = info.template.prompt_ids([{"role": "user", "content": q}], tok)
        new = generate(model, [prompt], max_new_tokens=12, stop_token_ids=[tok.eos_id])[0][len(prompt):]
        exact += new == tok.encode(" " + a) + [tok.eos_id]
    assert exact == len(QA), f"{exact}/{len(QA)} answers reproduced with the end token"


@pytest.mark.slow   # training subprocesses
def test_sigkill_mid_training_then_resume_matches_an_uninterrupted_run(tmp_path):
    """Dropout 0.1 is on, so equal losses also prove every RNG and the data position were restored."""
    data = write_prepared(tmp_path / "data")
    base = save_checkpoint(learnable_model(seed=1, dropout=0.1), tmp_path / "base")
    sets = dict(lr=3e-3, warmup_steps=5, max_steps=20, batch_size=2, eval_every=10, keep_last=2)
    cfg = make_config("smoke", **sets, save_every=5)
    ref = finetune(cfg, base, data, tmp_path / "ref", **QUIET)
    ref_losses = dict(enumerate(ref["losses"], start=1))

    out = tmp_path / "crash"
    args = cli("--strategy", "smoke", "--base", str(base), "--data", str(data), "--out", str(out),
               "--save-every", "5", *[f"--set={k}={v}" for k, v in sets.items()])
    # 1st run: SIGKILLed right after step 13's update, before it is logged (checkpoints 5, 10 complete).
    p = subprocess.run(args, env=run_env(MAMBAFT_FAULT="after_step=13"), capture_output=True, text=True)
    assert p.returncode == -9, p.stderr[-2000:]
    assert [r.step for r in ck.list_checkpoints(out)] == [5, 10]
    assert max(train_losses(out)) == 12
    # 2nd run: resumes from 10, then is SIGKILLed in the middle of writing checkpoint 15.
    p = subprocess.run(args, env=run_env(MAMBAFT_FAULT="in_save=15"), capture_output=True, text=True)
    assert p.returncode == -9, p.stderr[-2000:]
    assert "resuming from" in p.stdout and "step 10 of 20" in p.stdout, p.stdout[-2000:]
    partial = out / "checkpoints" / ".tmp-step_0000015"                   # every file written,
    assert (partial / "trainer_state.pt").is_file() and (partial / "model" / "model.safetensors").is_file()
    assert [r.step for r in ck.list_checkpoints(out)] == [5, 10]          # but not committed: not counted
    # 3rd run: resumes from 10 again and finishes.
    p = subprocess.run(args, env=run_env(), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "step 10 of 20" in p.stdout and "half-written" in p.stdout
    got = train_losses(out)
    assert sorted(got) == list(range(1, 21))
    for step in range(1, 21):
        # the same kernels in the same order on the same machine: resumed losses repeat bit for bit;
        # rel 1e-6 (17 u) only allows for a kernel that picks its blocking by thread timing
        assert got[step] == pytest.approx(ref_losses[step], rel=1e-6, abs=1e-7), step
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 20 and Path(result["final"], "model.safetensors").is_file()
    # rotation in the live run: newest keep_last=2 plus the best by val loss (evaluated at 10 and 20)
    kept = [r.step for r in ck.list_checkpoints(out)]
    assert kept[-2:] == [15, 20] and set(kept) <= {10, 15, 20}
    assert not any(p.name.startswith(".") for p in (out / "checkpoints").iterdir())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow   # two training processes
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    data = write_prepared(tmp_path / "data")
    base = save_checkpoint(learnable_model(seed=2), tmp_path / "base")
    common = dict(lr=3e-3, warmup_steps=2, max_steps=6, batch_size=2, save_every=6, eval_every=3, keep_last=1)
    # one process: 2 rows x 2 accumulation steps = a global batch of 4
    one = finetune(make_config("smoke", **common, grad_accum=2), base, data, tmp_path / "one", **QUIET)
    # two processes (gloo, the environment torchrun / accelerate launch give each rank): 2 rows x 1 x 2
    out = tmp_path / "two"
    args = cli("--strategy", "smoke", "--base", str(base), "--data", str(data), "--out", str(out),
               *[f"--set={k}={v}" for k, v in {**common, "grad_accum": 1}.items()])
    port = str(_free_port())
    procs = [subprocess.Popen(args, env=run_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(r),
                                                LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
    assert "2 process(es)" in outs[0][0] and outs[1][0].strip() == ""        # rank 0 alone prints
    two = json.loads((out / "result.json").read_text())
    assert len(two["losses"]) == len(one["losses"]) == 6
    assert one["losses"][-1] < one["losses"][0] - 0.5                        # it did train
    # all-reduce adds the two ranks' gradients in another order than one process's accumulation, and
    # 6 AdamW steps carry that fp32 reordering (~1e-7) forward: rel 2e-5 (passes on AVX-512 and with
    # ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=AVX2); training itself moves the loss by > 0.5
    for a, b in zip(one["losses"], two["losses"]):
        assert b == pytest.approx(a, rel=2e-5)
    rows_one = [r for r in read_metrics(tmp_path / "one" / "metrics.jsonl") if "val_loss" in r]
    rows_two = [r for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in rows_two] == [3, 6]
    for a, b in zip(rows_one, rows_two):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=2e-5)
    m1, _ = load_checkpoint(one["final"])
    m2, _ = load_checkpoint(two["final"])
    for (n, p1), (_, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        torch.testing.assert_close(p2, p1, rtol=1e-4, atol=1e-6, msg=n)   # as the losses: 6 steps of lr 3e-3


@pytest.mark.slow   # trains two phases, twice
def test_specialized_runs_two_phases_and_a_rerun_resumes_instead_of_retraining(tmp_path):
    from mambaft.train import finetune as finetune_via_package     # the package spelling works too
    data = tmp_path / "data"
    write_prepared(data / "phase1", QA[:6], QA[:2])
    write_prepared(data / "phase2", QA[6:] * 3, QA[6:])
    base = save_checkpoint(learnable_model(seed=3), tmp_path / "base")
    cfg = make_config("specialized", domain="french", lr=3e-3, warmup_steps=1, max_steps=4, phase2_steps=3,
                      batch_size=2, grad_accum=1, num_gpus=1, precision="fp32", save_every=2, eval_every=2,
                      keep_last=1, export_original=True)
    out = tmp_path / "run"
    res = finetune_via_package(cfg, base, data, out, **QUIET)
    # export_original: the final model also in the original .pt format, identical weights, original keys
    original = torch.load(out / "phase2" / "final_model.pt", weights_only=True)
    assert set(original) >= {"model_state_dict", "config", "global_step"} and original["global_step"] == 3
    folder_model, _ = load_checkpoint(res["final"])
    sd = original["model_state_dict"]
    assert set(sd) == set(folder_model.state_dict())
    for k, v in folder_model.state_dict().items():
        assert torch.equal(sd[k], v), k
    assert res["phase1"]["steps"] == 4 and res["phase2"]["steps"] == 3
    assert res["final"] == str(out / "phase2" / "final") and Path(res["phase1"]["final"]).is_dir()
    # phase 2 starts from phase 1's final weights: its first loss equals phase 1's model on phase 2 data
    p2 = read_metrics(out / "phase2" / "metrics.jsonl")
    assert p2[0]["event"] == "start" and len([r for r in p2 if "loss" in r and "event" not in r]) == 3
    from datasets import load_from_disk
    from mambaft.train.batches import RowStream
    from mambaft.train.step import count_trained_tokens
    phase1_model, _ = load_checkpoint(res["phase1"]["final"])
    mb = RowStream(load_from_disk(str(data / "phase2"))["train"], seed=cfg.seed, pad_id=EOS_ID).step_rows(
        0, batch_size=2, grad_accum=1, rank=0, world_size=1).micro_batches[0]
    with torch.no_grad():
        first = phase1_model(mb["input_ids"], labels=mb["labels"], loss_reduction="sum")["loss"]
    assert p2[1]["loss"] == pytest.approx(float(first) / count_trained_tokens(mb["labels"]), rel=1e-5)
    n_rows = len(read_metrics(out / "phase1" / "metrics.jsonl")), len(p2)
    # the same call again: both phases are complete, nothing is retrained
    again = finetune(cfg, base, data, out, **QUIET)
    assert again["resumed_from"] == 3 and again["phase1"]["resumed_from"] == 4
    assert again["losses"] == res["losses"]
    assert [len([r for r in read_metrics(out / p / "metrics.jsonl") if "loss" in r and "event" not in r])
            for p in ("phase1", "phase2")] == [4, 3]
    assert len(read_metrics(out / "phase1" / "metrics.jsonl")) == n_rows[0] + 1   # + the resume event
    # --no-resume: start over, one row per step
    fresh = finetune(cfg, base, data, out, resume=False, **QUIET)
    assert fresh["phase1"]["losses"] == res["phase1"]["losses"]                   # same seed, same run
    assert [r["step"] for r in read_metrics(out / "phase1" / "metrics.jsonl") if "loss" in r
            and "event" not in r] == [1, 2, 3, 4]


@pytest.mark.slow   # inductor compiles the blocks (C++ on the CPU): about a minute
def test_compiled_blocks_train_like_eager_ones_and_save_the_same_keys(tmp_path):
    """compile_blocks=True (torch.compile of each block, the kernels' plain twins inside): the same run,
    within fusion's rounding, and checkpoints a plain model loads (no `_orig_mod.` keys)."""
    data = write_prepared(tmp_path / "data")
    base = save_checkpoint(learnable_model(seed=2), tmp_path / "base")
    cfg = dict(lr=3e-3, warmup_steps=2, max_steps=6, batch_size=4, save_every=6, eval_every=6, keep_last=1,
               packing=False)
    eager = finetune(make_config("smoke", **cfg), base, data, tmp_path / "eager", **QUIET)
    compiled = finetune(make_config("smoke", compile_blocks=True, **cfg), base, data, tmp_path / "compiled",
                        **QUIET)
    # fp32 on one thread: fused elementwise chains round differently from eager ones (a few ulp per op),
    # and 6 AdamW steps at lr 3e-3 carry that into the weights. 1e-3 relative is far above rounding
    # while a wrong graph (a dropped gate, a missing residual) moves the first loss by whole nats.
    for a, b in zip(eager["losses"], compiled["losses"]):
        assert abs(a - b) <= 1e-3 * abs(a), (eager["losses"], compiled["losses"])
    model, _ = load_checkpoint(compiled["final"])
    ref, _ = load_checkpoint(eager["final"])
    assert list(model.state_dict()) == list(ref.state_dict())
