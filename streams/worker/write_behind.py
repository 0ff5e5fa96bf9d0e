"""A working copy of a Faust table, written back once a second instead of on every update.

Why: the Analyst updates a cell's state (kilobytes of JSON: windows, histograms, CUSUMs) on every
authorization outcome. A Faust table sends a changelog record per assignment, which at 200
outcomes/s would be megabytes a second of changelog for state that is only needed after a crash.
So the agents work on this mapping, and a timer writes the keys changed since the last flush.

What a crash costs: the state of up to one flush interval. The routing agents then resume from a
checkpoint slightly older than the committed offset, so a few outcomes are counted twice or not at
all: the CUSUMs move by a few attempts. Every decision already taken is a published record
(hypothesis, experiment, policy) and is not lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, MutableMapping
from typing import Any

_DELETED = object()


class WriteBehind(MutableMapping[str, Any]):
    def __init__(self, table: MutableMapping[str, Any], every_s: float = 1.0) -> None:
        self.table = table
        self.cache: dict[str, Any] = {}
        self.dirty: set[str] = set()
        self.every_s = every_s
        self._flushed_at = time.monotonic()

    def __getitem__(self, key: str) -> Any:
        value = self.cache.get(key, _DELETED)
        if value is _DELETED:
            if key in self.dirty or key not in self.table:
                raise KeyError(key)
            value = self.cache[key] = self.table[key]
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.cache[key] = value
        self.dirty.add(key)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self.cache.pop(key, None)
        self.dirty.add(key)

    def __contains__(self, key: object) -> bool:
        if key in self.cache:
            return True
        return key not in self.dirty and key in self.table

    def __iter__(self) -> Iterator[str]:
        seen = set(self.cache)
        yield from self.cache
        for key in list(self.table):
            if key not in seen and key not in self.dirty:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def flush_if_due(self, now: float | None = None) -> int:
        """Flush when ``every_s`` has passed since the last flush; returns how many were written.

        Called from inside stream iteration: Faust writes a table only there (the event names the
        changelog partition), so the checkpoint cannot run on a timer."""
        now = time.monotonic() if now is None else now
        if now - self._flushed_at < self.every_s:
            return 0
        self._flushed_at = now
        return self.flush()

    def flush(self) -> int:
        """Write the changed keys to the table; returns how many."""
        for key in self.dirty:
            if key in self.cache:
                self.table[key] = self.cache[key]
            elif key in self.table:
                del self.table[key]
        written = len(self.dirty)
        self.dirty.clear()
        return written
