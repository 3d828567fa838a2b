"""Notebook 04 reuses an evaluation when the model's bytes, the settings and the data are unchanged
(issue 26): the cache key, and compare's load_or_evaluate reading results back instead of evaluating.

    python -m pytest -q tests/test_eval_cache.py
"""
from __future__ import annotations

import json

from mambaft import durable
from mambaft.evaluate import cache, compare

SETTINGS = {"data": None, "limit": 30, "bench_limit": 30, "benchmarks": ("hellaswag",), "max_new_tokens": 64,
            "seed": 0}


def a_model(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (folder / "config.json").write_text('{"d_model": 32}')
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "tokenizer.json").write_text("{}")
    return folder


def flip_one_byte(path, at=100):
    data = bytearray(path.read_bytes())
    data[at] ^= 1
    path.write_bytes(bytes(data))


def test_same_inputs_hit_and_a_changed_byte_setting_or_data_file_misses(tmp_path):
    model = a_model(tmp_path / "m")
    key = cache.evaluation_key(model, SETTINGS)
    assert set(key["model"]) == {"model.safetensors", "config.json", "sub/tokenizer.json"}
    assert cache.evaluation_key(model, dict(SETTINGS)) == key                  # same inputs: same key
    assert cache.evaluation_key(model, {**SETTINGS, "benchmarks": ["hellaswag"]}) == key   # tuple == list in JSON
    for change in ({"limit": 31}, {"max_new_tokens": 16}, {"seed": 1}, {"benchmarks": ()}):
        assert cache.evaluation_key(model, {**SETTINGS, **change})["key"] != key["key"], change
    flip_one_byte(model / "model.safetensors")
    assert cache.evaluation_key(model, SETTINGS)["key"] != key["key"]
    # the data it reads: a datasets folder whose state.json (its rows' fingerprint) changed
    data = tmp_path / "data" / "val"
    data.mkdir(parents=True)
    (data / "state.json").write_text('{"_fingerprint": "a"}')
    with_data = cache.evaluation_key(model, {**SETTINGS, "data": tmp_path / "data"})
    assert with_data["data"] == {"val/state.json": durable.sha256_file(data / "state.json")}
    (data / "state.json").write_text('{"_fingerprint": "b"}')
    assert cache.evaluation_key(model, {**SETTINGS, "data": tmp_path / "data"})["key"] != with_data["key"]


def test_a_single_pt_file_is_hashed_by_its_bytes(tmp_path):
    pt = tmp_path / "base.pt"
    pt.write_bytes(b"weights")
    key = cache.evaluation_key(pt, SETTINGS)
    import hashlib
    assert key["model"] == {"base.pt": hashlib.sha256(b"weights").hexdigest()}


def test_load_or_evaluate_reads_the_cached_results_until_an_input_changes(tmp_path, monkeypatch):
    calls = []

    def fake_evaluate(entry, *, out, name, **kw):
        calls.append((name, kw["limit"]))
        res = {"name": name, "n_call": len(calls)}
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(res))
        return res

    monkeypatch.setattr(compare, "evaluate_model", fake_evaluate)
    model, out = a_model(tmp_path / "m"), tmp_path / "cmp"
    kw = dict(name="fine-tuned", limit=30, progress=False)
    assert compare.load_or_evaluate(model, out, **kw)["n_call"] == 1
    assert (out / "models" / "fine-tuned" / cache.KEY_FILE).is_file()
    assert compare.load_or_evaluate(model, out, **{**kw, "progress": True})["n_call"] == 1   # a hit: no call
    assert len(calls) == 1
    assert compare.load_or_evaluate(model, out, **{**kw, "limit": 31})["n_call"] == 2      # a setting changed
    flip_one_byte(model / "model.safetensors")
    assert compare.load_or_evaluate(model, out, **{**kw, "limit": 31})["n_call"] == 3      # a weight byte changed
    assert compare.load_or_evaluate(model, out, **{**kw, "limit": 31})["n_call"] == 3      # and then it hits
    # an evaluation that fails leaves no key: the old results are never read as the new ones
    monkeypatch.setattr(compare, "evaluate_model", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("oom")))
    try:
        compare.load_or_evaluate(model, out, **{**kw, "limit": 32})
    except RuntimeError:
        pass
    assert not (out / "models" / "fine-tuned" / cache.KEY_FILE).exists()
