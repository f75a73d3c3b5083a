"""Atomic file writes: a reader (or a fine-tuning job polling the export directory) never sees half a file."""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """Open `path.tmp` for binary writing; on success fsync it and rename it over `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path) as handle:
        handle.write(data)


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """A fresh temp directory beside `path` to fill with a multi-file output; on failure it is deleted, so a
    failed write (disk full) leaves nothing. On success it becomes `path` by one rename when `path` does
    not exist yet; into an existing `path` each entry is renamed over its namesake (other files there are
    kept), so every file, and every subdirectory whole, is old or new, never partial."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield staging
        _fsync_tree(staging)
        if not path.exists():
            os.replace(staging, path)
        else:
            for entry in sorted(staging.iterdir()):
                _replace_entry(entry, path / entry.name)
            staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(path.parent)


def _replace_entry(source: Path, target: Path) -> None:
    """Rename `source` over `target`; a directory target is moved aside first (rename cannot replace one)."""
    if target.is_dir() and not target.is_symlink():
        aside = target.with_name(f".{target.name}.{os.getpid()}.old")
        os.replace(target, aside)
        os.replace(source, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(source, target)
    fsync_dir(target.parent)


def _fsync_tree(root: Path) -> None:
    for directory, _, _ in os.walk(root):
        fsync_dir(Path(directory))


def fsync_dir(directory: Path) -> None:
    """Make the renames and creations inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_torch(state: Any, handle: BinaryIO) -> None:
    """torch.save into an open file, raising the OSError a write hit (disk full, file too large) rather
    than the RuntimeError torch's zip writer turns it into."""
    import torch  # here, not at the top: the data pipeline's worker processes import this module

    recorder = _WriteErrorRecorder(handle)
    try:
        torch.save(state, recorder)
    except RuntimeError:
        if recorder.error is not None:
            raise recorder.error from None
        raise


class _WriteErrorRecorder:
    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


def describe_load_error(err: BaseException) -> str:
    """Why torch.load(weights_only=True) failed, in a few words. A pickled object is named as such: torch's
    own message advises weights_only=False, which would run code from the file."""
    if isinstance(err, pickle.UnpicklingError):
        return "it holds pickled Python objects, which are never loaded: only tensors and plain values are"
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
