"""Writes that survive a SIGKILL or a power loss: fsync, manifests with checksums, atomic swaps.

A rename is atomic, but without fsync a power loss can still leave the renamed folder holding
zero-length files (the rename reached the disk, the data did not). So every finished folder is
fsynced file by file and directory by directory before its rename, and its parent after it.

    fsync_tree(path)                 every file and folder under path
    write_manifest(folder)           manifest.json: {relative path: {size, sha256}}
    verify_manifest(folder)          problems found (empty list: intact)
    replace_dir(tmp, final)          tmp takes final's place atomically (RENAME_EXCHANGE on Linux)
    replace_file(tmp, final)         the same for one finished file
    write_atomic(path, data)         text or bytes: the old file or the new one, never a part
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Optional, Union

MANIFEST = "manifest.json"
PathLike = Union[str, Path]
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def fsync_path(path: PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: PathLike) -> None:
    """fsync every file, then every folder (deepest first), then `root` itself."""
    root = Path(root)
    if root.is_file():
        fsync_path(root)
        return
    for dirpath, _, files in os.walk(root, topdown=False):
        for f in files:
            fsync_path(os.path.join(dirpath, f))
        fsync_path(dirpath)


def sha256_file(path: PathLike, chunk: int = 1 << 22) -> str:
    # 4 MiB chunks: a 500 MB model hashes at ~1-2 GB/s, 0.3-0.5 s per checkpoint
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: PathLike) -> dict:
    """Sizes and checksums of every file under `folder`, written (and fsynced) as manifest.json."""
    folder = Path(folder)
    entries = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST:   # a model/manifest.json is listed
            entries[p.relative_to(folder).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    path = folder / MANIFEST
    path.write_text(json.dumps({"files": entries}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    fsync_path(path)
    return entries


def read_manifest(folder: PathLike) -> dict:
    """{relative path: {"size": int, "sha256": str}} of folder/manifest.json; ValueError when it
    is not that shape (a damaged manifest must read as damaged, never crash the reader)."""
    d = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    files = d.get("files") if isinstance(d, dict) else None
    if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("size"), int)
            and isinstance(v.get("sha256"), str) for k, v in files.items()):
        raise ValueError("not {'files': {path: {size, sha256}}}")
    return files


def verify_manifest(folder: PathLike, only: str = "") -> list[str]:
    """What does not match the manifest (missing, wrong size, wrong checksum); [] when intact.
    A folder without a manifest gives ["no manifest.json"]. `only`: check the entries under this
    prefix alone (a checkpoint's "model/")."""
    folder = Path(folder)
    try:
        entries = {k: v for k, v in read_manifest(folder).items() if k.startswith(only)}
    except FileNotFoundError:
        return [f"no {MANIFEST}"]
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        return [f"{MANIFEST} is unreadable ({type(e).__name__})"]
    problems = []
    for rel, want in entries.items():
        p = folder / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            problems.append(f"{MANIFEST} names a path outside the folder ({rel})")
        elif not p.is_file():
            problems.append(f"{rel} is missing")
        elif p.stat().st_size != want["size"]:
            problems.append(f"{rel} has {p.stat().st_size:,} bytes, the manifest says {want['size']:,}")
        elif sha256_file(p) != want["sha256"]:
            problems.append(f"{rel} does not match its checksum")
    return problems


_RENAME_EXCHANGE = 2   # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the OS or filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(tmp: PathLike, final: PathLike) -> None:
    """Move the finished folder `tmp` to `final` (replacing it): fsync first, atomic swap, fsync the
    parent after. A kill at any moment leaves the old `final` or the new one, never a mix."""
    tmp, final = Path(tmp), Path(final)
    fsync_tree(tmp)
    if final.exists() and _exchange(tmp, final):
        fsync_path(final.parent)
        shutil.rmtree(tmp, ignore_errors=True)   # tmp now holds the old folder
        return
    if final.exists():  # no atomic swap here: rename the old one aside first (a short window)
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        fsync_path(final.parent)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(tmp, final)
    fsync_path(final.parent)


def replace_file(tmp: PathLike, final: PathLike) -> None:
    """Move the finished file `tmp` to `final`: fsync it, rename, then fsync the folder, so that after a
    power loss `final` is the old file or the whole new one (the rename alone may reach the disk first)."""
    tmp, final = Path(tmp), Path(final)
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(final.parent)


def write_atomic(path: PathLike, data: Union[str, bytes]) -> None:
    """Write `data` (str: UTF-8) to `path` through a temporary file beside it and replace_file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        replace_file(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL


# How the writers that are not plain OSErrors say ENOSPC: torch.save's zip writer ("unexpected pos":
# it wrote fewer bytes than it asked for), safetensors' Rust error ("os error 28"), json/shutil as text
_FULL_TEXT = ("No space left", "StorageFull", "file write failed", "os error 28", "Disk quota exceeded")


def is_full_error(e: BaseException, where: Optional[PathLike] = None) -> bool:
    """ENOSPC/EDQUOT from any writer, also when wrapped (the cause chain is followed). torch's
    "unexpected pos" counts only when `where`'s filesystem really has (almost) no room left."""
    seen = 0
    while e is not None and seen < 8:
        if is_disk_full(e) or any(t in str(e) for t in _FULL_TEXT):
            return True
        if "unexpected pos" in str(e) and where is not None and free_bytes(where) < (1 << 20):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def free_bytes(path: PathLike) -> int:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return -1


def mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def disk_full_error(e: BaseException, path: PathLike, what: str, need: Optional[int] = None,
                    after: str = "") -> "DiskFullError":
    """One line for a full disk: the path, the free space, what it needs (when known), what was done."""
    from mambaft.errors import DiskFullError
    free = free_bytes(path)
    needs = f", needs about {mb(need)}" if need else ""
    return DiskFullError(errno.ENOSPC, f"disk full while writing {what} at {path} ({mb(max(free, 0))} free"
                         f"{needs}){'; ' + after if after else ''}. Free some space and run the same "
                         "command again")


def tree_bytes(path: PathLike) -> int:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # it exists, owned by someone else
        return True
    return True
