"""Plain text -> "continue this text" conversations (mambaft.data.text_chat), row by row."""
from __future__ import annotations

from mambaft.data.text_chat import ANSWER_CHARS, INSTRUCTIONS, continuation_pairs, sentences, text_conversations


def test_sentences_collapse_layout_and_split_before_a_capital():
    text = "Debian est libre.\n    Il est   stable !\xa0Version 11.0 sortie. fin."
    assert sentences(text) == ["Debian est libre.", "Il est stable !", "Version 11.0 sortie. fin."]


def test_pairs_are_consecutive_whole_sentences_and_never_overlap():
    sents = [f"Phrase numéro {i} du document, assez longue pour compter." for i in range(12)]
    pairs = continuation_pairs(" ".join(sents), prompt_chars=100, answer_chars=120)
    assert pairs
    used = [s for a, b in pairs for s in sentences(a) + sentences(b)]
    assert used == sents[:len(used)] and len(used) >= 10   # in order, none twice, none skipped
    for opening, reply in pairs:
        assert len(opening) >= 100 and len(reply) <= 120
        assert opening.endswith(".") and reply.endswith(".")    # cut at sentence ends only


def test_a_sentence_longer_than_the_answer_budget_is_skipped_not_cut():
    long = "Mot " * (ANSWER_CHARS // 2) + "fin."
    text = f"Une ouverture assez longue pour servir de début au texte. {long} Une suite courte mais correcte."
    for opening, reply in continuation_pairs(text, prompt_chars=40):
        assert len(reply) <= ANSWER_CHARS and "Mot Mot" not in reply


def test_conversations_carry_the_language_instruction_and_the_document_id():
    docs = [{"id": "faq:1", "lang": "fr", "text": "Première phrase du texte français ici. " * 12},
            {"id": "en:1", "text": "An English sentence that goes on for a while. " * 12}]
    convs = text_conversations(docs, "french_text", "en")
    fr = [c for c in convs if c["conversation_id"] == "faq:1"]
    en = [c for c in convs if c["conversation_id"] == "en:1"]
    assert fr and en
    assert all(c["messages"][0]["content"].startswith(INSTRUCTIONS["fr"] + " ") and c["lang"] == "fr" for c in fr)
    assert all(c["messages"][0]["content"].startswith(INSTRUCTIONS["en"] + " ") and c["lang"] == "en" for c in en)
    assert [m["role"] for m in fr[0]["messages"]] == ["user", "assistant"]
    assert len({c["id"] for c in convs}) == len(convs) and all(c["source"] == "french_text" for c in convs)


def test_leading_sentences_keep_whole_sentences_up_to_the_budget():
    from mambaft.data.text_chat import leading_sentences
    text = "Paris is the capital of France. It has two million people. It lies on the Seine."
    assert leading_sentences(text, 70) == "Paris is the capital of France. It has two million people."
    assert leading_sentences(text, 10) == "Paris is the capital of France."      # at least one sentence
    assert leading_sentences(text, 1000) == text


def test_wiki_answers_are_the_opening_sentences_of_the_summary(tmp_path):
    import json

    from mambaft.data.sources.formats import WIKI_ANSWER_CHARS, wiki_pairs
    long = " ".join(f"Sentence {i} of the lead summary is here." for i in range(30))
    (tmp_path / "s.json").write_text(json.dumps({f"T{i}": {"title": f"T{i}", "extract": long} for i in range(40)}))
    rows = list(wiki_pairs(tmp_path / "s.json", "wiki_en", "en", "wiki_en"))
    assert rows
    for r in rows:
        answer = r["messages"][1]["content"]
        assert len(answer) <= WIKI_ANSWER_CHARS and long.startswith(answer) and answer.endswith("here.")
