"""Notebook 04's main table (issue 26): the 8 columns a reader decides on, from hand-written summary
rows (course.evaluation_summary's shape); every other number stays in report.md and summary.json.

    python -m pytest -q tests/test_course_tables.py
"""
from __future__ import annotations

from mambaft import course

ROWS = {
    "base": {"replies_split": "test", "probe_pass_rate": 0.0, "stop_rate": 0.0, "rep_3": 0.3125,
             "distinct_replies": 0.9375, "bare_rate": 0.0625, "text_ppl": {"wiki_en": 613.4},
             "bleu": 1.5, "chrf": 10.9, "mean_new_tokens": 64.0},
    "fine-tuned": {"replies_split": "test", "probe_pass_rate": 0.125, "stop_rate": 1.0, "rep_3": None,
                   "distinct_replies": 0.0625, "bare_rate": 0.75, "text_ppl": {"wiki_en": 991.4, "wiki_fr": None},
                   "bleu": 0.1, "chrf": 1.35, "mean_new_tokens": 2.0},
}


def test_main_table_has_the_columns_that_matter_one_row_per_model():
    lines = course.main_table(ROWS).splitlines()
    cells = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    assert cells(lines[0]) == ["model", "replies from", "probes passed", "stop", "rep_3", "distinct", "bare",
                               "held-out ppl"]
    assert len(cells(lines[0])) <= 8 and lines[1] == "|---" * 8 + "|"
    assert cells(lines[2]) == ["base", "test", "0.00", "0.00", "0.312", "0.94", "0.06", "613.4"]
    # rep_3 None: no reply held a 3-gram, "unmeasured" (not 0); a text set without a number is left out
    assert cells(lines[3]) == ["fine-tuned", "test", "0.12", "1.00", "unmeasured", "0.06", "0.75", "991.4"]
    assert "chrF" not in lines[0] and "BLEU" not in lines[0]           # those are the report's
    assert "`report.md`" in lines[-1] and "`summary.json`" in lines[-1]


def test_two_text_sets_show_both_perplexities_in_one_cell():
    rows = {"m": {**ROWS["base"], "text_ppl": {"wiki_en": 613.4, "wiki_fr": 402.6}}}
    last = course.main_table(rows).splitlines()[2]
    assert last.rstrip(" |").endswith("wiki_en 613.4, wiki_fr 402.6")
