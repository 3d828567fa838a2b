"""Every source format -> the one schema, on fixture files written in each hub's / package's exact format.
No network: local paths only (tests/fixtures/hub, tests/fixtures/offline)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mambaft.data.filters import clean_conversation
from mambaft.data.schema import BadRows, FormatError, guess_lang
from mambaft.data.sources import load_source
from mambaft.data.text import is_heldout, load_text_documents

FIX = Path(__file__).parent / "fixtures"
HUB, OFF = FIX / "hub", FIX / "offline"


def msgs(conv):
    return [(m["role"], m["content"]) for m in conv["messages"]]


def test_alpaca_and_codealpaca():
    rows = load_source("alpaca", str(HUB / "alpaca_data.json")).rows
    assert len(rows) == 4
    assert msgs(rows[1]) == [("user", "Translate the sentence into French.\n\nThe cat sleeps."),
                             ("assistant", "Le chat dort.")]
    assert msgs(rows[0])[0] == ("user", "Give three tips for staying healthy.")  # empty input adds nothing
    assert {r["source"] for r in rows} == {"alpaca"} and rows[0]["lang"] == "en"
    code = load_source("codealpaca", str(HUB / "code_alpaca_20k.json")).rows
    assert msgs(code[0])[1] == ("assistant", "def square(x):\n    return x * x")
    assert code[1]["messages"][0]["content"].endswith("\n\nmy_list = [1, 2, 3]")


def test_dolly_context_goes_to_the_user_turn():
    rows = load_source("dolly", str(HUB / "databricks-dolly-15k.jsonl")).rows
    assert len(rows) == 3
    assert rows[0]["messages"][0]["content"].startswith("When did Virgin Australia start operating?\n\nVirgin")
    assert msgs(rows[1]) == [("user", "Which is a species of fish? Tope or Rope"), ("assistant", "Tope")]


def test_oasst_best_path_drops_deleted_and_failed_review():
    rows = load_source("oasst", str(HUB / "oasst1_messages.jsonl")).rows
    assert len(rows) == 2                                  # one thread per tree
    en = rows[0]
    assert msgs(en) == [("user", "Can you explain what a black hole is?"),
                        ("assistant", "A black hole is a region of spacetime where gravity is so strong that "
                                      "nothing can escape."),
                        ("user", "How are they formed?"),
                        ("assistant", "Most form when a massive star collapses at the end of its life.")]
    assert en["conversation_id"] == "oasst:t1" and en["lang"] == "en" and rows[1]["lang"] == "fr"
    text = json.dumps(rows)
    assert "Deleted reply" not in text and "failed review" not in text


def test_oasst_all_paths_share_the_conversation_id():
    rows = load_source("oasst_all", str(HUB / "oasst1_messages.jsonl")).rows
    t1 = [r for r in rows if r["conversation_id"] == "oasst_all:t1"]
    # paths: p1-a1-p2-a4 and p1-a2 (a3 deleted, a5 failed review)
    assert sorted(len(r["messages"]) for r in t1) == [2, 4]
    assert {r["id"] for r in t1} == {"oasst_all:t1:0", "oasst_all:t1:1"}


def test_oasst_language_filter():
    rows = load_source("oasst", str(HUB / "oasst1_messages.jsonl")).rows
    kept = [clean_conversation(r, ("fr",))[0] for r in rows]
    assert [k["lang"] for k in kept if k] == ["fr"]


def test_sharegpt_roles_segments_and_system():
    bad = BadRows()
    rows = load_source("sharegpt", str(HUB / "sharegpt.json"), bad=bad).rows
    assert len(rows) == 5 and bad.total == 0
    by_id = {r["id"]: r for r in rows}
    seg0, seg1 = by_id["sharegpt:abc123_0"], by_id["sharegpt:abc123_1"]
    assert seg0["conversation_id"] == seg1["conversation_id"] == "sharegpt:abc123"
    assert [m["role"] for m in seg1["messages"]] == ["assistant", "user", "assistant"]   # gpt, user, chatgpt
    assert [m["role"] for m in by_id["sharegpt:def456"]["messages"]] == ["system", "user", "assistant"]  # bing
    assert by_id["sharegpt:ghi789"]["messages"][1]["role"] == "assistant"                              # bard
    # a segment starting with the assistant is repaired (its leading answer has no question)
    fixed, reason = clean_conversation(seg1)
    assert reason == "trimmed" and [m["role"] for m in fixed["messages"]] == ["user", "assistant"]
    assert clean_conversation(by_id["sharegpt:empty1"]) == (None, "empty")


def test_sharegpt_truncated_file_is_salvaged_and_reported():
    bad = BadRows()
    rows = load_source("sharegpt", str(HUB / "sharegpt_truncated.json"), bad=bad).rows
    assert [r["id"] for r in rows] == ["sharegpt:abc123_0", "sharegpt:abc123_1", "sharegpt:def456"]
    assert bad.total == 1
    where = bad.examples["sharegpt"][0]
    text = (HUB / "sharegpt_truncated.json").read_text()
    line_of_cut = text[: text.index('"id": "ghi789"')].count("\n")   # the line of the broken record's "{"
    assert where.startswith(f"{HUB / 'sharegpt_truncated.json'}:{line_of_cut}:") and "cut off" in where


def test_malformed_rows_are_counted_with_file_and_line():
    bad = BadRows()
    rows = load_source("messages", str(HUB / "messages.jsonl"), bad=bad).rows
    assert [r["id"] for r in rows] == ["messages:m1", "messages:m2", "messages:m5"]
    assert bad.counts["messages"] == 2
    path = HUB / "messages.jsonl"
    assert bad.examples["messages"][0].startswith(f"{path}:3: not valid JSON")
    assert bad.examples["messages"][1].startswith(f"{path}:4: messages[1]: unknown role 'wizard'")
    assert rows[1]["messages"][0] == {"role": "system", "content": "Answer in French."}


def test_wrong_format_file_stops_with_the_expected_fields():
    with pytest.raises(FormatError) as e:
        load_source("alpaca", str(HUB / "databricks-dolly-15k.jsonl"))
    msg = str(e.value)
    assert "databricks-dolly-15k.jsonl" in msg and "alpaca" in msg and "instruction, input, output" in msg
    with pytest.raises(FormatError, match=r"sharegpt.json.*dolly.*response"):
        load_source("dolly", str(HUB / "sharegpt.json"))
    with pytest.raises(FormatError, match="chatterbot"):
        load_source("chatterbot_en", str(HUB / "messages.jsonl"))
    with pytest.raises(FormatError, match="wiki summaries"):
        load_source("wiki_en", str(HUB / "alpaca_data.json"))


def test_parquet_export_reads_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(x) for x in (HUB / "databricks-dolly-15k.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train-00000-of-00001.parquet")
    got = load_source("dolly", str(tmp_path)).rows
    assert [msgs(r) for r in got] == [msgs(r) for r in load_source("dolly", str(HUB / "databricks-dolly-15k.jsonl")).rows]


def test_chatterbot_yaml():
    bad = BadRows()
    rows = load_source("chatterbot_en", str(OFF / "chatterbot" / "english"), bad=bad).rows
    assert len(rows) == 3 and bad.counts["chatterbot_en"] == 1          # "- - lonely": one turn only
    assert msgs(rows[1]) == [("user", "How are you doing?"), ("assistant", "I am doing well, how about you?"),
                             ("user", "I am also good."), ("assistant", "That's good to hear.")]
    fixed, reason = clean_conversation(rows[2])                        # ends on a user turn
    assert reason == "trimmed" and len(fixed["messages"]) == 2
    fr = load_source("chatterbot_fr", str(OFF / "chatterbot" / "french")).rows
    assert fr[0]["lang"] == "fr" and fr[0]["messages"][1]["content"] == "Très bien, merci"


def test_wiki_summaries_become_synthetic_pairs_outside_the_heldout_slice():
    src = load_source("wiki_en", str(OFF / "wiki" / "summaries_en-us.json"))
    assert src.synthetic
    expected = [t for t in ("Paris", "Ada Lovelace") if not is_heldout(f"wiki_en/{t}")]  # "Empty" has no text
    assert [r["id"] for r in src.rows] == [f"wiki_en:{t}" for t in expected]
    for r in src.rows:
        user, answer = r["messages"][0]["content"], r["messages"][1]["content"]
        title = r["id"].split(":", 1)[1]
        assert title in user and answer.endswith(".") and r["lang"] == "en"


def test_wiki_first_answers_with_the_first_sentence_of_the_same_articles(tmp_path):
    two = {"Paris": {"title": "Paris", "extract": "Paris is the capital of France. It has 2.1 million people.",
                     "description": "capital city of France"}}
    path = tmp_path / "summaries.json"
    path.write_text(json.dumps(two), encoding="utf-8")
    full, first = load_source("wiki_en", str(path)).rows, load_source("wiki_en_first", str(path)).rows
    assert [r["id"] for r in first] == [r["id"].replace("wiki_en:", "wiki_en_first:") for r in full]
    assert not is_heldout("wiki_en/Paris") and len(first) == 1
    assert full[0]["messages"][1]["content"].endswith("2.1 million people.")
    assert first[0]["messages"][1]["content"] == "Paris is the capital of France."


def test_olmo_requests_become_question_answer_pairs():
    rows = load_source("olmo_qa", str(OFF / "olmo" / "arc_easy" / "train_mc_5shot" / "requests.jsonl.gz")).rows
    assert len(rows) == 1          # 4 + 2 request lines, one per choice -> 2 items; "sunlight" is skipped
    user, answer = rows[0]["messages"][0]["content"], rows[0]["messages"][1]["content"]
    assert user == "Which factor will most likely cause a person to develop a fever?"   # no options
    assert answer == "A bacterial population in the bloodstream."    # the option as a sentence, no letter
    from mambaft.data.sources.formats import olmo_answer
    assert olmo_answer("sunlight") is None and olmo_answer("in the ocean") == "In the ocean."
    # the package layout (a folder of tasks) reads the same
    assert [r["id"] for r in load_source("olmo_qa", str(OFF / "olmo")).rows] == [r["id"] for r in rows]


def test_chitchat_groups_alternate_speakers():
    rows = load_source("chitchat", str(OFF / "chitchat" / "dataset.json")).rows
    assert msgs(rows[0]) == [("user", "Hello\nHow are you doing today?"), ("assistant", "im doing good"),
                             ("user", "Great to hear")]


def test_plain_text_local_files_and_heldout_split(tmp_path):
    docs = load_text_documents(HUB / "domain_text.jsonl", split="all")
    assert [(d["id"], d["lang"]) for d in docs] == [("local/doc1", "en"), ("local/doc2", "en")]
    txt = load_text_documents(HUB / "domain_text.txt", split="all")
    assert len(txt) == 1 and txt[0]["text"].startswith("Le chat est") and txt[0]["source"] == "text"
    # train and heldout partition the documents, by a hash of the id, for any limit
    folder = tmp_path / "many"
    folder.mkdir()
    (folder / "docs.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": f"document {i}"}) + "\n"
                                               for i in range(400)))
    tr = load_text_documents(folder, split="train")
    ho = load_text_documents(folder, split="heldout")
    assert len(tr) + len(ho) == 400 and not {d["id"] for d in tr} & {d["id"] for d in ho}
    assert 5 <= len(ho) <= 40                                      # 5 % of 400 = 20 expected
    assert [d["id"] for d in load_text_documents(folder, limit=7, split="heldout")] == [d["id"] for d in ho[:7]]
    bad = folder / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object with a string field 'text'"):
        load_text_documents(bad)


def test_text_source_override_and_unknown_names():
    src = load_source("text", str(HUB / "domain_text.txt"))
    assert src.kind == "text" and src.rows[0]["text"].startswith("Le chat")
    with pytest.raises(ValueError, match="unknown source 'nope'"):
        load_source("nope")
    with pytest.raises(ValueError, match="not one of"):
        load_text_documents("no_such_source_or_file")


def test_guess_lang():
    assert guess_lang("The weather is nice and the sun is out today.") == "en"
    assert guess_lang("Je pense que le temps est beau pour une promenade dans la ville.") == "fr"
    assert guess_lang("Привет, как у тебя дела сегодня?") == "ru"
    assert guess_lang("Hi!") == "und"


# --- hub loaders, with the hub replaced by the fixture files (no network) -------------------------------
def _fake_hub(monkeypatch, tables: dict):
    """datasets.load_dataset(id, split=...) -> a Dataset of the fixture rows registered for that id."""
    import datasets

    calls = []

    def load_dataset(ds_id, config=None, split="train", streaming=False, **kw):
        calls.append((ds_id, config, split, streaming))
        rows = tables[ds_id]
        return iter(rows) if streaming else datasets.Dataset.from_list(rows)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def _rows(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def test_hub_loaders_read_the_same_rows_as_local_files(monkeypatch):
    calls = _fake_hub(monkeypatch, {
        "tatsu-lab/alpaca": json.loads((HUB / "alpaca_data.json").read_text()),
        "databricks/databricks-dolly-15k": _rows(HUB / "databricks-dolly-15k.jsonl"),
        "OpenAssistant/oasst1": _rows(HUB / "oasst1_messages.jsonl"),
        "HuggingFaceH4/ultrachat_200k": [r for r in map(json.loads, [
            json.dumps({"prompt_id": "p1", "prompt": "Hi", "messages": [{"role": "user", "content": "Hi"},
                                                                     {"role": "assistant", "content": "Hello"}]})])],
        "ccdv/arxiv-summarization": [{"article": "We study transformers.", "abstract": "short"}],
    })
    hub = load_source("alpaca")
    assert hub.origin == "hub:tatsu-lab/alpaca"
    assert [msgs(r) for r in hub.rows] == [msgs(r) for r in load_source("alpaca", str(HUB / "alpaca_data.json")).rows]
    assert len(load_source("dolly").rows) == 3
    assert [r["lang"] for r in load_source("oasst").rows] == ["en", "fr"]
    ultra = load_source("messages").rows
    assert msgs(ultra[0]) == [("user", "Hi"), ("assistant", "Hello")] and ultra[0]["id"] == "messages:p1"
    docs = load_source("arxiv").rows
    assert docs[0]["text"] == "We study transformers." and docs[0]["license"].startswith("arXiv")
    assert ("HuggingFaceH4/ultrachat_200k", None, "train_sft", False) in calls
    # another hub id given with --source NAME=ID (an oasst2 export, same table format)
    calls.clear()
    _fake_hub(monkeypatch, {"OpenAssistant/oasst2": _rows(HUB / "oasst1_messages.jsonl")})
    assert load_source("oasst", "OpenAssistant/oasst2").origin == "hub:OpenAssistant/oasst2"


def test_sharegpt_hub_downloads_the_json_file(monkeypatch):
    import huggingface_hub

    seen = []

    def download(repo_id, filename, repo_type=None, **kw):
        seen.append((repo_id, filename, repo_type))
        return str(HUB / "sharegpt_truncated.json")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    bad = BadRows()
    rows = load_source("sharegpt", bad=bad).rows
    assert seen == [("anon8231489123/ShareGPT_Vicuna_unfiltered", "ShareGPT_V3_unfiltered_cleaned_split.json",
                     "dataset")]
    assert len(rows) == 3 and bad.total == 1
