"""mambaft.course.ranges (`mambaft ranges`) on run folders: synthetic ones in the format `mambaft course`
writes, one written before issue 23 (the last round's format: no distinct or bare rates), and ones
written by the real writers (evaluate_model -> compare_models -> notebook 04's summary) from stub
models: the canned "A." model of issue 23 fails the bounds, a varied one meets them."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from mambaft.cli import ranges as ranges_cli
from mambaft.course import ranges as course_ranges

AVX512 = "AVX512 + bf16 (AMX/AVX512-BF16), auto precision bf16"
AVX2 = "AVX2, auto precision fp32 (emulated: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2)"


def _course_json(d, root, name, *, cpu=AVX512, strategy="quick", seed=0):
    """course.json as mambaft.course.runner writes it."""
    (d / "course.json").write_text(json.dumps({
        "strategy": strategy, "base": "data/demo_base", "params": {"SEED": seed}, "seconds": {},
        "total_seconds": 420.0, "command": f"mambaft course --out {root} --run-name {name} --set SEED={seed}",
        "environment": {"cpu_class": cpu, "auto_precision": "bf16" if cpu == AVX512 else "fp32"}}))


def _run(root, name, *, cpu=AVX512, strategy="quick", stop=0.95, rep3=0.05, distinct=0.9, bare=0.05, words=8.0,
         tokens=20.0, probes=0.3, base_probes=0.1, fr=None, seed=0):
    d = root / name
    (d / "04_evaluation").mkdir(parents=True)
    _course_json(d, root, name, cpu=cpu, strategy=strategy, seed=seed)
    by_lang = {"en": {"stop_rate": 1.0, "rep_3": 0.0, "pass_rate": 0.5, "n": 7}}
    if fr is not None:
        by_lang["fr"] = {"stop_rate": fr[0], "rep_3": fr[1], "pass_rate": 0.2, "n": 8}
    (d / "04_evaluation" / "summary.json").write_text(json.dumps({
        "models": {"base": {"stop_rate": 0.0, "rep_3": 0.6, "probe_pass_rate": base_probes},
                   "fine-tuned": {"replies_split": "test", "replies": 30, "stop_rate": stop, "rep_3": rep3,
                                  "distinct_replies": distinct, "bare_rate": bare, "mean_words": words,
                                  "mean_new_tokens": tokens, "probe_pass_rate": probes, "probes_by_lang": by_lang}},
        "chosen": {"step": 200, "rule": "behaviour", "candidates": [{"step": 100, "val_loss": 6.5},
                                                                    {"step": 200, "val_loss": 6.4}]}}))
    return d


def test_ranges_are_min_max_per_strategy_and_cpu_class(tmp_path, capsys):
    runs = [_run(tmp_path, "s0", stop=0.9, rep3=0.1, tokens=12.0, distinct=0.8),
            _run(tmp_path, "s1", stop=0.95, rep3=0.02, tokens=18.5, distinct=0.97, seed=1),
            _run(tmp_path, "a0", cpu=AVX2, stop=0.92, rep3=0.05),
            _run(tmp_path, "spec", strategy="specialized", fr=(0.7, 0.1))]
    recs = [course_ranges.read_run(r) for r in runs]
    assert recs[0]["val_loss"] == 6.4 and recs[0]["checkpoint"] == "step 200 (behaviour)"
    assert recs[0]["minutes"] == 7.0 and recs[1]["seed"] == 1 and recs[0]["base_probe_pass_rate"] == 0.1
    groups = {(g["strategy"], g["cpu_class"]): g for g in course_ranges.ranges(recs)}
    native = groups[("quick", AVX512)]
    assert native["runs"] == 2 and native["stop_rate"] == (0.9, 0.95) and native["rep_3"] == (0.02, 0.1)
    assert native["distinct_replies"] == (0.8, 0.97) and native["bare_rate"] == (0.05, 0.05)
    assert native["mean_new_tokens"] == (12.0, 18.5) and native["all_meet_bounds"]
    assert groups[("quick", AVX2)]["stop_rate"] == (0.92, 0.92)
    # the French probes stop in 0.7 < 0.9 of replies: the specialized run misses the bounds
    assert recs[3]["fr_probe_stop"] == 0.7 and not recs[3]["meets_bounds"]
    assert recs[3]["fails"] == ["stops (FR probes)"]
    assert not groups[("specialized", AVX512)]["all_meet_bounds"]

    out = tmp_path / "ranges.md"
    assert ranges_cli.main([str(r) for r in runs] + ["--markdown", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| stop rate | rep_3 | distinct replies | bare replies | words/reply |" in text
    assert f"| quick | {AVX512} | 2 | 0.90-0.95 | 0.02-0.10 | 0.80-0.97 | 0.05 | 8.0 | 12.0-18.5 | 0.30 (0.10) |" in text
    assert f"mambaft course --out {tmp_path} --run-name a0 --set SEED=0" in text
    assert "outside the bounds: spec" in text and "spec: fails stops (FR probes)" in text
    assert "stop >= 0.9, rep_3 <= 0.1 (unmeasured fails), distinct replies >= 0.8, bare replies <= 0.1" in text
    assert out.read_text() in text


def test_bounds_are_the_issues_and_inclusive():
    rec = {"strategy": "specialized", "stop_rate": 0.9, "rep_3": 0.1, "distinct_replies": 0.8, "bare_rate": 0.1,
           "probe_pass_rate": 0.3, "base_probe_pass_rate": 0.2, "en_probe_stop": 0.9, "en_probe_rep_3": 0.1,
           "fr_probe_stop": 0.95, "fr_probe_rep_3": 0.0}
    assert course_ranges.meets_bounds(rec)
    for key, bad in (("rep_3", 0.11), ("rep_3", None), ("stop_rate", 0.89), ("stop_rate", None),
                     ("distinct_replies", 0.79), ("bare_rate", 0.11), ("bare_rate", None),
                     ("probe_pass_rate", 0.2), ("base_probe_pass_rate", None), ("fr_probe_rep_3", 0.3)):
        assert not course_ranges.meets_bounds({**rec, key: bad}), (key, bad)
    quick = {**rec, "strategy": "quick", "en_probe_rep_3": 0.4, "fr_probe_stop": 0.5}
    assert course_ranges.meets_bounds(quick)                                     # quick: the test split only
    assert not course_ranges.meets_bounds({**quick, "strategy": "conversational"})  # EN probes count


def _old_run(root, name):
    """A run folder of the last round, before issue 23: notebook 04's summary without distinct or bare
    rates, rep_3 null (no reply held 3 words), every probe and validation answer "A."."""
    d = root / name
    (d / "04_evaluation").mkdir(parents=True)
    _course_json(d, root, name)
    by_lang = {"en": {"stop_rate": 1.0, "rep_3": 0.0, "pass_rate": 0.17, "n": 6},
               "fr": {"stop_rate": 1.0, "rep_3": 0.0, "pass_rate": 0.12, "n": 8}}
    (d / "04_evaluation" / "summary.json").write_text(json.dumps({
        "models": {"base": {"stop_rate": 0.0, "rep_3": 0.6, "probe_pass_rate": 0.0},
                   "fine-tuned": {"stop_rate": 1.0, "rep_3": None, "mean_new_tokens": 2.1, "end_token_rate": 1.0,
                                  "probe_pass_rate": 2 / 14, "probes_by_lang": by_lang}},
        "chosen": {"step": 250, "rule": "behaviour", "candidates": [{"step": 250, "val_loss": 6.1}]}}))
    probes = [{"id": f"p{i}", "question": f"probe {i}?", "answer": "A.", "hit_limit": False} for i in range(14)]
    examples = [{"question": f"question {i}?", "reference": "ref", "answer": "A."} for i in range(10)]
    (d / "04_evaluation" / "compare.json").write_text(json.dumps({"rows": [], "results": [
        {"name": "base", "probes": {"results": []}},
        {"name": "fine-tuned", "probes": {"results": probes}, "answers": {"bleu": 0.0, "examples": examples}}]}))
    return d


def test_a_run_of_the_last_round_is_marked_as_not_meeting_the_new_bounds(tmp_path, capsys):
    rec = course_ranges.read_run(_old_run(tmp_path, "round-old"))
    # 24 stored replies, all "A.": 1 distinct of 24 prompts, all bare; rep_3 stays unmeasured, not 0
    assert rec["distinct_replies"] == pytest.approx(1 / 24) and rec["bare_rate"] == 1.0
    assert rec["replies_split"] == "recomputed from compare.json: 14 probe + 10 validation replies"
    assert rec["rep_3"] is None and rec["stop_rate"] == 1.0
    assert not rec["meets_bounds"] and rec["fails"] == ["does not loop", "distinct replies", "not bare"]
    assert ranges_cli.main([str(tmp_path / "round-old")]) == 0
    text = capsys.readouterr().out
    assert "| 1.00 | - | 0.04 | 1.00 | 1.0 |" in text and "| NO |" in text
    assert "round-old: fails does not loop, distinct replies, not bare" in text


# --- run folders written by the real writers, from stub models --------------------------------------------
QUESTIONS = ["What is the capital of France?", "Tell me about the Moon.", "Name a primary colour.",
             "Why is the sky blue?", "How do bees make honey?", "Who wrote Hamlet?", "What is a prime number?",
             "Quelle est la capitale de la France ?", "Dis bonjour.", "Pourquoi le ciel est-il bleu ?"]


@pytest.fixture(scope="module")
def prepared_val(tmp_path_factory):
    """A prepared folder whose val split holds 10 test questions (EN and FR sources) and 2 selection ones."""
    import datasets

    from mambaft.template import DEFAULT_TEMPLATE
    from mambaft.tokenizer import load_tokenizer
    tok = load_tokenizer()
    qs = QUESTIONS + ["Selection question one?", "Selection question two?"]
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": "A reference answer."}] for q in qs]
    rendered = [DEFAULT_TEMPLATE.render(c, tok) for c in convs]
    val = datasets.Dataset.from_dict({
        "id": [f"r{i}" for i in range(12)], "conversation_id": [f"c{i}" for i in range(12)],
        "source": ["en"] * 7 + ["fr"] * 3 + ["en"] * 2,
        "messages": convs, "input_ids": [r[0] for r in rendered], "labels": [r[1] for r in rendered],
        "heldout": ["test"] * 10 + ["selection"] * 2})
    path = tmp_path_factory.mktemp("prepared") / "data"
    datasets.DatasetDict({"train": val.remove_columns("heldout"), "val": val}).save_to_disk(str(path))
    return path


def _written_run(root, name, reply, data):
    """A run folder from stub models, written as notebook 04 writes it (compare_models, then
    evaluation_summary/final_summary/write_summary) and course.json as the runner does."""
    from mambaft import course
    from mambaft.evaluate.compare import compare_models
    from mambaft.evaluate.suite import evaluate_model
    from tests.canned import canned_lm

    d = root / name
    d.mkdir(parents=True)
    _course_json(d, root, name)
    kw = dict(data=data, max_new_tokens=24, benchmarks=(), text_sets=(), progress=False, strict=True)
    results = [evaluate_model(canned_lm(lambda q: "the the the", "base", stops=False), name="base", **kw),
               evaluate_model(canned_lm(reply, "fine-tuned"), name="fine-tuned", **kw)]
    cmp = compare_models(results, course.notebook_dir(d, "04_evaluation"))
    rows = course.evaluation_summary(cmp["results"])
    summary = course.final_summary(rows, SimpleNamespace(records=lambda: []), None, cmp["files"], None,
                                   strategy="quick")
    course.write_summary(d, "04_evaluation", summary)
    return d, summary


@pytest.mark.slow   # evaluates four stub models (probes, 10 questions, perplexity): ~4 s on 2 cores
def test_the_canned_model_fails_the_bounds_and_a_varied_one_meets_them(tmp_path, prepared_val, capsys):
    from tests.canned import always_a, varied
    canned_dir, canned = _written_run(tmp_path, "canned", always_a, prepared_val)
    varied_dir, good = _written_run(tmp_path, "varied", varied, prepared_val)
    m = canned["models"]["fine-tuned"]
    # notebook 04 says which split gave each number
    assert m["replies_split"] == "test" and m["replies"] == 10 and m["probe_replies"]["n"] == 14
    assert m["stop_rate"] == 1.0 and m["rep_3"] is None and m["too_short_3"] == 1.0
    assert m["distinct_replies"] == pytest.approx(1 / 10) and m["bare_rate"] == 1.0 and m["mean_words"] == 1.0
    assert canned["verdict"]["verdict"] == "does NOT meet the bounds: fails does not loop, distinct replies, not bare"
    assert "selection" in canned["splits"]["chosen"]
    assert good["verdict"]["verdict"] == "meets the bounds"

    rec_canned, rec_varied = course_ranges.read_run(canned_dir), course_ranges.read_run(varied_dir)
    assert not rec_canned["meets_bounds"] and rec_canned["distinct_replies"] == pytest.approx(0.1)
    assert rec_varied["meets_bounds"] and rec_varied["distinct_replies"] == 1.0 and rec_varied["bare_rate"] == 0.0
    assert rec_varied["probe_pass_rate"] > rec_varied["base_probe_pass_rate"]
    assert ranges_cli.main([str(canned_dir), str(varied_dir)]) == 0
    text = capsys.readouterr().out
    assert "outside the bounds: canned\n" in text and "varied" not in text.split("outside the bounds:")[1]
    # and the report names the split under its table
    table = (canned_dir / "04_evaluation" / "table.md").read_text()
    assert "| replies from |" in table and "| test |" in table and "Splits: probes = the fixed probes" in table


def test_a_folder_that_is_not_a_run_is_named(tmp_path, capsys):
    assert ranges_cli.main([str(tmp_path)]) == 2
    assert f"{tmp_path / 'course.json'}: missing" in capsys.readouterr().err
    d = _run(tmp_path, "x")
    s = json.loads((d / "04_evaluation" / "summary.json").read_text())
    del s["models"]["fine-tuned"]
    (d / "04_evaluation" / "summary.json").write_text(json.dumps(s))
    with pytest.raises(course_ranges.RunFolderError, match="no 'fine-tuned' model"):
        course_ranges.read_run(d)
