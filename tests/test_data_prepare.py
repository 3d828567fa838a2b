"""prepare() end to end on fixture files (no network): output contract, masks, split, dedup, mixing,
bad-row accounting, specialized phases, CLI, and the budget planner."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from mambaft.cli.prepare import main
from mambaft.config import make_config
from mambaft.data import mix
from mambaft.data.planner import plan_budget
from mambaft.data.prepare import load_prepared, prepare, resolve_sources
from mambaft.template import DEFAULT_TEMPLATE, IGNORE_INDEX, ChatTemplate
from mambaft.tokenizer import load_tokenizer

FIX = Path(__file__).parent / "fixtures"
HUB, OFF = FIX / "hub", FIX / "offline"
COLUMNS = {"id", "conversation_id", "source", "lang", "kind", "messages", "input_ids", "labels", "n_tokens",
           "n_trained"}
FIXTURE_SOURCES = {"alpaca": str(HUB / "alpaca_data.json"), "sharegpt": str(HUB / "sharegpt.json"),
                   "oasst": str(HUB / "oasst1_messages.jsonl"), "dolly": str(HUB / "databricks-dolly-15k.jsonl"),
                   "messages": str(HUB / "messages.jsonl"), "chatterbot_en": str(OFF / "chatterbot" / "english")}


def _cfg(**kw):
    base = dict(data_mode="offline", offline_sources={"alpaca": 1.0, "sharegpt": 1.0, "oasst": 1.0, "dolly": 2.0,
                                                      "messages": 1.0, "chatterbot_en": 1.0},
                max_seq_len=64, val_fraction=0.3)
    base.update(kw)
    return make_config("conversational", **base)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "data"
    stats = prepare(_cfg(), out, sources=FIXTURE_SOURCES, progress=False)
    return out, stats


def test_output_contract(prepared):
    out, stats = prepared
    dd = load_prepared(out)
    assert set(dd) == {"train", "val"}
    assert COLUMNS <= set(dd["train"].column_names)
    assert (out / "stats.json").is_file() and (out / "preview.txt").is_file()
    assert ChatTemplate.load(out) == DEFAULT_TEMPLATE
    assert json.loads((out / "stats.json").read_text())["totals"] == stats["totals"]
    tok = load_tokenizer()
    for split in ("train", "val"):
        for r in dd[split]:
            assert r["n_tokens"] == len(r["input_ids"]) == len(r["labels"]) <= 64
            assert r["n_trained"] == sum(lab != IGNORE_INDEX for lab in r["labels"]) > 0
            # the row is exactly the template's rendering of its (kept) messages
            assert (r["input_ids"], r["labels"]) == DEFAULT_TEMPLATE.render(r["messages"], tok, "all_assistant")
            assert r["kind"] == "chat" and r["messages"][-1]["role"] == "assistant"
    assert stats["totals"]["train_rows"] == len(dd["train"]) and stats["totals"]["val_rows"] == len(dd["val"])
    assert "[" in (out / "preview.txt").read_text() and "Assistant:" in (out / "preview.txt").read_text()


def test_stats_filters_bad_rows_and_truncation(prepared):
    _, stats = prepared
    s = stats["sources"]
    # oasst: the French tree is filtered by language (languages=("en",))
    assert s["oasst"]["filtered"] == {"language": 1} and s["oasst"]["loaded"] == 2
    # sharegpt: the empty row is filtered, the segment starting with the assistant is repaired
    assert s["sharegpt"]["filtered"] == {"empty": 1, "probe": 1} and s["sharegpt"]["trimmed"] == 1
    # the plan's probes never reach training (mambaft.data.leaks): "What is 2 + 2?" and Alpaca's
    # "What is the capital of France?" are dropped and counted
    assert s["alpaca"]["filtered"] == {"probe": 1}
    # messages.jsonl: line 3 is broken JSON, line 4 has an unknown role: counted, reported, not fatal
    assert s["messages"]["bad_rows"] == 2
    assert stats["bad_rows"]["messages"]["examples"][0].startswith(f"{HUB / 'messages.jsonl'}:3:")
    assert s["chatterbot_en"]["bad_rows"] == 1
    # max_seq_len=64 forces the 2-exchange haiku conversation to lose its first exchange
    assert stats["totals"]["truncated"] >= 1
    assert stats["totals"]["max_row_tokens"] <= 64


def test_weights_repeat_training_rows_only(prepared):
    out, stats = prepared
    dolly = stats["sources"]["dolly"]
    assert dolly["train_rows"] == 2 * dolly["unique_train"]           # weight 2.0
    assert dolly["val_rows"] == dolly["unique_val"]                    # val never repeated
    val_ids = load_prepared(out)["val"]["id"]
    assert len(val_ids) == len(set(val_ids))


def test_split_keeps_conversations_on_one_side():
    ids = [f"conv{i // 3}" for i in range(3000)]                       # 1,000 conversations x 3 segments
    is_val = mix.split_by_conversation(ids, 0.2, seed=7)
    by_conv = {}
    for c, v in zip(ids, is_val):
        by_conv.setdefault(c, set()).add(bool(v))
    assert all(len(sides) == 1 for sides in by_conv.values())
    assert 0.15 < is_val.mean() < 0.25
    assert (mix.split_by_conversation(ids, 0.2, seed=7) == is_val).all()      # deterministic
    assert not (mix.split_by_conversation(ids, 0.2, seed=8) == is_val).all()  # and seeded


def test_sharegpt_segments_land_on_one_side(tmp_path):
    rows = []
    for c in range(40):
        for k in range(3):
            rows.append({"id": f"c{c}_{k}", "conversations": [
                {"from": "human", "value": f"conversation {c} segment {k}: question"},
                {"from": "gpt", "value": f"answer {c}.{k}"}]})
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(rows))
    out = tmp_path / "out"
    prepare(_cfg(offline_sources={"sharegpt": 1.0}, val_fraction=0.25), out, sources={"sharegpt": str(path)},
            progress=False)
    dd = load_prepared(out)
    train_c, val_c = set(dd["train"]["conversation_id"]), set(dd["val"]["conversation_id"])
    assert train_c and val_c and not train_c & val_c
    assert len(dd["train"]) + len(dd["val"]) == 120


def test_exact_and_near_duplicates_are_removed(tmp_path):
    long = ("The mitochondrion is the powerhouse of the cell, producing most of the chemical energy needed "
            "to power the biochemical reactions of the cell, stored in a molecule called ATP. ") * 3
    convs = [("a", "Explain mitochondria.", long),
             ("b", "explain   MITOCHONDRIA.", long.upper()),                   # exact up to case/space
             ("c", "Explain mitochondria.", long.replace("powerhouse", "engine", 1)),  # near duplicate
             ("d", "Name a fruit.", "An apple is a fruit. " * 20)]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"id": i, "messages": [{"role": "user", "content": q},
                                                              {"role": "assistant", "content": a}]}) + "\n"
                            for i, q, a in convs))
    stats = prepare(_cfg(offline_sources={"messages": 1.0}, max_seq_len=256, val_fraction=0.0),
                    tmp_path / "out", sources={"messages": str(path)}, progress=False)
    s = stats["sources"]["messages"]
    assert s["exact_duplicates"] == 1 and s["near_duplicates"] == 1
    assert sorted(load_prepared(tmp_path / "out")["train"]["id"]) == ["messages:a", "messages:d"]


def test_max_reply_tokens_drops_conversations_with_a_longer_trained_reply(tmp_path):
    tok = load_tokenizer()
    short, long = "Paris is the capital.", "Paris is the capital of France and its largest city by far."
    assert len(tok.encode(short)) <= 8 < len(tok.encode(long))
    convs = [("a", [("Capital?", short)]),
             ("b", [("Capital city?", long)]),
             ("c", [("Hi", short), ("And France?", long)])]       # one long reply anywhere drops it
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"id": i, "messages": [
        {"role": r, "content": c} for q, a in turns for r, c in (("user", q), ("assistant", a))]}) + "\n"
        for i, turns in convs))
    stats = prepare(_cfg(offline_sources={"messages": 1.0}, val_fraction=0.0, max_reply_tokens=8),
                    tmp_path / "out", sources={"messages": str(path)}, progress=False)
    assert stats["sources"]["messages"]["long_reply"] == 2 and stats["totals"]["long_reply"] == 2
    assert load_prepared(tmp_path / "out")["train"]["id"] == ["messages:a"]
    # last_assistant trains only the last reply: only that one is measured
    stats = prepare(_cfg(offline_sources={"messages": 1.0}, val_fraction=0.0, max_reply_tokens=8,
                         train_on="last_assistant"), tmp_path / "last", sources={"messages": str(path)},
                    progress=False)
    assert stats["sources"]["messages"]["long_reply"] == 2


@pytest.mark.slow   # prepares twice
def test_deterministic(tmp_path):
    a = prepare(_cfg(), tmp_path / "a", sources=FIXTURE_SOURCES, progress=False)
    b = prepare(_cfg(), tmp_path / "b", sources=FIXTURE_SOURCES, progress=False)
    assert load_prepared(tmp_path / "a")["train"]["id"] == load_prepared(tmp_path / "b")["train"]["id"]
    assert a["totals"] == b["totals"]


@pytest.mark.slow   # prepares several datasets
def test_max_examples_per_source_and_last_assistant(tmp_path):
    stats = prepare(_cfg(max_examples_per_source=2, train_on="last_assistant", val_fraction=0.0),
                    tmp_path / "o", sources=FIXTURE_SOURCES, progress=False)
    for name, s in stats["sources"].items():
        assert s["unique_train"] <= 2, name
    tok = load_tokenizer()
    for r in load_prepared(tmp_path / "o")["train"]:
        # only the last answer (+ its end token) is trained
        assert (r["input_ids"], r["labels"]) == DEFAULT_TEMPLATE.render(r["messages"], tok, "last_assistant")
        assert r["labels"].count(50256) == 1


def _french_files(tmp_path):
    fr = tmp_path / "fr.jsonl"
    fr.write_text("".join(json.dumps({"id": f"f{i}", "lang": "fr", "messages": [
        {"role": "user", "content": f"Question numéro {i} : quelle est la couleur de l'herbe ?"},
        {"role": "assistant", "content": f"Réponse {i} : l'herbe est verte au printemps."}]}) + "\n" for i in range(40)))
    text = tmp_path / "domain"
    text.mkdir()
    (text / "docs.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "lang": "fr", "text": (
        f"Document {i}. Le français est une langue romane parlée sur plusieurs continents. ") * 6}) + "\n"
        for i in range(60)))
    return fr, text


@pytest.mark.slow   # prepares two phases
def test_specialized_writes_two_phases_with_the_text_share(tmp_path):
    fr, text = _french_files(tmp_path)
    cfg = make_config("specialized", data_mode="offline", offline_sources={"alpaca": 1.0},
                      phase2_offline_sources={"messages": 1.0, "text": 1.0}, max_seq_len=64, val_fraction=0.1,
                      phase2_text_fraction=0.3, phase2_text_format="text", phase2_replay_fraction=0.0)
    out = tmp_path / "spec"
    stats = prepare(cfg, out, sources={"alpaca": str(HUB / "alpaca_data.json"), "messages": str(fr),
                                       "text": str(text)}, progress=False)
    assert set(stats["phases"]) == {"phase1", "phase2"}
    p1, p2 = load_prepared(out / "phase1"), load_prepared(out / "phase2")
    assert set(p1["train"]["source"]) == {"alpaca"}
    for sub in ("phase1", "phase2"):
        assert (out / sub / "stats.json").is_file() and (out / sub / "preview.txt").is_file()
        assert (out / sub / "chat_template.json").is_file()
    kinds = np.array(p2["train"]["kind"])
    n_chat, n_text = int((kinds == "chat").sum()), int((kinds == "text").sum())
    assert n_text == mix.text_rows_needed(n_chat, 0.3) and n_text > 0
    for r in p2["train"]:
        assert r["n_tokens"] <= 64
        if r["kind"] == "text":
            assert r["labels"] == r["input_ids"] and r["messages"] == [] and r["source"] == "text"
    assert set(p2["train"]["lang"]) == {"fr"}          # phase 2 of the French domain keeps French only
    with pytest.raises(ValueError, match="specialized"):
        load_prepared(out)
    assert "phase2/messages" in stats["plan"]["epochs_per_source"]


def _varied_french_docs(folder):
    """Documents whose sentences differ (the near-duplicate filter would keep one of 60 copies)."""
    import random
    nouns = ["maison", "ville", "rivière", "montagne", "forêt", "langue", "musique", "table", "route", "école",
             "fenêtre", "porte", "voiture", "chanson", "histoire", "lumière", "saison", "île", "mer", "plage",
             "jardin", "fleur", "pierre", "étoile", "lune", "terre", "neige", "pluie", "vallée", "colline"]
    folder.mkdir()
    rows = []
    for i in range(60):
        rng = random.Random(i)
        sents = [f"Le document {i} décrit la {rng.choice(nouns)} et la {rng.choice(nouns)} près de la "
                 f"{rng.choice(nouns)}." for _ in range(8)]
        rows.append(json.dumps({"id": f"d{i}", "lang": "fr", "text": " ".join(sents)}) + "\n")
    (folder / "docs.jsonl").write_text("".join(rows))
    return folder


@pytest.mark.slow   # prepares two phases
def test_specialized_phase2_replays_phase1_and_turns_text_into_conversations(tmp_path):
    fr, _ = _french_files(tmp_path)
    text = _varied_french_docs(tmp_path / "varied")
    cfg = make_config("specialized", data_mode="offline", offline_sources={"alpaca": 1.0},
                      phase2_offline_sources={"messages": 1.0, "text": 1.0}, max_seq_len=256, val_fraction=0.1,
                      phase2_text_fraction=0.3, phase2_replay_fraction=0.25)
    assert cfg.phase2_text_format == "chat"             # the default keeps the chat format
    out = tmp_path / "spec"
    stats = prepare(cfg, out, sources={"alpaca": str(HUB / "alpaca_data.json"), "messages": str(fr),
                                       "text": str(text)}, progress=False)
    p1, p2 = load_prepared(out / "phase1"), load_prepared(out / "phase2")
    tr = p2["train"]
    src = np.array(tr["source"])
    # every phase-2 row is a conversation trained on its answer only: no packed text rows remain
    assert set(tr["kind"]) == {"chat"}
    tok = load_tokenizer()
    for r in tr:
        assert (r["input_ids"], r["labels"]) == DEFAULT_TEMPLATE.render(r["messages"], tok, "all_assistant")
        assert tok.eos_id in r["labels"]                          # answers end with the end token
    # the text rows: "Continue ce texte : <opening>" -> the document's next sentences
    text_rows = [r for r in tr if r["source"] == "text"]
    assert text_rows and all(r["messages"][0]["content"].startswith("Continue ce texte : ") for r in text_rows)
    doc = text_rows[0]["messages"]
    assert doc[1]["content"].startswith("Le document ") and doc[1]["content"].endswith(".")
    n_domain_chat, n_text = int((src == "messages").sum()), len(text_rows)
    assert n_text == mix.text_rows_needed(n_domain_chat, 0.3)
    # replay: phase-1 rows, byte-identical, make up 25 % of phase 2's train rows (R / (R + N))
    replay = [r for r in tr if r["source"] == "phase1_replay"]
    assert len(replay) == mix.text_rows_needed(n_domain_chat + n_text, 0.25) > 0
    p1_rows = {tuple(r["input_ids"]) for r in p1["train"]}
    assert all(tuple(r["input_ids"]) in p1_rows for r in replay)
    assert "phase1_replay" not in set(p2["val"]["source"])         # phase 2's val stays the domain's
    assert stats["phases"]["phase2"]["sources"]["phase1_replay"]["train_rows"] == len(replay)
    # phase 1 itself is untouched by phase 2's options
    assert set(p1["train"]["source"]) == {"alpaca"}


def test_load_prepared_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a dataset written by `mambaft prepare`"):
        load_prepared(tmp_path)


def test_resolve_sources_modes(caplog):
    caplog.set_level("INFO", logger="mambaft")
    hub = {"sharegpt": 1.0, "dolly": 1.0}
    off = {"chitchat": 0.3, "wiki_en": 0.5}
    local = {"dolly": str(HUB / "databricks-dolly-15k.jsonl")}

    def no_call():
        raise AssertionError("the hub must not be contacted")

    # everything local: no hub check at all
    mode, chosen = resolve_sources({"dolly": 1.0}, off, local, "auto", check_hub=no_call)
    assert mode == "local" and chosen == {"dolly": (1.0, local["dolly"])}
    # hub unreachable: offline sources + local overrides, with a printed note
    mode, chosen = resolve_sources(hub, off, local, "auto", check_hub=lambda: False)
    assert mode.startswith("offline") and set(chosen) == {"chitchat", "wiki_en", "dolly"}
    assert chosen["chitchat"] == (0.3, None)
    assert "NOTE: the hub did not answer" in caplog.text       # logged at INFO (the CLI shows it on stderr)
    mode, chosen = resolve_sources(hub, off, {}, "auto", check_hub=lambda: True)
    assert mode == "hub" and set(chosen) == {"sharegpt", "dolly"}
    mode, chosen = resolve_sources(hub, off, {}, "offline", check_hub=no_call)
    assert mode == "offline" and set(chosen) == {"chitchat", "wiki_en"}
    with pytest.raises(ValueError, match="unknown source"):
        resolve_sources(hub, off, {"nope": "x"}, "auto", check_hub=no_call)


@pytest.mark.slow   # prepares through the CLI
def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["--strategy", "quick", "--source", f"alpaca={HUB / 'alpaca_data.json'}",
               "--set", "val_fraction=0.25", "--out", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "alpaca" in text and "epochs" in text
    dd = load_prepared(out)
    assert len(dd["train"]) + len(dd["val"]) == 3          # 4 rows, one a probe (the capital of France)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["mode"] == "local" and stats["config"]["strategy"] == "quick"


# --- the budget planner ------------------------------------------------------------------------------
def test_planner_warns_about_37_epochs_of_alpaca_in_the_quick_plan():
    plan = plan_budget(make_config("quick"))
    assert plan["global_batch"] == 192 and plan["rows_seen"] == 1_920_000
    assert plan["epochs_per_source"]["alpaca"] == pytest.approx(1_920_000 / 52_002)    # 36.92 (float64: approx's default)
    assert any("alpaca: 36.9 epochs" in w and "above 3" in w for w in plan["warnings"])
    assert any(w.startswith("lr=1e-05 is outside 5e-05..0.0001") for w in plan["warnings"])


def test_planner_on_prepared_stats(prepared):
    _, stats = prepared
    cfg = _cfg(max_steps=100, batch_size=2, grad_accum=1, num_gpus=1, lr=8e-5, warmup_steps=5)
    plan = plan_budget(cfg, stats)
    total = stats["totals"]["train_rows"]
    s = stats["sources"]["dolly"]
    assert plan["epochs_per_source"]["dolly"] == pytest.approx(200 * s["train_rows"] / total / s["unique_train"])
    assert plan["tokens_seen"] == int(200 * stats["totals"]["train_tokens"] / total)
    assert not any(w.startswith("lr=") for w in plan["warnings"])
    # num_gpus overrides the config's world size: 4x the rows, 4x the epochs
    plan4 = plan_budget(cfg, stats, num_gpus=4)
    assert plan4["epochs_per_source"]["dolly"] == pytest.approx(4 * plan["epochs_per_source"]["dolly"])


# --- optional: the real registry cache, if this machine has it ------------------------------------------
@pytest.mark.slow   # the real registry data
def test_smoke_preset_from_the_real_registry_cache(tmp_path):
    from mambaft.data.registry import cached_path

    if not (cached_path("wiki") and cached_path("chatterbot")):
        pytest.skip("registry cache not warm (mambaft registry wiki chatterbot)")
    t0 = time.perf_counter()
    stats = prepare(make_config("smoke"), tmp_path / "smoke", progress=False)
    assert time.perf_counter() - t0 < 60
    assert stats["mode"] == "offline" and set(stats["sources"]) == {"wiki_en", "chatterbot_en"}
    for s in stats["sources"].values():
        assert 300 < s["unique_train"] + s["unique_val"] <= 400
    assert stats["totals"]["max_row_tokens"] <= 256
    assert os.path.isfile(tmp_path / "smoke" / "dataset_dict.json")


def test_every_configured_source_name_is_registered():
    from mambaft.config import DOMAIN_SOURCES, PRESETS, Config
    from mambaft.data.sources import SOURCES

    c = Config()
    names = set(c.sources) | set(c.offline_sources)
    for p in PRESETS.values():
        names |= set(p.get("sources", {})) | set(p.get("offline_sources", {}))
    for d in DOMAIN_SOURCES.values():
        names |= set(d["hub"]) | set(d["offline"])
    assert names - set(SOURCES) == set()
    # every strategy can be prepared offline: its offline sources come from registry packages, or are
    # generated by mambaft (the synthetic skill sets)
    for name in c.offline_sources:
        assert SOURCES[name].origin.startswith(("registry:", "generated:")), name
    for d in DOMAIN_SOURCES.values():
        for name in d["offline"]:
            assert SOURCES[name].origin.startswith(("registry:", "generated:")), name
