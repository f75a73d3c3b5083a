"""Ownership of a run directory: one run at a time writes checkpoints into it.

Rank 0 creates `run_dir/owner.json` exclusively (host, pid, job, start time, heartbeat, a random token)
and refreshes its heartbeat from a background thread; the file is removed when the run ends. A second
run finds the file and is refused, naming the holder. A holder that is gone is taken over:
- on the same host, a holder whose pid no longer runs (or is this very process: a restarted container
  often gets its predecessor's pid), or one of the same job (a restarted pod of that job);
- on any host, a holder whose heartbeat is older than the lease. Pid liveness means nothing across
  hosts, so on shared volumes the heartbeat is the proof of life; the lease must exceed the clock skew
  between pods (seconds on NTP-synced nodes) plus the longest stall of the writing thread.
A takeover renames the stale file aside and checks it moved the file it judged stale (same token), so two
runs taking over at once cannot both win.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from data_pipeline.errors import UserError
from pretrain.run_storage import RunStorage

log = logging.getLogger(__name__)

OWNER_FILE = "owner.json"


class RunDirInUse(UserError):
    """Another live run holds the run directory."""


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    job: str
    started: str           # ISO 8601, UTC
    heartbeat: float       # unix time of the holder's last refresh
    token: str

    @classmethod
    def this_process(cls) -> Owner:
        return cls(host=socket.gethostname(), pid=os.getpid(), job=current_job(),
                   started=datetime.now(timezone.utc).isoformat(timespec="seconds"), heartbeat=time.time(),
                   token=secrets.token_hex(8))

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> Owner | None:
        """None for a file that is not a complete owner record (e.g. a holder killed while creating it)."""
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError):
            return None

    def describe(self) -> str:
        age = time.time() - self.heartbeat
        return (f"host {self.host}, pid {self.pid}, job {self.job or '-'}, started {self.started}, "
                f"last heartbeat {age:.0f} s ago")


def current_job() -> str:
    """The job this process belongs to: the PyTorchJob's name (JOB_NAME, set by our manifests) or torchrun's id."""
    return os.environ.get("JOB_NAME") or os.environ.get("TORCHELASTIC_RUN_ID", "")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def is_stale(holder: Owner, me: Owner, lease_s: float) -> bool:
    """Whether `holder` can no longer be writing to the run directory."""
    if time.time() - holder.heartbeat > lease_s:
        return True
    if holder.host != me.host:
        return False
    if holder.pid == me.pid or (holder.job and holder.job == me.job):
        return True
    return not pid_alive(holder.pid)


class RunOwnership:
    """Holds `owner.json` in a run directory from `acquire()` to `release()`."""

    def __init__(self, storage: RunStorage, lease_s: float) -> None:
        self.storage = storage
        self.lease_s = lease_s
        self.me = Owner.this_process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Become the owner, taking over a stale holder; RunDirInUse if a live run holds the directory."""
        for _ in range(5):  # a lost race with another starter is retried
            if self.storage.create_exclusive(OWNER_FILE, self.me.encode()):
                self._thread = threading.Thread(target=self._beat, name="run-dir-heartbeat", daemon=True)
                self._thread.start()
                return
            holder = self._read_holder()
            if holder is None:  # released between our create and our read
                continue
            if not is_stale(holder, self.me, self.lease_s):
                raise RunDirInUse(
                    f"train.run_dir {self.storage.location()} is in use by another run ({holder.describe()}); "
                    f"wait for it to end or use another train.run_dir (if that run is gone, delete "
                    f"{self.storage.location(OWNER_FILE)})")
            self._take_over(holder)
        raise RunDirInUse(f"train.run_dir {self.storage.location()}: other runs keep taking "
                          f"{OWNER_FILE} while this one starts; start one run per run_dir")

    def release(self) -> None:
        """Stop the heartbeat and remove the owner file (if it is still ours)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        holder = self._read_holder()
        if holder is not None and holder.token == self.me.token:
            self.storage.remove(OWNER_FILE)

    def _read_holder(self) -> Owner | None:
        try:
            data = self.storage.read_bytes(OWNER_FILE)
        except FileNotFoundError:
            return None
        holder = Owner.decode(data)
        if holder is None:  # never written by a run: records are created whole
            raise RunDirInUse(f"{self.storage.location(OWNER_FILE)} is not an owner record; delete it if no "
                              "run uses this train.run_dir")
        return holder

    def _take_over(self, stale: Owner) -> None:
        aside = f"{OWNER_FILE}.stale-{self.me.token}"
        try:
            self.storage.rename(OWNER_FILE, aside)
        except FileNotFoundError:
            return  # someone else moved it first
        moved = Owner.decode(self.storage.read_bytes(aside))
        if moved is not None and moved.token != stale.token:
            # Another starter replaced the stale file between our read and our rename: give it back.
            if not self.storage.create_exclusive(OWNER_FILE, self.storage.read_bytes(aside)):
                log.warning("two runs started on %s at once", self.storage.location())
        else:
            log.warning("took over %s from a run that is gone (%s)", self.storage.location(), stale.describe())
        self.storage.remove(aside)

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                holder = self._read_holder()
                if holder is None or holder.token != self.me.token:
                    log.error("lost ownership of %s (now %s)", self.storage.location(),
                              holder.describe() if holder else "nobody")
                    return
                with self.storage.open_atomic(OWNER_FILE) as handle:
                    handle.write(Owner(**{**asdict(self.me), "heartbeat": time.time()}).encode())
            except OSError as err:  # a storage hiccup: the next beat tries again, well within the lease
                log.warning("could not refresh %s: %s", self.storage.location(OWNER_FILE), err)
