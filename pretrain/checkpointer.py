"""Checkpoint policy for one run: ownership of the run directory, which checkpoint to resume from, fallback
past corrupt files, saving every stateful component, and keeping the last K.

`CheckpointManager` has the shape of torchtitan's: the trainer hands it its stateful components by name
(`objective`, `optimizer`, `scheduler`, `data`, `rng`, each with `state_dict()`/`load_state_dict()`)
and calls `restore(states) -> step` once and `save(step, states)` at every checkpoint, on every rank.
Rank 0 alone owns the run directory, chooses and writes; its decisions (and errors) reach every rank,
so all ranks fail or resume together. All file access goes through a `RunStorage` (pretrain/run_storage.py).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Protocol

from torch import nn

from data_pipeline.errors import UserError, describe_os_error
from pretrain.checkpoint import (CORRUPT_SUFFIX, FORMAT_VERSION, CheckpointError, CheckpointUnreadable,
                                 CheckpointWriter, checkpoint_names, load_module_state, newest_valid,
                                 read_checkpoint)
from pretrain.distributed import DistEnv, broadcast_object
from pretrain.run_owner import RunOwnership
from pretrain.object_run_storage import run_storage, split_location
from pretrain.run_storage import RunStorage

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
READ_ATTEMPTS = 3          # a read error (not corruption) is retried before the run stops
READ_RETRY_S = 2.0


class Stateful(Protocol):
    def state_dict(self) -> Any: ...
    def load_state_dict(self, state: Any) -> None: ...


class CheckpointManager:
    """Owns `run_dir` (rank 0) and its `checkpoints/` from `restore` until `close`."""

    def __init__(self, run_dir: Path | str, env: DistEnv, keep: int, resume: str, config: dict[str, Any],
                 lease_s: float) -> None:
        self.env, self.keep, self.resume, self.config = env, keep, resume, config
        self.run_storage: RunStorage = run_storage(run_dir)
        self.storage: RunStorage = run_storage(f"{str(run_dir).rstrip('/')}/{CHECKPOINT_DIR}")
        self.ownership = RunOwnership(self.run_storage, lease_s) if env.is_main else None
        self.writer: CheckpointWriter | None = None
        self.last_saved: Path | str | None = None
        self._restored: str | None = None

    # -- resume -------------------------------------------------------------------------------------------

    def restore(self, states: Mapping[str, Stateful]) -> int:
        """Take ownership (rank 0), load the checkpoint `resume` selects into `states` on every rank and
        return its step; 0 for a fresh start."""
        found: tuple[str, dict[str, Any]] | None = None
        decision: tuple[str | None, str | None] = (None, None)  # (location, error)
        if self.env.is_main:
            try:
                self._own()
                found = self._choose()
                decision = (found[0] if found else None, None)
            except UserError as err:
                decision = (None, str(err))
        location, error = broadcast_object(decision, self.env)
        if error is not None:
            raise UserError(error)
        if location is None:
            return 0
        if found is None:
            found = location, self._read_chosen(location)
        self._apply(found[1], states, location)
        self._restored = location
        log.info("resumed from %s at step %d", location, found[1]["step"])
        return found[1]["step"]

    def _own(self) -> None:
        try:
            assert self.ownership is not None
            self.ownership.acquire()
            self.writer = CheckpointWriter(self.storage, self.keep)
        except OSError as err:
            raise UserError(describe_os_error(err, "write to train.run_dir", err.filename or
                                              self.run_storage.location())) from None

    def _read_chosen(self, location: str) -> dict[str, Any]:
        try:
            return read_checkpoint(*split_location(location))
        except CheckpointError as err:
            raise CheckpointError(f"rank {self.env.rank} cannot use the checkpoint rank 0 chose ({err}); "
                                  "train.run_dir must be on storage shared by every pod") from None

    def _apply(self, state: dict[str, Any], states: Mapping[str, Stateful], location: str) -> None:
        for name, component in states.items():
            if isinstance(component, nn.Module):
                load_module_state(component, state[name], Path(location))
            else:
                component.load_state_dict(state[name])

    def _choose(self) -> tuple[str, dict[str, Any]] | None:
        """Rank 0: the checkpoint `resume` names (auto: the newest that verifies; none: no checkpoint).
        Refuses a run_dir holding checkpoints of later steps, which would be pruned or auto-resumed
        in place of this run's."""
        found: tuple[str, dict[str, Any]] | None = None
        if self.resume == "auto":
            found = self._newest_valid()
        elif self.resume != "none":
            storage, name = split_location(self.resume)
            found = storage.location(name), self._read_with_retries(storage, name)
        start = found[1]["step"] if found else 0
        later = [name for step, name in checkpoint_names(self.storage) if step > start]
        if later:
            raise UserError(f"{self.storage.location()} holds checkpoints past step {start} (newest {later[-1]}); "
                            "use train.resume=auto to continue that run, or a new train.run_dir")
        return found

    def _newest_valid(self) -> tuple[str, dict[str, Any]] | None:
        """The newest checkpoint that verifies; corrupt ones are renamed NAME.corrupt and skipped. If
        checkpoints were written here and none is usable, the run stops: starting again from step 0
        must be asked for (train.resume=none)."""
        found = newest_valid(self.storage, lambda name: self._read_with_retries(self.storage, name))
        if found is not None:
            return self.storage.location(found[0]), found[1]
        corrupt = [name for name in self.storage.list() if name.endswith(CORRUPT_SUFFIX)]
        if corrupt:
            raise CheckpointError(f"no checkpoint in {self.storage.location()} is usable ({len(corrupt)} renamed "
                                  f"*{CORRUPT_SUFFIX}); to start again from step 0 set train.resume=none, or "
                                  "name a checkpoint with train.resume=PATH")
        return None

    def _read_with_retries(self, storage: RunStorage, name: str) -> dict[str, Any]:
        """A read error (EIO, a stale NFS handle, permissions) is not corruption: retry, then stop with
        the file untouched rather than skip a good checkpoint."""
        for _ in range(READ_ATTEMPTS - 1):
            try:
                return read_checkpoint(storage, name)
            except CheckpointUnreadable as err:
                log.warning("%s; retrying", err)
                time.sleep(READ_RETRY_S)
        try:
            return read_checkpoint(storage, name)
        except CheckpointUnreadable as err:
            raise CheckpointUnreadable(f"{err} (the file is kept: a read error is not corruption)") from None

    # -- save ---------------------------------------------------------------------------------------------

    def save(self, step: int, states: Mapping[str, Stateful]) -> None:
        """Checkpoint `states` at `step`: every rank gathers (some state_dicts are collectives), rank 0
        writes in the background. A failed previous write is raised here."""
        state = {name: component.state_dict() for name, component in states.items()}
        if self.writer is None:
            return
        self.last_saved = self.writer.save(step, {"format": FORMAT_VERSION, "step": step, **state,
                                                  "config": self.config})

    def wait(self) -> None:
        """Block until the write in flight (if any) is on disk; its error, if it failed, is raised here."""
        if self.writer is not None:
            self.writer.wait()

    def newest(self) -> str | None:
        """Rank 0: the newest checkpoint of this run once written (waiting for the write in flight), or the
        one it resumed from; for messages that must name where to go back to."""
        self.wait()
        return str(self.last_saved) if self.last_saved is not None else self._restored

    def close(self) -> None:
        """Wait for the write in flight (raising its error) and give up ownership of the run directory."""
        try:
            self.wait()
        finally:
            if self.ownership is not None:
                self.ownership.release()
