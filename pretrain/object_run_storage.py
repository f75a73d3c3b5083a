"""A run directory in object storage (`train.run_dir: s3://bucket/runs/name`), behind the `RunStorage` seam.

Checkpoints are written to a local temporary file, uploaded under `NAME.tmp`, checked (the stored size
must equal the local one), and only then published under their final name by a server-side copy: a
reader never picks a checkpoint that is not whole and checked, and a kill at any moment leaves at most a
`.tmp` object, which the next run's checkpoint writer deletes as it does local temp files. Everything else a run writes (config.yaml,
TensorBoard events, the export) is written to a local mirror and uploaded by `sync_mirror`.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from data_pipeline import object_store
from data_pipeline.object_store import ObjectNotFound, is_uri, join
from pretrain.run_storage import LocalRunStorage, RunStorage

_PARTIAL = ".tmp"  # the suffix of the local temp files, so the writer's clean-up finds them too


class ObjectRunStorage:
    """The files directly under the prefix `uri` of an object store."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")

    def location(self, name: str = "") -> str:
        return join(self.uri, name) if name else self.uri

    def list(self) -> list[str]:
        return object_store.list_names(self.uri)

    def read_bytes(self, name: str) -> bytes:
        try:
            return object_store.read_bytes(self.location(name))
        except ObjectNotFound:
            raise FileNotFoundError(self.location(name)) from None

    @contextmanager
    def open_atomic(self, name: str) -> Iterator[BinaryIO]:
        with tempfile.TemporaryDirectory(prefix="run-upload-") as staging:
            local = Path(staging) / name
            with open(local, "wb") as handle:
                yield handle
            partial = self.location(name + _PARTIAL)
            object_store.upload_verified(local, partial)
            object_store.move(partial, self.location(name))

    def create_exclusive(self, name: str, data: bytes) -> bool:
        return object_store.create_exclusive(self.location(name), data)

    def rename(self, source: str, target: str) -> None:
        object_store.move(self.location(source), self.location(target))

    def remove(self, name: str) -> None:
        object_store.remove(self.location(name))


def run_storage(location: str | Path) -> RunStorage:
    """The storage for a run directory given as a local path or an object-store URI."""
    return ObjectRunStorage(str(location)) if is_uri(location) else LocalRunStorage(location)


def split_location(location: str | Path) -> tuple[RunStorage, str]:
    """(storage of its directory, file name) for a checkpoint given by path or URI."""
    text = str(location)
    if is_uri(text):
        directory, name = text.rstrip("/").rsplit("/", 1)
        return ObjectRunStorage(directory), name
    return LocalRunStorage(Path(text).parent), Path(text).name


def local_mirror(run_dir: str | Path) -> Path:
    """Where a run writes its files: run_dir itself, or for a URI a local directory (created here) that
    `sync_mirror` uploads to it."""
    if not is_uri(run_dir):
        return Path(run_dir)
    tag = hashlib.sha256(str(run_dir).encode()).hexdigest()[:12]
    mirror = Path(tempfile.gettempdir()) / f"pretrain-run-{os.getuid()}-{tag}"
    mirror.mkdir(parents=True, exist_ok=True)
    return mirror


def sync_mirror(run_dir: str | Path) -> None:
    """Upload the mirror's files that are new or changed since the last sync (nothing for a local run_dir)."""
    if not is_uri(run_dir):
        return
    mirror = local_mirror(run_dir)
    stamps = mirror / ".synced"
    done = dict(line.rsplit(" ", 1) for line in stamps.read_text().splitlines()) if stamps.exists() else {}
    for path in sorted(p for p in mirror.rglob("*") if p.is_file() and p != stamps):
        name = path.relative_to(mirror).as_posix()
        stamp = f"{path.stat().st_size}:{path.stat().st_mtime_ns}"
        if done.get(name) != stamp:
            object_store.upload_verified(path, join(str(run_dir).rstrip("/"), name))
            done[name] = stamp
    stamps.write_text("".join(f"{name} {stamp}\n" for name, stamp in sorted(done.items())))
