"""Training checkpoint files: the format, its content digest, and a writer off the training thread.

A checkpoint `ckpt-00001000.pt` is a `torch.save` of a dict holding only tensors and plain Python values,
so `torch.load(weights_only=True)` reads it (no pickled objects):
    format, step, objective, optimizer, scheduler, data (the reader's state), rng (one entry per rank),
    config (the resolved config as a dict), digest
`digest` is the sha256 of every other entry's content (tensor dtypes, shapes and bytes; plain values),
computed when the file is written and checked when it is read: a flipped byte inside a tensor, which the
zip container does not notice, makes the file corrupt. Each write goes to a temp file in the same
directory, is flushed and fsynced, renamed over the final name and the directory is fsynced: a crash at
any point leaves the previous checkpoints intact and never a partial file under a checkpoint name.
Which checkpoint to resume from, fallback, pruning and run ownership are pretrain/checkpointer.py's job.
"""
from __future__ import annotations

import hashlib
import io
import logging
import random
import re
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from data_pipeline.atomic_files import describe_load_error, save_torch
from data_pipeline.errors import UserError, describe_os_error
from pretrain.finite import first_non_finite
from pretrain.run_storage import LocalRunStorage, RunStorage

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "step", "objective", "optimizer", "scheduler", "data", "rng", "config")
_NAME = re.compile(r"ckpt-(\d{8,})\.pt")
_TEMP = re.compile(r"ckpt-\d{8,}\.pt\.tmp")
CORRUPT_SUFFIX = ".corrupt"


class CheckpointError(UserError):
    """A checkpoint that cannot be read, does not fit the model, or could not be written."""


class CheckpointUnreadable(CheckpointError):
    """Reading the file failed (I/O error, permissions): the file itself may be fine, so it is not corrupt."""


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.pt"


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / checkpoint_name(step)


def checkpoint_names(storage: RunStorage) -> list[tuple[int, str]]:
    """(step, name) of every file named like a checkpoint in `storage`, oldest first."""
    return sorted((int(m.group(1)), name) for name in storage.list() if (m := _NAME.fullmatch(name)))


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every file named like a checkpoint in `directory`, oldest first."""
    return [(step, directory / name) for step, name in checkpoint_names(LocalRunStorage(directory))]


def content_digest(state: Mapping[str, Any]) -> str:
    """sha256 over the content of every entry but `digest`, in a fixed traversal order."""
    digest = hashlib.sha256()

    def feed(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            flat = item.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"tensor {flat.dtype} {tuple(item.shape)};".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        elif isinstance(item, Mapping):
            digest.update(f"dict {len(item)};".encode())
            for key, value in item.items():
                feed(key)
                feed(value)
        elif isinstance(item, (list, tuple)):
            digest.update(f"{type(item).__name__} {len(item)};".encode())
            for value in item:
                feed(value)
        else:
            digest.update(f"{type(item).__name__} {item!r};".encode())

    for key in REQUIRED_KEYS:
        feed(key)
        feed(state[key])
    return digest.hexdigest()


def snapshot(value: Any) -> Any:
    """A copy of a nested state (dicts, lists, tuples, tensors) whose tensors are fresh CPU tensors, so
    training can go on mutating the originals while the copy is written. Shared tensors stay shared."""
    copies: dict[int, torch.Tensor] = {}

    def copy(item: Any) -> Any:
        if isinstance(item, torch.Tensor):
            if id(item) not in copies:
                copies[id(item)] = item.detach().to("cpu", copy=True)
            return copies[id(item)]
        if isinstance(item, dict):
            return {key: copy(inner) for key, inner in item.items()}
        if isinstance(item, (list, tuple)):
            return type(item)(copy(inner) for inner in item)
        return item

    return copy(value)


def capture_rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch (and current CUDA device) RNG states, as tensors and scalars."""
    version, mt_state, gauss = random.getstate()
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read and verify a checkpoint onto the CPU. CheckpointUnreadable if reading failed (the file may be
    fine), CheckpointError if it is missing, corrupt or not a checkpoint."""
    return read_checkpoint(LocalRunStorage(path.parent), path.name)


def read_checkpoint(storage: RunStorage, name: str) -> dict[str, Any]:
    """`load_checkpoint` for the file `name` of `storage`."""
    where = storage.location(name)
    try:
        data = storage.read_bytes(name)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {where} does not exist; check train.resume") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {where} is a directory; train.resume names a checkpoint file") from None
    except OSError as err:
        raise CheckpointUnreadable(describe_os_error(err, "read", where)) from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad record, disallowed global: all mean "unusable file"
        raise CheckpointError(f"checkpoint {where} is unreadable, probably partial or corrupt "
                              f"({describe_load_error(err)})") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{where} is not a training checkpoint (it lacks some of {', '.join(REQUIRED_KEYS)})")
    if state["format"] != FORMAT_VERSION:
        raise CheckpointError(f"{where} has checkpoint format {state['format']}, this code reads {FORMAT_VERSION}")
    if "digest" not in state:
        raise CheckpointError(f"checkpoint {where} has no content digest, so it cannot be verified")
    if content_digest(state) != state["digest"]:
        raise CheckpointError(f"checkpoint {where} is corrupt: its content does not match the digest written "
                              "with it")
    return state


def find_latest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in `directory` that loads, with its state, or None (see `newest_valid`)."""
    storage = LocalRunStorage(directory)
    found = newest_valid(storage, lambda name: read_checkpoint(storage, name))
    return (directory / found[0], found[1]) if found else None


def newest_valid(storage: RunStorage, read: Callable[[str], dict[str, Any]]) -> tuple[str, dict[str, Any]] | None:
    """(name, state) of the newest checkpoint in `storage` that `read` loads, or None if there is none.

    A corrupt file is skipped with a warning and renamed to NAME.corrupt, so it is kept for inspection
    but never chosen again and never shadows the checkpoints this run writes next. A file that could
    not be read (CheckpointUnreadable) is not corrupt: the error is raised and the file left alone.
    """
    for _, name in reversed(checkpoint_names(storage)):
        try:
            return name, read(name)
        except CheckpointUnreadable:
            raise
        except CheckpointError as err:
            log.warning("%s; renamed it to %s and skipped it", err, name + CORRUPT_SUFFIX)
            storage.rename(name, name + CORRUPT_SUFFIX)
    return None


def load_module_state(module: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> None:
    """`module.load_state_dict(state)` after checking keys and shapes, so that a checkpoint from another
    model configuration is one error naming the first key that differs."""
    own = module.state_dict()
    hint = "the model config differs from the run that wrote it"
    for key, tensor in own.items():
        if key not in state:
            raise CheckpointError(f"{source}: no entry for {key!r}; {hint}")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{source}: {key!r} has shape {tuple(state[key].shape)} but the model's is "
                                  f"{tuple(tensor.shape)}; {hint}")
    unexpected = [key for key in state if key not in own]
    if unexpected:
        raise CheckpointError(f"{source}: entry {unexpected[0]!r} does not exist in the model; {hint}")
    module.load_state_dict(state)


class CheckpointWriter:
    """Writes checkpoints into one directory on a background thread, at most one write in flight.

    `save` snapshots the state to CPU and returns at once, so a slow disk does not stall this rank
    inside a collective while the other ranks wait; `wait` joins the write (call it before exiting)
    and re-raises its error, if any. The digest is computed and the weights checked for NaN/inf on the
    writer thread: non-finite weights are never written.
    """

    def __init__(self, directory: Path | RunStorage, keep: int) -> None:
        self.storage = LocalRunStorage(directory) if isinstance(directory, (str, Path)) else directory
        self.keep = keep
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        for name in self.storage.list():
            if _TEMP.fullmatch(name):  # left by a process killed mid-write
                self.storage.remove(name)

    def save(self, step: int, state: Mapping[str, Any]) -> Path | str:
        """Start writing `state` as the checkpoint for `step`; returns its final path (or URI)."""
        self.wait()
        name = checkpoint_name(step)
        self._thread = threading.Thread(target=self._write, args=(step, name, snapshot(dict(state))),
                                        name="checkpoint-writer")
        self._thread.start()
        location = self.storage.location(name)
        return Path(location) if isinstance(self.storage, LocalRunStorage) else location

    def wait(self) -> None:
        """Block until the write in flight (if any) is done; CheckpointError if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            if isinstance(err, CheckpointError):
                raise err
            if isinstance(err, OSError):
                reason = describe_os_error(err, "write", err.filename or self.storage.location())
            else:
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CheckpointError(f"writing a checkpoint to {self.storage.location()} failed: {reason}") from err

    def _write(self, step: int, name: str, state: dict[str, Any]) -> None:
        try:
            bad = first_non_finite(state["objective"])
            if bad is not None:
                raise CheckpointError(f"step {step}: weight {bad!r} is NaN or infinite; no checkpoint is written "
                                      "from non-finite weights")
            state["digest"] = content_digest(state)
            with self.storage.open_atomic(name) as handle:
                save_torch(state, handle)
            self._prune()
            log.info("saved checkpoint %s", self.storage.location(name))
        except BaseException as err:  # reported by wait() on the training thread
            self._error = err

    def _prune(self) -> None:
        for _, old in checkpoint_names(self.storage)[:-self.keep]:
            self.storage.remove(old)
