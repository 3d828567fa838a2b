"""mambaft.course.ranges (`mambaft ranges`) on small synthetic run folders (the files `mambaft course` writes)."""
from __future__ import annotations

import json

import pytest

from mambaft.cli import ranges as ranges_cli
from mambaft.course import ranges as course_ranges

AVX512 = "AVX512 + bf16 (AMX/AVX512-BF16), auto precision bf16"
AVX2 = "AVX2, auto precision fp32 (emulated: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2)"


def _run(root, name, *, cpu=AVX512, strategy="quick", stop=0.9, rep3=0.1, tokens=20.0, fr=None, seed=0):
    d = root / name
    (d / "04_evaluation").mkdir(parents=True)
    (d / "course.json").write_text(json.dumps({
        "strategy": strategy, "params": {"SEED": seed}, "total_seconds": 420.0,
        "command": f"mambaft course --out {root} --run-name {name} --set SEED={seed}",
        "environment": {"cpu_class": cpu, "auto_precision": "bf16" if cpu == AVX512 else "fp32"}}))
    by_lang = {"en": {"stop_rate": 1.0, "rep_3": 0.0, "pass_rate": 0.5, "n": 7}}
    if fr is not None:
        by_lang["fr"] = {"stop_rate": fr[0], "rep_3": fr[1], "pass_rate": 0.2, "n": 8}
    (d / "04_evaluation" / "summary.json").write_text(json.dumps({
        "models": {"base": {"stop_rate": 0.0, "rep_3": 0.6},
                   "fine-tuned": {"stop_rate": stop, "rep_3": rep3, "mean_new_tokens": tokens,
                                  "probe_pass_rate": 0.3, "probes_by_lang": by_lang}},
        "chosen": {"step": 200, "rule": "behaviour", "candidates": [{"step": 100, "val_loss": 6.5},
                                                                    {"step": 200, "val_loss": 6.4}]}}))
    return d


def test_ranges_are_min_max_per_strategy_and_cpu_class(tmp_path, capsys):
    runs = [_run(tmp_path, "s0", stop=0.9, rep3=0.1, tokens=12.0),
            _run(tmp_path, "s1", stop=0.95, rep3=0.2, tokens=18.5, seed=1),
            _run(tmp_path, "a0", cpu=AVX2, stop=0.88, rep3=0.05),
            _run(tmp_path, "spec", strategy="specialized", fr=(0.7, 0.1))]
    recs = [course_ranges.read_run(r) for r in runs]
    assert recs[0]["val_loss"] == 6.4 and recs[0]["checkpoint"] == "step 200 (behaviour)"
    assert recs[0]["minutes"] == 7.0 and recs[1]["seed"] == 1
    groups = {(g["strategy"], g["cpu_class"]): g for g in course_ranges.ranges(recs)}
    native = groups[("quick", AVX512)]
    assert native["runs"] == 2 and native["stop_rate"] == (0.9, 0.95) and native["rep_3"] == (0.1, 0.2)
    assert native["mean_new_tokens"] == (12.0, 18.5) and native["all_meet_bounds"]
    assert groups[("quick", AVX2)]["stop_rate"] == (0.88, 0.88)
    # the French probes stop in 0.7 < 0.85 of replies: the specialized run misses the bounds
    assert recs[3]["fr_probe_stop"] == 0.7 and not recs[3]["meets_bounds"]
    assert not groups[("specialized", AVX512)]["all_meet_bounds"]

    out = tmp_path / "ranges.md"
    assert ranges_cli.main([str(r) for r in runs] + ["--markdown", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"| quick | {AVX512} | 2 | 0.90-0.95 | 0.10-0.20 | 12.0-18.5 |" in text
    assert f"mambaft course --out {tmp_path} --run-name a0 --set SEED=0" in text
    assert "outside the bounds (stop >= 0.85, rep_3 <= 0.25): spec" in text
    assert out.read_text() in text


def test_no_reply_with_three_words_means_no_repeated_3_grams(tmp_path):
    rec = course_ranges.read_run(_run(tmp_path, "short", rep3=None, tokens=2.5))
    assert rec["rep_3"] == 0.0 and rec["meets_bounds"]


def test_bounds_are_inclusive_and_name_the_probes_per_strategy():
    rec = {"strategy": "specialized", "stop_rate": 0.85, "rep_3": 0.25, "en_probe_stop": 0.85,
           "en_probe_rep_3": 0.25, "fr_probe_stop": 0.9, "fr_probe_rep_3": 0.0}
    assert course_ranges.meets_bounds(rec)
    assert not course_ranges.meets_bounds({**rec, "rep_3": 0.26})
    assert not course_ranges.meets_bounds({**rec, "stop_rate": None})
    assert not course_ranges.meets_bounds({**rec, "fr_probe_rep_3": 0.3})      # the domain's probes count
    quick = {**rec, "strategy": "quick", "en_probe_rep_3": 0.4, "fr_probe_stop": 0.5}
    assert course_ranges.meets_bounds(quick)                                     # quick: all replies only
    assert not course_ranges.meets_bounds({**quick, "strategy": "conversational"})


def test_a_folder_that_is_not_a_run_is_named(tmp_path, capsys):
    assert ranges_cli.main([str(tmp_path)]) == 2
    assert f"{tmp_path / 'course.json'}: missing" in capsys.readouterr().err
    d = _run(tmp_path, "x")
    s = json.loads((d / "04_evaluation" / "summary.json").read_text())
    del s["models"]["fine-tuned"]
    (d / "04_evaluation" / "summary.json").write_text(json.dumps(s))
    with pytest.raises(course_ranges.RunFolderError, match="no 'fine-tuned' model"):
        course_ranges.read_run(d)
