"""Atomic writes: a failed write leaves the previous file and no temp file behind."""
from __future__ import annotations

import pytest

from data_pipeline.atomic_files import atomic_open, atomic_write_bytes


def test_write_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]


def test_a_write_that_fails_midway_keeps_the_previous_file(tmp_path):
    path = tmp_path / "file.bin"
    atomic_write_bytes(path, b"complete")
    with pytest.raises(RuntimeError), atomic_open(path) as handle:
        handle.write(b"half of it")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]
