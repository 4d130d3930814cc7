"""Atomic writes: the old file or the whole new one, also after a power cut (data synced, then renamed, then the
directory synced)."""

from __future__ import annotations

import os

import pytest

from rh_models.atomic import atomic_path, write_json_atomic, write_text_atomic


@pytest.fixture
def disk_events(monkeypatch) -> list[tuple[str, int]]:
    """Every ``os.fsync`` (by the inode of the synced descriptor) and ``os.replace`` (by the inode moved), in order."""
    events: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        events.append(("fsync", os.fstat(descriptor).st_ino))
        return real_fsync(descriptor)

    def replace(source, target, *args, **kwargs):
        events.append(("replace", os.stat(source).st_ino))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_the_file_is_synced_before_the_rename_and_the_directory_after_it(tmp_path, disk_events):
    target = tmp_path / "out" / "scores.json"
    write_json_atomic(target, {"0-0": [0.5]})
    file_inode, directory_inode = target.stat().st_ino, target.parent.stat().st_ino
    assert disk_events == [("fsync", file_inode), ("replace", file_inode), ("fsync", directory_inode)]
    assert target.read_text() == '{\n "0-0": [\n  0.5\n ]\n}\n'


def test_a_file_written_by_name_is_synced_too(tmp_path, disk_events):
    """Writers that want a path (matplotlib) write through their own descriptor: the sync must still see the data."""
    target = tmp_path / "plot.png"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"\x89PNG")
    assert [kind for kind, _ in disk_events] == ["fsync", "replace", "fsync"]
    assert disk_events[0][1] == target.stat().st_ino and target.read_bytes() == b"\x89PNG"


def test_a_failed_block_leaves_the_old_file_and_no_temporary(tmp_path, disk_events):
    target = write_text_atomic(tmp_path / "board.md", "old\n")
    disk_events.clear()
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["board.md"]
    assert "replace" not in {kind for kind, _ in disk_events}
