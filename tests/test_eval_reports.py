"""Diagnosis (measured receptive field, symptoms, verdict), `evaluate_model` end to end on a small
saved model with fixture data, and the comparison report."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import datasets
import pytest
import torch

from conftest import make_small_gpt2_model
from mambaft.evaluate import diagnosis as D
from mambaft.evaluate.lm import MambaLM
from mambaft.template import DEFAULT_TEMPLATE
from mambaft.tokenizer import load_tokenizer

FIX = Path(__file__).parent / "fixtures" / "eval"
_spec = importlib.util.spec_from_file_location("eval_scripted", FIX / "scripted.py")
scripted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scripted)
BENCH = {"hellaswag": FIX / "benchmarks/hellaswag/none/validation",
         "arc_easy": FIX / "benchmarks/ai2_arc/ARC-Easy/validation",
         "piqa": FIX / "benchmarks/piqa/plain_text/validation"}


# --- receptive field -------------------------------------------------------------------------------
def test_receptive_field_of_the_tiny_original_fixture(tiny_model):
    rf = D.measure_receptive_field(tiny_model, trials=1)
    assert rf["receptive_field"] == 7 == 1 + tiny_model.config.n_layers * 3
    assert rf["moved"] == [1, 2, 3, 4, 5, 6] and not rf["saturated"]
    assert max(rf["rel_change"][6:]) < 1e-14 < min(rf["rel_change"][:6])   # float64 rounding vs signal


def test_receptive_field_of_a_six_layer_model_is_19():
    model = make_small_gpt2_model(n_layers=6, d_model=16, dense_hidden_dim=16, max_seq_len=64)
    rf = D.measure_receptive_field(model, trials=1)
    assert rf["receptive_field"] == 19 and rf["moved"] == list(range(1, 19))


def test_receptive_field_opens_with_the_selective_path():
    from mambaft.model import upgrade_to_selective
    model = upgrade_to_selective(make_small_gpt2_model(n_layers=2, d_model=16, dense_hidden_dim=16, max_seq_len=64))
    assert D.measure_receptive_field(model, max_k=12, trials=1)["receptive_field"] == 7   # gate 0: same function
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".gate"):
                p.fill_(0.5)
    rf = D.measure_receptive_field(model, max_k=12, trials=1)
    assert rf["saturated"] and rf["receptive_field"] == 13


# --- symptoms and verdict ---------------------------------------------------------------------------
def test_symptoms_on_scripted_replies():
    tok = load_tokenizer()
    prompts = D.SYMPTOM_PROMPTS[:3]   # capital_en, photosynthesis_en, romeo_en
    key = lambda p: tuple(DEFAULT_TEMPLATE.prompt_ids([{"role": "user", "content": p.question}], tok))
    scripts = {key(prompts[0]): tok.encode(" the cat the cat the cat the cat the cat") + [tok.eos_id],
               key(prompts[1]): tok.encode(" Plants use light to make sugar.") + [tok.eos_id],
               key(prompts[2]): tok.encode(" It is a play by the famous Marco Delgado in Spain.")}
    lm = MambaLM(scripted.ScriptedModel(replies=scripts), tok, DEFAULT_TEMPLATE)
    s = D.symptoms(lm, prompts, max_new_tokens=20)
    by = {r["id"]: r for r in s["replies"]}
    assert by["capital_en"]["loop"] and by["capital_en"]["off_topic"] and not by["capital_en"]["no_stop"]
    assert not by["photosynthesis_en"]["loop"] and not by["photosynthesis_en"]["off_topic"]
    assert by["photosynthesis_en"]["invented_names"] == []
    assert by["romeo_en"]["invented_names"][:2] == ["Marco", "Delgado"]
    assert by["romeo_en"]["no_stop"] and not by["romeo_en"]["off_topic"]     # "play" is a topic word
    assert by["romeo_en"]["loop"]          # after its sentence the stub repeats " the" to the limit
    # counts / n in float64: approx's default rel 1e-6
    assert s["rates"] == {"loop": pytest.approx(2 / 3), "off_topic": pytest.approx(1 / 3),
                          "invented_names": pytest.approx(1 / 3), "no_stop": pytest.approx(1 / 3)}


def test_diagnose_writes_a_verdict_for_a_19_token_model(tmp_path):
    model = make_small_gpt2_model(n_layers=6, d_model=16, dense_hidden_dim=16, max_seq_len=64)
    d = D.diagnose((model, load_tokenizer(), DEFAULT_TEMPLATE), max_new_tokens=6, trials=1)
    assert d["receptive_field"]["receptive_field"] == 19
    assert d["facts"]["dead_parameters"] == sum(p.numel() for _, p in model.dead_parameters())
    v = d["verdict"]
    assert "last 19 tokens" in v and "CANNOT" in v and 'architecture="selective"' in v
    assert f"{d['facts']['dead_parameters']:,} parameters" in v
    assert 0 <= d["end_token"]["mean"] < 0.01      # random weights: no learned end token
    files = D.write_report(d, tmp_path)
    assert json.loads(files[0].read_text())["receptive_field"]["receptive_field"] == 19
    assert "## Verdict" in files[1].read_text()


# --- evaluate_model end to end ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared_data(tmp_path_factory):
    tok = load_tokenizer()
    convs = [[{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
             [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there!"},
              {"role": "user", "content": "And bye?"}, {"role": "assistant", "content": "Goodbye!"}],
             [{"role": "user", "content": "Bonjour"}, {"role": "assistant", "content": "Bonjour !"}]]
    # a 4th val conversation of the selection split (it chose the checkpoint): evaluation never scores it
    selection = [{"role": "user", "content": "Which row chose the checkpoint?"}, {"role": "assistant", "content": "Me."}]
    rendered = [DEFAULT_TEMPLATE.render(c, tok) for c in convs + [selection]]
    cols = {"id": ["a", "b", "c", "d"], "source": ["chat", "chat", "fr", "chat"], "lang": ["en", "en", "fr", "en"],
            "messages": convs + [selection], "input_ids": [r[0] for r in rendered], "labels": [r[1] for r in rendered],
            "heldout": ["test", "test", "test", "selection"]}
    val = datasets.Dataset.from_dict(cols)
    dd = datasets.DatasetDict({"train": val.remove_columns("heldout"), "val": val})
    path = tmp_path_factory.mktemp("prepared") / "data"
    dd.save_to_disk(str(path))
    n_trained = sum(sum(1 for x in r[1][1:] if x != -100) for r in rendered[:3])
    return path, n_trained


@pytest.fixture(scope="module")
def heldout_text(tmp_path_factory):
    from mambaft.data.text import is_heldout
    ids = [f"doc-{i}" for i in range(400) if is_heldout(f"local/doc-{i}")][:2]
    path = tmp_path_factory.mktemp("text") / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": "The river flows to the sea. " * 20}) + "\n" for i in ids)
                    + json.dumps({"id": "train-doc", "text": "x"}) + "\n")
    return path


def _quick(folder, prepared_data, heldout_text, out, name=None, **kw):
    from mambaft.evaluate.suite import evaluate_model
    args = dict(data=prepared_data[0], out=out, name=name, max_new_tokens=6, bench_source=BENCH,
                text_sets=[str(heldout_text)], text_tokens=200, progress=False, strict=True)
    return evaluate_model(folder, **{**args, **kw})


@pytest.fixture(scope="module")
def quick_result(small_gpt2_folder, prepared_data, heldout_text, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "base"
    return _quick(small_gpt2_folder, prepared_data, heldout_text, out, name="base"), out


def test_evaluate_model_end_to_end(small_gpt2_folder, prepared_data, heldout_text, quick_result):
    res, out = quick_result
    assert res["errors"] == {}
    assert res["probes"]["summary"]["total"] == 14
    inst = res["perplexity"]["instruction"]
    assert inst["all"]["tokens"] == prepared_data[1] and set(inst["by_source"]) == {"chat", "fr"}
    assert 1000 < inst["all"]["ppl"] < 500_000                 # random weights: near the vocab size
    text = res["perplexity"]["text"][str(heldout_text)]
    assert text["docs"] == 2 and text["tokens"] == 200        # 139 + 61: the budget cuts doc 2
    assert res["answers"]["n"] == 3 and 0 <= res["answers"]["chrf"] <= 100
    # the reply numbers come from the 3 test questions alone, the probes' apart (issue 23)
    assert res["degeneration"]["split"] == "test" and res["degeneration"]["replies"] == 3
    assert res["probes"]["degeneration"]["replies"] == 14
    assert "Which row chose the checkpoint?" not in [r["question"] for r in res["answers"]["replies"]]
    assert res["settings"]["heldout"] == "test" and res["settings"]["heldout_rows"] == 3
    assert {b: r["n"] for b, r in res["benchmarks"].items()} == {"hellaswag": 2, "arc_easy": 2, "piqa": 2}
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["probes"]["summary"] == res["probes"]["summary"]
    # deterministic given the seed (the generation and perplexity parts run again)
    again = _quick(small_gpt2_folder, prepared_data, heldout_text, None, name="base", benchmarks=(), text_sets=())
    for key in ("probes", "answers", "degeneration", "end_token"):
        assert again[key] == on_disk[key], key
    assert again["perplexity"]["instruction"] == on_disk["perplexity"]["instruction"]


def test_heldout_picks_the_val_rows_that_evaluation_scores(small_gpt2_folder, prepared_data, heldout_text):
    from mambaft.cli.evaluate import build_parser, kwargs_from_args
    kw = kwargs_from_args(build_parser().parse_args(["--model", "m", "--heldout", "selection"]))
    assert kw["heldout"] == "selection"
    assert kwargs_from_args(build_parser().parse_args(["--model", "m"]))["heldout"] == "test"
    res = _quick(small_gpt2_folder, prepared_data, heldout_text, None, probes=False, benchmarks=(), text_sets=(),
                 heldout="selection")
    assert [r["question"] for r in res["answers"]["replies"]] == ["Which row chose the checkpoint?"]
    assert res["degeneration"]["split"] == "selection" and res["settings"]["heldout_rows"] == 1


@pytest.mark.parametrize("argv, says", [
    (["--limit", "0"], "--limit 0: expected at least 1 item"),
    (["--bench-limit", "-3"], "--bench-limit -3: expected at least 1 item"),
    (["--max-new", "0"], "--max-new 0: expected 1 to 100,000 new tokens"),
    (["--bench", "arc_easy", "mmlu-typo"], "--bench mmlu-typo: unknown; expected some of "),
])
def test_evaluate_refuses_bad_counts_and_names_in_one_line(argv, says, capsys):
    from mambaft.cli import main
    for cmd in (["evaluate", "--model", "m"], ["compare", "m", "--out", "o"]):
        with pytest.raises(SystemExit) as e:
            main(cmd + argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"mambaft {cmd[0]}: error: {says}"), err


def test_none_means_no_benchmarks_and_no_text_sets():
    from mambaft.cli.evaluate import build_parser, check_args, kwargs_from_args
    p = build_parser()
    for argv, bench, text in ((["--bench", "none", "--text", "NONE"], [], []),
                              (["--bench", "--text"], [], []),
                              (["--bench", "arc_easy", "--text", "wiki_fr"], ["arc_easy"], ["wiki_fr"])):
        a = p.parse_args(["--model", "m"] + argv)
        check_args(p, a)
        kw = kwargs_from_args(a)
        assert (kw["benchmarks"], kw["text_sets"]) == (bench, text), argv


def test_missing_or_mismatched_model_files_are_clear_errors(tmp_path):
    from mambaft.checkpoint import CheckpointError
    from mambaft.evaluate.suite import evaluate_model
    with pytest.raises(FileNotFoundError, match="nope"):
        evaluate_model(tmp_path / "nope", progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"not safetensors")
    (bad / "config.json").write_text(json.dumps({"format": "mambaft-model", "model": {"n_layers": 2}}))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        evaluate_model(bad, progress=False)
    with pytest.raises(FileNotFoundError, match="prepared dataset"):
        from mambaft.evaluate.suite import load_val_split
        load_val_split(tmp_path / "no-data")


# --- comparison ------------------------------------------------------------------------------------
@pytest.mark.slow   # evaluates several models
def test_compare_models_writes_table_plots_and_side_by_side_report(quick_result, tmp_path):
    from mambaft.evaluate.compare import compare_models
    a = json.loads(json.dumps(quick_result[0]))
    a["model"]["step"] = 0
    (tmp_path / "a.json").write_text(json.dumps(a))
    b = json.loads(json.dumps(a))
    b["name"], b["model"]["step"] = "final", 5000
    b["probes"]["results"][0]["answer"] = "Paris."
    out = tmp_path / "cmp"
    res = compare_models([tmp_path / "a.json", b], out)
    names = [r["name"] for r in res["rows"]]
    assert names == ["base", "final"]
    for f in ("compare.json", "table.csv", "table.md", "report.md", "report.html",
              "probes.png", "perplexity.png", "degeneration.png", "benchmarks.png", "progress.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    md = (out / "report.md").read_text()
    assert "| final | Paris. | fail |" in md                 # each probe's answers next to each other
    assert md.count("### ") == 14
    html = (out / "report.html").read_text()
    assert "<img src='probes.png'" in html and html.count("<h3>") == 14
    # both reports say which split gave the reply numbers
    assert "| replies from |" in md and "| test |" in md and "Splits: probes = the fixed probes" in md
    assert "Splits: probes = the fixed probes" in html
    row = res["rows"][0]
    assert row["probes"] == a["probes"]["summary"]["pass_rate"]
    assert row["ppl_instr"] == pytest.approx(a["perplexity"]["instruction"]["all"]["ppl"])   # copied, not recomputed


@pytest.mark.slow   # evaluates through the CLI
def test_cli_commands(small_gpt2_folder, prepared_data, tmp_path, capsys):
    from mambaft.cli import main
    rc = main(["evaluate", "--model", str(small_gpt2_folder), "--data", str(prepared_data[0]), "--out",
               str(tmp_path / "e"), "--max-new", "4", "--bench", "none", "--text", "none", "--limit", "2", "--strict",
               "--no-probes"])
    assert rc == 0
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    assert res["answers"]["n"] == 2 and res["perplexity"]["instruction"]["rows"] == 2
    assert "benchmarks" not in res and "text" not in res["perplexity"] and "probes" not in res
    rc = main(["compare", str(tmp_path / "e"), str(tmp_path / "e" / "results.json"), "--out", str(tmp_path / "c"),
               "--names", "one", "two"])
    assert rc == 0 and (tmp_path / "c" / "report.html").is_file()
    assert "| one |" in capsys.readouterr().out
    rc = main(["diagnose", "--model", str(small_gpt2_folder), "--out", str(tmp_path / "d"), "--max-new", "4",
               "--trials", "1"])
    assert rc == 0 and json.loads((tmp_path / "d" / "diagnosis.json").read_text())["receptive_field"]["receptive_field"] == 7


def test_across_checkpoints_puts_the_base_at_fine_tune_step_0():
    from mambaft.evaluate.compare import progress_points

    def r(name, step, trained, kind="mambaswelu"):
        return {"name": name, "model": {"step": step, "trained": trained, "kind": kind}}

    # the demo base's own step (1558) counts pretraining: at x=1558 it sat right of fine-tune step 300
    res = [r("base", 1558, "pretrain"), r("step 200", 200, "finetune"), r("step 300", 300, "finetune"),
           r("fine-tuned", 300, "finetune"), r("SmolLM2", None, None, "hf-chat")]
    pts = progress_points(res)
    assert [(x, label, p["name"]) for x, label, p in pts] == [
        (0, "0: base\n(pretrain step 1558)", "base"), (200, "200", "step 200"), (300, "300", "step 300")]
    old = [{"name": "a", "model": {"step": 0}}, {"name": "b", "model": {"step": 5000}}]   # no "trained"
    assert [x for x, _, _ in progress_points(old)] == [0, 5000]


def test_probe_plot_fits_a_notebook_and_labels_every_bar():
    from mambaft.evaluate.compare import probe_figure
    kinds = ["fact", "arithmetic", "context", "no invention", "instruction", "stops"]
    names = ["base", "step 200", "step 300", "fine-tuned"]
    res = [{"name": n, "probes": {"summary": {"by_kind": {k: 0.5 * (i == 3) for k in kinds}}}}
           for i, n in enumerate(names)]
    fig = probe_figure(res, kinds)
    width_px = fig.get_size_inches()[0] * 110          # saved at 110 dpi
    assert width_px <= 800                              # a notebook column shows it unshrunk
    ax = fig.axes[0]
    assert len(ax.texts) == len(kinds) * len(names)     # every rate written, the zeros too
    assert all(t.get_fontsize() >= 8 for t in ax.texts)
    assert all(t.get_fontsize() >= 10 for t in ax.get_yticklabels())
