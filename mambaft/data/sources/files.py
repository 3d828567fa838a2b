"""Reading the files hubs publish, row by row, with the position of every row for error reports.

    iter_rows(path, bad, source) -> iterator of (where, row)      where = "file:line" or "file:item N"

Formats: `.jsonl` / `.jsonl.gz` (one object a line), `.json` (a list of objects; a file cut off
mid-record, like the ShareGPT package, is salvaged record by record up to the broken tail, which is
reported as one bad row), `.parquet` (the hub's own export), and folders of those. A row that does
not parse (bad JSON, invalid UTF-8, nested too deep) is added to `bad` with its file:line and
skipped; the run goes on. A whole file of another type (Parquet named .json, a zip...) is refused
with the type detected from its first bytes.
"""
from __future__ import annotations

import gzip
import json
import re
import zlib
from pathlib import Path
from typing import Iterator

from mambaft.data.schema import BadRows, FormatError

ROW_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


# First bytes -> file type, to refuse a file named .json that is something else (the message says what)
MAGIC = ((b"PAR1", "a Parquet file"), (b"\x1f\x8b", "a gzip file"), (b"PK\x03\x04", "a zip archive"),
         (b"SQLite format 3", "an SQLite database"), (b"\x89HDF", "an HDF5 file"), (b"ARROW1", "an Arrow file"),
         (b"\x80", "a Python pickle"), (b"%PDF", "a PDF"), (b"\xff\xd8\xff", "a JPEG image"),
         (b"\x89PNG", "a PNG image"))


def detect_type(path: Path) -> str:
    """What the file's first bytes say it is ("" when none of MAGIC matches)."""
    with open(path, "rb") as f:
        head = f.read(16)
    return next((name for magic, name in MAGIC if head.startswith(magic)), "")


def _check_type(path: Path, expected: str) -> None:
    found = detect_type(path)
    gz = path.name.endswith(".gz")
    if found and not (gz and found == "a gzip file") and not (expected == "parquet" and found == "a Parquet file"):
        raise FormatError(f"{path}: is {found} (detected from its first bytes), not {expected}: "
                          "rename it to its real extension or convert it")


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")   # a \uD800-\uDFFF escape: half of a pair, or alone


def lone_surrogate(obj, text: str) -> bool:
    """True when `obj` (decoded from `text`) holds a lone UTF-16 surrogate such as "\\ud800": JSON
    allows the escape, but the text is not Unicode and breaks every later step (tokenizer, Arrow).
    The regex is the cheap test; the encode runs only on the rare text that has such an escape."""
    if not _SURROGATE.search(text):
        return False
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _parse_line(raw: bytes):
    """One JSON line -> (object, None) or (None, reason)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8 at byte {e.start}"
    if not line.strip():
        return None, ""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg})"
    except RecursionError:
        return None, "JSON nested too deep"
    if lone_surrogate(obj, line):
        return None, "a lone UTF-16 surrogate escape (\\ud800-\\udfff): not Unicode text"
    return obj, None


def _truncated(path: Path, after: str, e: BaseException) -> FormatError:
    return FormatError(f"{path}: the gzip file is truncated or corrupt after {after} ({type(e).__name__}: "
                       f"{e}); download or compress it again")


def list_files(path: Path, suffixes=ROW_SUFFIXES) -> list[Path]:
    """`path` itself, or every file inside it with one of `suffixes` (sorted, so runs repeat)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(tuple(suffixes)))
    if not files:
        raise FileNotFoundError(f"{path}: no {'/'.join(suffixes)} files inside")
    return files


def _iter_jsonl(path: Path, bad: BadRows, source: str) -> Iterator[tuple[str, dict]]:
    with _open_bytes(path) as f:   # bytes: one line of invalid UTF-8 costs that line, not the file
        lines = enumerate(f, 1)
        lineno = 0
        while True:
            try:
                lineno, raw = next(lines)
            except StopIteration:
                break
            except (EOFError, gzip.BadGzipFile, zlib.error) as e:   # the rows before it were read
                raise _truncated(path, f"line {lineno}", e) from e
            row, reason = _parse_line(raw)
            if reason:
                bad.add(source, f"{path}:{lineno}", reason)
                continue
            if reason == "":
                continue
            if not isinstance(row, dict):
                bad.add(source, f"{path}:{lineno}", f"expected a JSON object, got {type(row).__name__}")
                continue
            yield f"{path}:{lineno}", row


def _salvage_json_list(text: str, path: Path, bad: BadRows, source: str) -> Iterator[tuple[str, dict]]:
    """Decode `[obj, obj, ...` one object at a time; stop at the first object that does not decode
    (a truncated tail), reported with its line."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    n = len(text)
    line, counted_to = 1, 0   # 1-based line of `counted_to`, advanced lazily (one pass in total)
    item = 0
    while True:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n or text[pos] == "]":
            return
        start = pos
        line += text.count("\n", counted_to, start)
        counted_to = start
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError) as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deep"
            bad.add(source, f"{path}:{line}", f"record {item} is cut off or broken ({why}); "
                                              f"{n - start:,} trailing characters ignored")
            return
        if isinstance(obj, dict) and lone_surrogate(obj, text[start:pos]):
            bad.add(source, f"{path}:{line}", f"item {item} holds a lone UTF-16 surrogate escape: not Unicode text")
        elif isinstance(obj, dict):
            yield f"{path}:{line} (item {item})", obj
        else:
            bad.add(source, f"{path}:{line}", f"item {item} is {type(obj).__name__}, expected an object")
        item += 1


def _iter_json(path: Path, bad: BadRows, source: str) -> Iterator[tuple[str, dict]]:
    _check_type(path, "JSON")
    try:
        with _open_bytes(path) as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise _truncated(path, "its first bytes" if path.stat().st_size < 32 else "some records", e) from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:   # bad bytes inside: read it line by line, each bad line reported
        yield from _iter_jsonl(path, bad, source)
        return
    stripped = text.lstrip()
    if stripped.startswith("{"):
        # A single object: JSONL with one line, or a wrapper like {"data": [...]}.
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            yield from _iter_jsonl(path, bad, source)  # several objects: it is JSONL named .json
            return
        rows = next((v for v in obj.values() if isinstance(v, list)), None) if "data" in obj else None
        if rows is None:
            if lone_surrogate(obj, text):
                bad.add(source, f"{path}:1", "a lone UTF-16 surrogate escape: not Unicode text")
            else:
                yield f"{path}:1", obj
            return
        maybe = bool(_SURROGATE.search(text))   # one scan of the file, not one per row
        for i, row in enumerate(rows):
            if isinstance(row, dict) and maybe and lone_surrogate(row, "\\ud800"):
                bad.add(source, f"{path} (item {i})", "a lone UTF-16 surrogate escape: not Unicode text")
            elif isinstance(row, dict):
                yield f"{path} (item {i})", row
            else:
                bad.add(source, f"{path} (item {i})", f"expected an object, got {type(row).__name__}")
        return
    if not stripped.startswith("["):
        raise FormatError(f"{path}: not JSON (a list of objects or JSON lines expected)")
    yield from _salvage_json_list(text, path, bad, source)


def _iter_parquet(path: Path, bad: BadRows, source: str) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    if detect_type(path) != "a Parquet file":
        raise FormatError(f"{path}: is {detect_type(path) or 'not a Parquet file (no PAR1 header)'}, "
                          "named .parquet")
    table = pq.read_table(path)
    for i, row in enumerate(table.to_pylist()):
        yield f"{path} (row {i})", row


def iter_rows(path, bad: BadRows, source: str) -> Iterator[tuple[str, dict]]:
    """Every row of every file under `path` as ("file:line", dict)."""
    for f in list_files(Path(path)):
        name = f.name
        if name.endswith((".jsonl", ".jsonl.gz")):
            _check_type(f, "JSON lines")
            yield from _iter_jsonl(f, bad, source)
        elif name.endswith((".json", ".json.gz")):
            yield from _iter_json(f, bad, source)
        elif name.endswith(".parquet"):
            yield from _iter_parquet(f, bad, source)
        else:
            raise FormatError(f"{f}: unsupported file type (expected {', '.join(ROW_SUFFIXES)})")
