"""The files of one run directory, behind a seam small enough for another store to implement.

Everything the checkpoint component reads or writes in `train.run_dir` (checkpoints, the ownership record)
goes through a `RunStorage`; `LocalRunStorage` serves a local or mounted (NFS, PVC) directory. Names are
paths relative to the storage's root. An object store (s3://) plugs in here with the same seven
operations: whole-object atomic writes, exclusive create, rename, remove, read, list, location.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

from data_pipeline.atomic_files import atomic_open


class RunStorage(Protocol):
    def location(self, name: str = "") -> str: ...           # for messages: the path or URL of `name`
    def list(self) -> list[str]: ...                         # names of the files in the root
    def read_bytes(self, name: str) -> bytes: ...            # OSError (FileNotFoundError if absent)
    def open_atomic(self, name: str) -> AbstractContextManager[BinaryIO]: ...  # appears whole or not at all
    def create_exclusive(self, name: str, data: bytes) -> bool: ...  # False if `name` exists
    def rename(self, source: str, target: str) -> None: ...  # replaces `target`
    def remove(self, name: str) -> None: ...                 # no error if absent


class LocalRunStorage:
    """A directory on a filesystem every rank mounts."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def location(self, name: str = "") -> str:
        return str(self.root / name) if name else str(self.root)

    def list(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(entry.name for entry in self.root.iterdir())

    def read_bytes(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    @contextmanager
    def open_atomic(self, name: str) -> Iterator[BinaryIO]:
        with atomic_open(self.root / name) as handle:
            yield handle

    def create_exclusive(self, name: str, data: bytes) -> bool:
        # Written whole under a private name, then hard-linked into place: link() fails if the name
        # exists (also on NFS), so no reader ever sees a half-written file under `name`.
        path = self.root / name
        private = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.new")
        with atomic_open(private) as handle:
            handle.write(data)
        try:
            os.link(private, path)
        except FileExistsError:
            return False
        finally:
            private.unlink()
        return True

    def rename(self, source: str, target: str) -> None:
        os.replace(self.root / source, self.root / target)

    def remove(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)
