"""Read-ahead for remote shards: the order says which shards this rank needs next, so fetch exactly those.

The reader tells `ReadAhead` which global batch it is about to read; a background thread fetches the
shards of the rank's next `horizon` global batches, in order, into the shared cache, and the stores are
told what to keep: the shards of the current batch (never evicted) and of the batches from `behind`
back (the rank's other DataLoader workers may lag by that much) to `horizon` ahead. A prefetch that would
need to evict a shard still needed waits for the reader to move on; the reader itself always fetches what
it needs now. Errors in the thread only stop prefetching: the reader fetches again and reports them.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

from data_pipeline.shard_stores import ShardStore

log = logging.getLogger(__name__)
Needs = Callable[[int], "list[set[int]] | None"]  # rank batch -> per source, the shards it reads; None past the end


class ReadAhead:
    """Prefetches the shards of global batches [current, current + horizon) of this rank."""

    def __init__(self, needs: Needs, stores: Sequence[ShardStore], *, behind: int, horizon: int) -> None:
        self._needs, self._stores = needs, list(stores)
        self.behind, self.horizon = behind, horizon
        self._memo: dict[int, list[set[int]] | None] = {}
        self._lock = threading.Lock()
        self._moved = threading.Condition()
        self._current: int | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="shard-prefetch", daemon=True)

    def _shards(self, batch: int) -> list[set[int]] | None:
        if batch < 0:
            return [set() for _ in self._stores]
        with self._lock:
            if batch not in self._memo:
                self._memo[batch] = self._needs(batch)
            return self._memo[batch]

    def _wanted(self, first: int, last: int) -> list[set[int]]:
        wanted: list[set[int]] = [set() for _ in self._stores]
        for batch in range(first, last):
            for source, shards in enumerate(self._shards(batch) or ()):
                wanted[source] |= shards
        return wanted

    def at(self, batch: int) -> None:
        """The reader is about to read rank batch `batch`: plan the stores and let the thread run ahead."""
        now = self._shards(batch) or [set() for _ in self._stores]
        soon = self._wanted(batch - self.behind, batch + self.horizon)
        for store, needed_now, needed_soon in zip(self._stores, now, soon):
            store.plan(needed_now, needed_soon)
        with self._lock:
            for old in [b for b in self._memo if b < batch - self.behind]:
                del self._memo[old]
        with self._moved:
            self._current = batch
            self._moved.notify_all()
        if self._thread.ident is None:
            self._thread.start()

    def close(self) -> None:
        with self._moved:
            self._closed = True
            self._moved.notify_all()

    def _run(self) -> None:
        batch = -1
        try:
            while True:
                with self._moved:
                    batch = max(batch, self._current)
                    while not self._closed and batch >= self._current + self.horizon:
                        self._moved.wait()
                    if self._closed:
                        return
                    batch = max(batch, self._current)
                    current = self._current
                shards = self._shards(batch)
                if shards is None:
                    return
                if all(store.prefetch(index) for store, wanted in zip(self._stores, shards)
                       for index in sorted(wanted)):
                    batch += 1
                else:  # no room without evicting something still needed: wait for the reader to move
                    with self._moved:
                        while not self._closed and self._current == current:
                            self._moved.wait()
        except Exception as err:  # noqa: BLE001 - the reader re-fetches and reports it
            log.debug("prefetch stopped at rank batch %d: %s", batch, err)
