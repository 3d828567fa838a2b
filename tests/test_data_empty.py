"""Issue 28, finding 10: empty outcomes are errors, and one bad row costs one row.

Before: data that filtered to nothing crashed inside `datasets` ("Keys mismatch") or was written as a
0-row dataset with rc 0; one lone-surrogate line aborted the whole prepare; a truncated .jsonl.gz gave
a bare EOFError.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from mambaft.config import make_config
from mambaft.data.schema import BadRows, FormatError
from mambaft.errors import DataError

HUB = Path(__file__).parent / "fixtures" / "hub"


def _cfg(**kw):
    return make_config("conversational", data_mode="offline", offline_sources={"dolly": 1.0},
                       max_seq_len=64, val_fraction=0.3, **kw)


def test_data_that_filters_to_nothing_is_refused_with_the_filter_counts(tmp_path):
    from mambaft.data.prepare import prepare
    with pytest.raises(DataError, match=r"no training rows left after loading and filtering: dolly: \d+ loaded \(.*\d"):
        prepare(_cfg(languages=("fr",)), tmp_path / "out", sources={"dolly": str(HUB / "databricks-dolly-15k.jsonl")},
                progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))


def test_a_lone_surrogate_is_one_counted_bad_row(tmp_path):
    from mambaft.data.sources import load_source
    good = (HUB / "databricks-dolly-15k.jsonl").read_text().splitlines()[:3]
    f = tmp_path / "dolly.jsonl"
    f.write_text("\n".join([good[0], '{"instruction": "a \\ud800 b", "response": "x"}', *good[1:]]) + "\n")
    bad = BadRows()
    rows = load_source("dolly", str(f), bad=bad).rows
    assert len(rows) == 3 and bad.counts["dolly"] == 1
    assert bad.examples["dolly"][0].startswith(f"{f}:2: a lone UTF-16 surrogate")
    pair = tmp_path / "emoji.jsonl"                       # a real pair (an emoji) is fine
    pair.write_text('{"instruction": "smile \\ud83d\\ude00", "response": "ok"}\n')
    assert len(load_source("dolly", str(pair), bad=BadRows()).rows) == 1


def test_a_lone_surrogate_in_a_json_list_is_one_counted_bad_row(tmp_path):
    from mambaft.data.sources import load_source
    rows = json.loads((HUB / "alpaca_data.json").read_text())[:3]
    text = json.dumps(rows)[:-1] + ', {"instruction": "x \\udc00", "input": "", "output": "y"}]'
    f = tmp_path / "alpaca.json"
    f.write_text(text)
    bad = BadRows()
    assert len(load_source("alpaca", str(f), bad=bad).rows) == 3 and bad.counts["alpaca"] == 1


def test_a_truncated_gzip_is_a_named_error(tmp_path):
    from mambaft.data.sources import load_source
    raw = gzip.compress((HUB / "databricks-dolly-15k.jsonl").read_bytes())
    f = tmp_path / "dolly.jsonl.gz"
    f.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FormatError, match=r"dolly.jsonl.gz: the gzip file is truncated or corrupt after line \d+"):
        load_source("dolly", str(f))
