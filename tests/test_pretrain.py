"""mambaft pretrain: rows without end tokens, sampling weights, a tiny end-to-end run, and the
shipped demo base (size, architecture, symptoms)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mambaft.cli import pretrain as pretrain_cli
from mambaft.recipes import pretrain as pt
from mambaft.recipes.pretrain_report import repeated_fraction
from mambaft.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo_base"
TEXT = ("The river rises in the hills and flows west to the sea. " * 3 + "\n\n") * 2


def test_rows_are_one_stream_without_end_tokens():
    tok = load_tokenizer()
    docs = [f"Document {i}. " + TEXT for i in range(40)]
    src = pt.build_rows("t", docs, tok, seq_len=32, val_fraction=0.1, seed=0, licence="L")
    assert src.train_rows.shape[1] == 32 and src.train_rows.dtype == torch.int32
    assert not (src.train_rows == tok.eos_id).any() and not (src.val_rows == tok.eos_id).any()
    # 4 of 40 documents held out: the train stream is the other 36, joined by blank lines only
    per_doc = len(tok.encode(docs[0].strip() + "\n\n"))
    assert src.tokens == (36 * per_doc // 32) * 32
    assert src.val_rows.shape[0] == 4 * per_doc // 32
    # rows follow each other in the stream: a document boundary falls inside a row, no padding
    flat = src.train_rows.flatten().tolist()
    assert flat[per_doc] == tok.encode("Document")[0] and flat[per_doc - 1] == tok.encode("\n\n")[0]


def test_text_that_encodes_the_end_token_is_refused(monkeypatch):
    tok = load_tokenizer()

    class Evil:
        eos_id = tok.eos_id

        def encode_batch(self, texts):
            return [[1, 2, tok.eos_id] * 20 for _ in texts]

    with pytest.raises(ValueError, match="end token 50256"):
        pt.build_rows("evil", ["a", "b"], Evil(), seq_len=8, val_fraction=0.0, seed=0)


def test_epoch_order_applies_weights():
    def src(n):
        return pt.SourceRows("s", "", 1, torch.zeros(n, 4, dtype=torch.int32), torch.zeros(0, 4), n * 4)

    order = pt.epoch_order([src(10), src(20)], [2.0, 0.5], torch.Generator().manual_seed(0))
    counts = torch.bincount(order[:, 0])
    assert counts.tolist() == [20, 10]                      # every row of A twice, half of B
    a_rows = order[order[:, 0] == 0, 1]
    assert torch.bincount(a_rows).tolist() == [2] * 10
    b_rows = order[order[:, 0] == 1, 1]
    assert len(set(b_rows.tolist())) == 10                  # a half, without repeats


def test_rebuild_command_turns_a_time_budget_into_steps():
    cmd = pt.rebuild_command(["--out", "data/x", "--minutes", "30", "--lr", "4e-3", "--steps=9"], 1585)
    assert cmd == "mambaft pretrain --out data/x --lr 4e-3 --steps 1585"


def test_a_continued_run_reads_its_stages_and_its_card_rebuilds_them_in_order(tmp_path):
    """A base pretrained in two stages: the second run's card counts both (steps, tokens, minutes) and
    its rebuild chains the commands, each continuing from the folder the previous one wrote."""
    from mambaft.recipes.pretrain_report import _stages
    first = {"command": "mambaft pretrain --out data/demo_base --steps 2400", "steps": 2400,
             "tokens_trained": 9_830_400, "epochs": 2.118, "train_minutes": 60.3, "tokens_per_s": 2717,
             "final_val_loss": 5.28}
    (tmp_path / "pretrain_summary.json").write_text(json.dumps({**first, "config": {}}))
    stages = pt.previous_stages(tmp_path)
    assert stages == [first]
    assert pt.previous_stages(tmp_path / "none") == []
    now = {"command": f"mambaft pretrain --out /work/pt2 --init-from {tmp_path} --lr 0.001 --steps 4400",
           "steps": 4400, "tokens_trained": 18_022_400, "epochs": 2.91, "train_minutes": 112.0,
           "tokens_per_s": 2680, "stages": stages}
    lines, rebuild = _stages(now)
    assert "- stage 1: 2,400 steps, 9,830,400 tokens" in lines and "- stage 2: 4,400 steps" in lines
    # 2,400 + 4,400 steps; 9,830,400 + 18,022,400 tokens; 60.3 + 112.0 minutes
    assert "- in all: 6,800 steps, 27,852,800 tokens, 172.3 min of training" in lines
    assert rebuild.splitlines() == [
        "mambaft pretrain --out runs/demo_base.stage1 --steps 2400",
        "mambaft pretrain --out /work/pt2 --init-from runs/demo_base.stage1 --lr 0.001 --steps 4400"]
    assert _stages({"command": "mambaft pretrain --steps 9"}) == ("", "mambaft pretrain --steps 9")


def test_a_time_budget_chooses_the_steps_from_the_median_probe_step():
    # 5 probe steps: the first two (10 s, 9 s: warm-up) are skipped; median of 1, 2, 3 s = 2 s;
    # 60 s / (2 s x 1.08 for the evaluations) = 27.8 -> 27 steps
    assert pt.budget_steps(1.0, [10.0, 9.0, 1.0, 3.0, 2.0]) == 27
    assert pt.budget_steps(1.0, [0.5]) == 111            # one probe step (no warmup): 60 / 0.54 = 111.1
    assert pt.budget_steps(0.001, [1.0, 1.0, 1.0]) == 4  # 0.06 s fits no step: one past the probe
    assert pt.probe_steps(pt.PretrainConfig(minutes=5, warmup_steps=50)) == 12
    assert pt.probe_steps(pt.PretrainConfig(minutes=5, warmup_steps=3)) == 3   # stays inside the warmup
    assert pt.probe_steps(pt.PretrainConfig(minutes=5, warmup_steps=0)) == 1
    assert pt.probe_steps(pt.PretrainConfig(minutes=0)) == 0


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="seq_len=2048"):
        pt.PretrainConfig(seq_len=2048).validate()
    with pytest.raises(ValueError, match="needs --init-from"):
        pt.PretrainConfig(architecture="selective").validate()
    assert pretrain_cli.main(["--seq-len", "0"]) == 2


@pytest.mark.slow   # pretraining runs
def test_tiny_run_end_to_end(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT * 60)
    out = tmp_path / "m"
    argv = ["--text-file", str(text), "--out", str(out), "--d-model", "16", "--dense-hidden-dim", "32",
            "--n-layers", "2", "--max-seq-len", "64", "--seq-len", "64", "--batch-size", "2", "--steps", "12",
            "--warmup-steps", "2", "--lr", "1e-2", "--val-fraction", "0", "--log-every", "1", "--threads", "1"]
    assert pretrain_cli.main(argv) == 0
    s = json.loads((out / "pretrain_summary.json").read_text())
    losses = [json.loads(line)["loss"] for line in (out / "pretrain_log.jsonl").read_text().splitlines()
              if "loss" in line]
    assert len(losses) == 12 and losses[-1] < losses[0] - 1.0   # a repeated sentence is easy to learn
    assert s["steps"] == 12 and s["tokens_trained"] == 12 * 2 * 64
    assert s["symptoms"]["greedy_eos_emitted"] == 0
    assert s["command"].endswith("--steps 12") and "--text-file" in s["command"]
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
        assert "lm_head.weight" not in f.keys()                      # tied: stored once
    from mambaft.checkpoint import load_checkpoint
    model, info = load_checkpoint(out)
    assert model.token_embedding.weight.dtype == torch.float32
    assert model.config.receptive_field == 7 and info.step == 12
    card = (out / "MODEL_CARD.md").read_text()
    assert s["command"] in card and "as given by the user" in card
    # continued pretraining of the selective upgrade (the context repair) starts where the base was
    sel = tmp_path / "sel"
    assert pretrain_cli.main(["--text-file", str(text), "--out", str(sel), "--init-from", str(out), "--architecture",
                    "selective", "--ssm-state", "4", "--seq-len", "64", "--batch-size", "2", "--steps", "3",
                    "--warmup-steps", "1", "--val-fraction", "0", "--log-every", "1", "--threads", "1",
                    "--no-card"]) == 0
    s2 = json.loads((sel / "pretrain_summary.json").read_text())
    assert s2["upgraded_to"] == "selective (ssm_state 4)" and s2["init_step"] == 12
    first = json.loads((sel / "pretrain_log.jsonl").read_text().splitlines()[0])["loss"]
    assert abs(first - losses[-1]) < 0.5          # function-preserving upgrade: no jump back to 10.8
    m2, _ = load_checkpoint(sel)
    assert m2.config.architecture == "selective" and not (sel / "MODEL_CARD.md").exists()


@pytest.mark.slow   # pretraining runs
def test_a_time_budget_run_records_the_steps_it_chose(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT * 60)
    # 0.0001 min = 6 ms fits no step: the budget chooses one step past the 3 probe steps (warmup 3)
    cfg = pt.PretrainConfig(out=str(tmp_path / "m"), sources={}, text_files=(str(text),), d_model=16,
                            dense_hidden_dim=32, n_layers=2, max_seq_len=64, seq_len=64, batch_size=2,
                            max_steps=50, minutes=0.0001, warmup_steps=3, val_fraction=0.0, log_every=1,
                            threads=1)
    s = pt.pretrain(cfg, argv=["--text-file", str(text), "--minutes", "0.0001"], write_card=False)
    assert s["steps"] == 4 and s["config"]["max_steps"] == 4 and s["tokens_trained"] == 4 * 2 * 64
    assert s["command"].endswith("--steps 4") and "--minutes" not in s["command"]
    assert cfg.max_steps == 50                                   # the caller's config is left as given
    steps = [json.loads(line)["step"] for line in (tmp_path / "m" / "pretrain_log.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]
    assert "time budget 0.0001 min" in (tmp_path / "m" / "pretrain.log").read_text()
    from mambaft.checkpoint import load_checkpoint
    assert load_checkpoint(tmp_path / "m")[1].step == 4


@pytest.fixture(scope="module")
def demo():
    if not (DEMO / "model.safetensors").is_file():
        pytest.fail(f"{DEMO} is missing: rebuild it with the command in its MODEL_CARD.md")
    from mambaft.checkpoint import load_checkpoint
    return load_checkpoint(DEMO)


def test_shipped_demo_base_fits_and_has_the_124m_architecture(demo):
    model, info = demo
    # one weights file of at most 64 MB in bf16 (the demo-base issue's limit; 17.7M x 2 B = 35 MB now)
    assert (DEMO / "model.safetensors").stat().st_size <= 64 * 1024 * 1024
    cfg = model.config
    assert (cfg.vocab_size, cfg.n_layers, cfg.d_conv, cfg.expand, cfg.max_seq_len) == (50257, 6, 4, 2, 1024)
    assert cfg.receptive_field == 19 and cfg.architecture == "original" and cfg.tie_embeddings
    for f in ("config.json", "tokenizer.json", "chat_template.json", "MODEL_CARD.md", "pretrain_summary.json"):
        assert (DEMO / f).is_file(), f
    card = (DEMO / "MODEL_CARD.md").read_text()
    s = json.loads((DEMO / "pretrain_summary.json").read_text())
    from mambaft.recipes.pretrain_report import _stages
    for needle in ("## Data", "CC BY-SA 4.0", "## Training", "## What it knows", "## Rebuild", _stages(s)[1],
                   f"{s['steps']:,} x", f"validation loss {s['final_val_loss']}"):
        assert needle in card, needle
    assert s["final_val_loss"] < 8.0                      # learned something: uniform is ln 50257 = 10.8
    # every offline plain-text source was trained on, and each one's held-out split was scored
    from mambaft.recipes.pretrain_report import HELDOUT_SOURCES
    assert {x["name"] for x in s["sources"]} == set(HELDOUT_SOURCES) == set(s["knowledge"]["heldout_bpb"])
    for name, bpb in s["knowledge"]["heldout_bpb"].items():
        assert f"| {name} | {bpb:.3f} |" in card


def test_shipped_demo_base_loops_and_never_ends(demo):
    from mambaft.generate import generate
    model, info = demo
    tok = info.tokenizer
    prompts = ["The history of the city", "User: What is the capital of France?\nAssistant:"]
    # 120 tokens: a 19-token model's greedy decoding falls into a cycle, and the two-stage base takes a
    # while to enter it (repeated 4-grams measured 0.14 / 0.33 at 60 tokens, 0.33 / 0.68 at 120)
    outs = generate(model, [tok.encode(p) for p in prompts], max_new_tokens=120)
    for p, o in zip(prompts, outs):
        new = o[len(tok.encode(p)):]
        assert tok.eos_id not in new
        assert repeated_fraction(new) > 0.2, tok.decode(new)      # greedy decoding loops
    with torch.no_grad():
        f = model.features(torch.tensor([tok.encode(TEXT)]))
        p_end = torch.softmax(model.lm_head(f).float(), -1)[..., tok.eos_id]
    assert float(p_end.max()) < 1e-3     # a behaviour threshold (never ends), not a rounding tolerance


@pytest.mark.slow   # three tiny pretraining runs
def test_a_killed_run_resumes_exactly(tmp_path, monkeypatch):
    """Stopped after step 5 of 12 (its state saved every 5 steps), started again with the same
    command: the same losses, the same final weights as the run that was never stopped."""
    text = tmp_path / "t.txt"
    text.write_text(TEXT * 60)
    common = ["--text-file", str(text), "--d-model", "16", "--dense-hidden-dim", "32", "--n-layers", "2",
              "--max-seq-len", "64", "--seq-len", "32", "--batch-size", "2", "--steps", "12",
              "--warmup-steps", "2", "--lr", "1e-2", "--val-fraction", "0.2", "--eval-every", "4",
              "--log-every", "1", "--threads", "1", "--save-every", "5", "--no-card"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert pretrain_cli.main(common + ["--out", str(whole)]) == 0

    from mambaft.recipes import pretrain as recipe
    real_save = recipe.save_state

    def save_then_die(folder, **kw):
        real_save(folder, **kw)
        if kw["step"] == 5:
            raise KeyboardInterrupt("killed after the step-5 state")
    monkeypatch.setattr(recipe, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain_cli.main(common + ["--out", str(cut)])
    assert (tmp_path / "cut.resume" / "state.pt").is_file() and not cut.exists()
    monkeypatch.setattr(recipe, "save_state", real_save)
    assert pretrain_cli.main(common + ["--out", str(cut)]) == 0
    assert not (tmp_path / "cut.resume").exists()             # removed once the folder is written

    def records(folder):
        return [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "elapsed_s")}
                for line in (folder / "pretrain_log.jsonl").read_text().splitlines()]
    assert records(cut) == records(whole)                      # every loss, val loss and grad norm
    assert "resuming at step 5 of 12" in (cut / "pretrain.log").read_text()
    from safetensors.torch import load_file
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_with_other_settings_is_refused(tmp_path):
    from mambaft.errors import UserError
    from mambaft.recipes.pretrain import PretrainConfig
    from mambaft.recipes.pretrain_state import load_state, state_dir
    cfg = PretrainConfig(out=str(tmp_path / "m"), lr=1e-3)
    folder = state_dir(cfg)
    folder.mkdir()
    torch.save({"fingerprint": __import__("mambaft.recipes.pretrain_state", fromlist=["x"]).fingerprint(cfg)},
               folder / "state.pt")
    assert load_state(folder, cfg)["fingerprint"]["lr"] == 1e-3
    assert load_state(folder, PretrainConfig(out=cfg.out, lr=1e-3, log_every=3, threads=1)) is not None
    with pytest.raises(UserError, match=r"other settings \(lr: saved 0.001, now 0.002\)"):
        load_state(folder, PretrainConfig(out=cfg.out, lr=2e-3))
    (folder / "state.pt").write_bytes(b"not a state")
    with pytest.raises(UserError, match="unreadable resume state"):
        load_state(folder, cfg)
