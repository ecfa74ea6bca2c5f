"""Counters with an expiry: the one store primitive unique jobs and middleware are built on.

`incr(name, by, ttl) -> (value, expires_at)` adds `by` to the counter `name` atomically; a
counter that is missing or has expired starts again from 0 with `expires_at = now + ttl`.
`drop(name, expires=None)` deletes it, with `expires` only if it still has that expiry (so a
holder frees its own lock, never the next holder's). A lock is `incr(name, 1, ttl)[0] == 1`.

Every Store implements both (database: a `{table}_locks` table; redis: a Lua script; amqp:
its `store:`); `MEMORY` is the in-process one of the sync and async drivers.
"""
from __future__ import annotations

import threading
import time


class MemoryLocks:
    """incr/drop in this process only: for the sync and async drivers, which share nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, tuple[int, float]] = {}

    def incr(self, name: str, by: int, ttl: float) -> tuple[int, float]:
        now = time.time()
        with self._lock:
            value, expires = self._counters.get(name, (0, 0.0))
            if expires <= now:
                value, expires = 0, now + ttl
            self._counters[name] = (value + by, expires)
            if len(self._counters) > 10_000:        # expired ones go now and then
                self._counters = {k: v for k, v in self._counters.items() if v[1] > now}
            return value + by, expires

    def drop(self, name: str, expires: float | None = None) -> bool:
        with self._lock:
            found = self._counters.get(name)
            if found is None or (expires is not None and found[1] != expires):
                return False
            del self._counters[name]
            return True


MEMORY = MemoryLocks()
