"""The registry cache: unpacking wheels, npm tarballs and .deb files, idempotence, and a clear error
offline. No network: downloads are replaced by local archives, and the offline case uses pip with
--no-index semantics (PIP_NO_INDEX)."""
from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from mambaft.data import registry
from mambaft.data.registry import COMPLETE_MARKER, RegistryError, RegistryPackage


def _tar_bytes(files: dict, mode="w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _deb_bytes(files: dict) -> bytes:
    """A minimal Debian package: ar archive with debian-binary, control.tar.gz and data.tar.gz."""
    members = [("debian-binary", b"2.0\n"), ("control.tar.gz", _tar_bytes({"./control": b"Package: x\n"})),
               ("data.tar.gz", _tar_bytes(files))]
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out.write(header + data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


@pytest.fixture()
def fake_download(monkeypatch):
    """Replace the registry clients by writing a prepared archive; count the calls."""
    calls = []

    def install(filename: str, payload: bytes):
        def download(pkg, into: Path, timeout):
            calls.append(pkg.name)
            (into / filename).write_bytes(payload)
            return into / filename
        monkeypatch.setattr(registry, "_download", download)
        return calls
    return install


def test_wheel_is_unpacked_once_and_cached(tmp_path, fake_download, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pkg/data/file.txt", "hello")
    calls = fake_download("pkg-1.0-py3-none-any.whl", buf.getvalue())
    monkeypatch.setenv("MAMBAFT_CACHE", str(tmp_path / "cache"))
    pkg = RegistryPackage("pypi", "pkg", "1.0", "MIT")
    assert registry.cached_path(pkg) is None
    first = registry.fetch(pkg, progress=False)
    assert first == tmp_path / "cache" / "pypi" / "pkg-1.0"           # $MAMBAFT_CACHE is honoured
    assert (first / "pkg" / "data" / "file.txt").read_text() == "hello"
    assert (first / COMPLETE_MARKER).is_file()
    assert registry.fetch(pkg, progress=False) == first and calls == ["pkg"]   # idempotent: one download
    assert registry.cached_path(pkg) == first


def test_npm_tarball_and_interrupted_entry(tmp_path, fake_download):
    fake_download("scope-datasets-0.4.0.tgz", _tar_bytes({"package/sotu/data/1790.txt": b"Fellow-Citizens"}))
    pkg = RegistryPackage("npm", "@scope/datasets", "0.4.0", "public domain")
    stale = tmp_path / "npm" / "scope__datasets-0.4.0"
    stale.mkdir(parents=True)
    (stale / "half-written").write_text("x")                            # no marker: an interrupted run
    got = registry.fetch(pkg, tmp_path, progress=False)
    assert got == stale and not (got / "half-written").exists()
    assert (got / "package" / "sotu" / "data" / "1790.txt").read_text() == "Fellow-Citizens"


@pytest.mark.parametrize("with_dpkg", [True, False])
def test_deb_is_unpacked_with_or_without_dpkg(tmp_path, fake_download, monkeypatch, with_dpkg):
    if with_dpkg and not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb not installed")
    if not with_dpkg:
        real_which = shutil.which
        monkeypatch.setattr(registry.shutil, "which", lambda n: None if n == "dpkg-deb" else real_which(n))
    fake_download("doc_1.0_all.deb", _deb_bytes({"./usr/share/doc/x/notes.txt": b"docs"}))
    got = registry.fetch(RegistryPackage("apt", "doc", None, "PSF"), tmp_path, progress=False)
    assert got.name == "doc-current"
    assert (got / "usr" / "share" / "doc" / "x" / "notes.txt").read_text() == "docs"


def test_archive_escaping_the_folder_is_refused(tmp_path, fake_download):
    fake_download("evil-1.0.tar.gz", _tar_bytes({"../../outside.txt": b"x"}))
    with pytest.raises(RegistryError, match="outside"):
        registry.fetch(RegistryPackage("pypi", "evil", "1.0", "?"), tmp_path, progress=False)
    assert not (tmp_path / "pypi" / "evil-1.0").exists()


@pytest.mark.slow   # a fresh interpreter
def test_offline_error_names_the_package_and_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")                # pip behaves as with no registry reachable
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    pkg = RegistryPackage("pypi", "mambaft-surely-not-a-package", "0.0.1", "?")
    with pytest.raises(RegistryError) as e:
        registry.fetch(pkg, tmp_path, progress=False)
    msg = str(e.value)
    assert "could not download pypi package mambaft-surely-not-a-package==0.0.1" in msg
    assert "MAMBAFT_CACHE" in msg
    assert not any(p.name.startswith("mambaft-surely") for p in (tmp_path / "pypi").iterdir())


def test_unknown_key():
    with pytest.raises(RegistryError, match="unknown registry package 'nope'"):
        registry.fetch("nope", progress=False)
