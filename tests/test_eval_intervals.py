"""Benchmarks with a 95 % interval and the chance level (issue 26): the Wilson score interval against
values computed by hand, and the lines that the report, the terminal and notebook 04 print.

    python -m pytest -q tests/test_eval_intervals.py
"""
from __future__ import annotations

import math

import pytest

from mambaft.evaluate.benchmarks import result_line
from mambaft.evaluate.compare import benchmark_lines, markdown_report, table_rows
from mambaft.evaluate.intervals import Z95, accuracy_interval, against_chance, wilson_interval
from mambaft.evaluate.suite import format_summary

# The hand values below are rounded to 4 decimals, so they match to 5e-5 and no tighter.
HAND = 5e-5


def test_wilson_interval_of_15_in_30_by_hand():
    # z = 1.96, z^2 = 3.8416, z^2/n = 0.128053, 1 + z^2/n = 1.128053
    # centre = (0.5 + 3.8416/60) / 1.128053 = 0.564027 / 1.128053 = 0.5 (symmetric at p = 1/2)
    # half   = 1.96 / 1.128053 * sqrt(0.25/30 + 3.8416/3600) = 1.737508 * sqrt(0.0094004) = 0.168462
    low, high = wilson_interval(15, 30, z=1.96)
    assert low == pytest.approx(0.3315, abs=HAND) and high == pytest.approx(0.6685, abs=HAND)


def test_wilson_interval_of_0_in_10_by_hand():
    # centre = (0 + 3.8416/20) / 1.38416 = 0.19208 / 1.38416 = 0.138770
    # half   = 1.96 / 1.38416 * sqrt(0 + 3.8416/400) = 1.416022 * 0.098 = 0.138770: the low end is 0
    low, high = wilson_interval(0, 10, z=1.96)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=HAND)
    low, high = wilson_interval(10, 10, z=1.96)               # the mirror image
    assert high == 1.0 and low == pytest.approx(1 - 0.2775, abs=HAND)


def test_the_default_z_is_the_normal_975_quantile_and_n_0_has_no_interval():
    # Phi(Z95) = 0.975: 0.5 * (1 + erf(z / sqrt 2)); erf is accurate to ~1e-16, Z95 is given to 16 digits
    assert 0.5 * (1 + math.erf(Z95 / math.sqrt(2))) == pytest.approx(0.975, abs=1e-12)
    assert wilson_interval(0, 0) is None and accuracy_interval(0.5, 0) is None
    with pytest.raises(ValueError, match="k=11"):
        wilson_interval(11, 10)
    # an accuracy is k / n: 0.4 of 30 items is 12 of them (not 11.999...)
    assert accuracy_interval(0.4, 30) == wilson_interval(12, 30)


def test_against_chance_reads_the_interval():
    assert against_chance((0.3315, 0.6685), 0.25) == "above chance"
    assert against_chance((0.3315, 0.6685), 0.5) == "not distinguishable from chance"
    assert against_chance((0.0, 0.2775), 0.5) == "below chance"
    assert against_chance(None, 0.25) == "chance unknown"


# 15 of 30 right by the raw score, 9 of 30 by acc_norm; 4 choices each: chance 0.25
BENCH = {"acc": 0.5, "acc_norm": 0.3, "n": 30, "chance": 0.25}


def test_result_line_gives_both_intervals_the_chance_level_and_the_word():
    low, high = wilson_interval(9, 30)
    line = result_line(BENCH)
    assert line.startswith("acc 0.500 [0.332, 0.668]  acc_norm 0.300 ")   # 15/30 by hand: 0.331538, 0.668462
    assert f"[{low:.3f}, {high:.3f}]" in line and low < 0.25 < high
    assert line.endswith("(n=30, 95 % intervals; chance 0.250: acc_norm not distinguishable from chance)")


def test_the_report_and_the_terminal_print_the_interval():
    res = {"name": "fine-tuned", "model": {}, "benchmarks": {"arc_easy": BENCH, "piqa": {**BENCH, "n": 0}}}
    assert f"arc_easy: {result_line(BENCH)}" in format_summary(res).splitlines()
    assert benchmark_lines([res]) == [f"fine-tuned, arc_easy: {result_line(BENCH)}"]   # n = 0: no line
    md = markdown_report([res], table_rows([res]), [])
    assert f"## Benchmarks\n\n- fine-tuned, arc_easy: {result_line(BENCH)}\n" in md
