"""Training checkpoints: atomic files written off the training thread, keep-last-K, and resume.

A checkpoint `ckpt-00001000.pt` is a `torch.save` of a dict holding only tensors and plain Python values,
so `torch.load(weights_only=True)` reads it (no pickled objects):
    format, step, objective, optimizer, scheduler, data (the reader's state), rng (one entry per rank),
    config (the resolved config as a dict)
Each write goes to a temp file in the same directory, is flushed and fsynced, renamed over the final
name and the directory is fsynced: a crash at any point leaves the previous checkpoints intact and
never a partial file under a checkpoint name.
"""
from __future__ import annotations

import logging
import random
import re
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from data_pipeline.atomic_files import atomic_open
from data_pipeline.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "step", "objective", "optimizer", "scheduler", "data", "rng", "config")
_NAME = re.compile(r"ckpt-(\d{8,})\.pt")
_TEMP_GLOB = "ckpt-*.pt.tmp"


class CheckpointError(UserError):
    """A checkpoint that cannot be read, does not fit the model, or could not be written."""


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"ckpt-{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every file named like a checkpoint in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.fullmatch(p.name))]
    return sorted(found)


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
    """Read and sanity-check a checkpoint onto the CPU; CheckpointError if it is missing or unusable."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check train.resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad record, disallowed global: all mean "unusable file"
        raise CheckpointError(f"checkpoint {path} is unreadable, probably partial or corrupt "
                              f"({_first_line(err)})") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a training checkpoint (it lacks some of {', '.join(REQUIRED_KEYS)})")
    if state["format"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {state['format']}, this code reads {FORMAT_VERSION}")
    return state


def find_latest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in `directory` that loads, with its state, or None if there is none.

    An unusable file is skipped with a warning and renamed to NAME.corrupt, so it is kept for
    inspection but never chosen again and never shadows the checkpoints this run writes next.
    """
    for _, path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as err:
            quarantined = path.with_name(path.name + ".corrupt")
            log.warning("%s; renamed it to %s and skipped it", err, quarantined.name)
            path.rename(quarantined)
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
    and re-raises its error, if any.
    """

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = directory
        self.keep = keep
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(_TEMP_GLOB):  # left by a process killed mid-write
            stale.unlink()

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        """Start writing `state` as the checkpoint for `step`; returns its final path."""
        self.wait()
        path = checkpoint_path(self.directory, step)
        self._thread = threading.Thread(target=self._write, args=(path, snapshot(dict(state))),
                                        name="checkpoint-writer")
        self._thread.start()
        return path

    def wait(self) -> None:
        """Block until the write in flight (if any) is done; CheckpointError if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise CheckpointError(f"writing a checkpoint to {self.directory} failed: {_first_line(err)}") from err

    def _write(self, path: Path, state: dict[str, Any]) -> None:
        try:
            write_atomically(path, state)
            self._prune()
            log.info("saved checkpoint %s", path)
        except BaseException as err:  # reported by wait() on the training thread
            self._error = err

    def _prune(self) -> None:
        for _, old in list_checkpoints(self.directory)[:-self.keep]:
            old.unlink()


def write_atomically(path: Path, state: Mapping[str, Any]) -> None:
    """torch.save `state` to `path` so that `path` is either absent/old or complete, even on a crash."""
    with atomic_open(path) as handle:
        torch.save(state, handle)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
