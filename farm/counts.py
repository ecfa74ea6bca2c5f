"""How many jobs ended and how long they took: summed in the worker, added to its store.

A worker notes each settled attempt in memory (an append to a deque) and its heart sums them
per minute, queue, job and outcome, and adds the sums to the store every few seconds and at
shutdown, one statement per flush. The store keeps per-minute rows (the
dashboard's throughput chart, pruned after PRUNE_AFTER) and running totals since the table
was made, with the duration histogram's bucket counts (Prometheus' counters).
"""
from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import deque
from typing import Any, Sequence

# farm_job_duration_seconds' upper bounds (Prometheus' defaults, then up to a minute); +Inf last
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LE = tuple(f"{b:g}" for b in BOUNDS) + ("+Inf",)
OUTCOMES = ("done", "failed", "retried", "released")
PRUNE_AFTER = 2 * 3600.0   # seconds a per-minute row is kept
PRUNE_EVERY = 600.0        # seconds between a worker's prunes of old per-minute rows


class Counts:
    """Attempts settled and not yet in the store. The worker's threads only append to a deque
    (thread-safe, no lock on the hot path); the heart sums them by (minute, queue, job,
    outcome) every tick and adds the sums to the store every few seconds."""

    def __init__(self) -> None:
        self._new: deque[tuple[str, str, str, float]] = deque()
        self._cells: dict[tuple[int, str, str, str], list[Any]] = {}
        self._lock = threading.Lock()      # the heart and the worker's shutdown, never the hot path
        self._pruned = time.time()         # a short-lived worker (listen's child) need not prune

    def add(self, queue: str, job: str, outcome: str, seconds: float) -> None:
        """One attempt settled (the hot path: keep it to this)."""
        self._new.append((queue, job, outcome, seconds))

    def collect(self, now: float | None = None) -> None:
        """Sum the attempts added since the last call under the current minute."""
        minute = int(time.time() if now is None else now) // 60 * 60
        with self._lock:
            while True:
                try:
                    queue, job, outcome, seconds = self._new.popleft()
                except IndexError:
                    return
                key = (minute, queue, job, outcome)
                cell = self._cells.get(key)
                if cell is None:
                    cell = self._cells[key] = [0, 0.0, [0] * len(LE)]
                cell[0] += 1
                cell[1] += seconds
                cell[2][bisect_left(BOUNDS, seconds)] += 1     # the first bucket whose bound is >= seconds

    def take(self) -> list[dict[str, Any]]:
        """The sums so far as store rows, forgotten here."""
        self.collect()
        with self._lock:
            cells, self._cells = self._cells, {}
        return [{"minute": k[0], "queue": k[1], "job": k[2], "outcome": k[3], "n": c[0], "seconds": c[1],
                 "buckets": {LE[i]: b for i, b in enumerate(c[2]) if b}} for k, c in cells.items()]

    def put_back(self, rows: Sequence[dict[str, Any]]) -> None:
        """Rows the store could not take: added again at the next flush."""
        with self._lock:
            for r in rows:
                key = (r["minute"], r["queue"], r["job"], r["outcome"])
                cell = self._cells.setdefault(key, [0, 0.0, [0] * len(LE)])
                cell[0] += r["n"]
                cell[1] += r["seconds"]
                for le, b in r["buckets"].items():
                    cell[2][LE.index(le)] += b

    def flush(self, store: Any, now: float | None = None) -> int:
        """Add the sums to the store (one statement); now and then prune old minutes. On an
        error the sums are kept for the next flush and the error goes up."""
        rows = self.take()
        if rows:
            try:
                store.add_counts(rows)
            except BaseException:
                self.put_back(rows)
                raise
        now = time.time() if now is None else now
        if now - self._pruned >= PRUNE_EVERY:
            self._pruned = now
            store.prune_counts(now - PRUNE_AFTER)
        return len(rows)


def cumulative(buckets: dict[str, int]) -> dict[str, int]:
    """Per-bucket counts (each observation in one bucket) as Prometheus' cumulative `le` counts."""
    out, total = {}, 0
    for le in LE:
        total += buckets.get(le, 0)
        out[le] = total
    return out


def key_rows(rows: Sequence[dict[str, Any]]) -> list[tuple[int, str, str, str, str, int, float]]:
    """The store's rows for a flush: (minute, queue, job, outcome, le, n, seconds). Each
    per-minute sum is also added to the totals (minute 0), whose bucket counts have `le` set."""
    out = []
    for r in rows:
        q, j, o = r["queue"][:191], r["job"][:191], r["outcome"]     # the database's key columns
        out.append((r["minute"], q, j, o, "", r["n"], r["seconds"]))
        out.append((0, q, j, o, "", r["n"], r["seconds"]))
        out.extend((0, q, j, o, le, n, 0.0) for le, n in r["buckets"].items())
    return _merged(out)


def _merged(rows: list[tuple[int, str, str, str, str, int, float]]) -> list[tuple[int, str, str, str, str, int, float]]:
    """One row per key (an upsert must not name the same key twice in one statement), in key
    order: workers flushing at once lock the rows in the same order, so never deadlock."""
    merged: dict[tuple[int, str, str, str, str], list[Any]] = {}
    for m, q, j, o, le, n, s in rows:
        cell = merged.setdefault((m, q, j, o, le), [0, 0.0])
        cell[0] += n
        cell[1] += s
    return [(*k, c[0], c[1]) for k, c in sorted(merged.items())]


def totals_from(rows: Sequence[tuple[str, str, str, str, int, float]]) -> list[dict[str, Any]]:
    """job_totals() from the totals rows (queue, job, outcome, le, n, seconds)."""
    by: dict[tuple[str, str, str], dict[str, Any]] = {}
    for q, j, o, le, n, s in rows:
        t = by.setdefault((q, j, o), {"queue": q, "job": j, "outcome": o, "n": 0, "seconds": 0.0, "buckets": {}})
        if le:
            t["buckets"][le] = t["buckets"].get(le, 0) + int(n)
        else:
            t["n"] += int(n)
            t["seconds"] += float(s)
    for t in by.values():
        t["buckets"] = cumulative(t["buckets"])
    return sorted(by.values(), key=lambda t: (t["queue"], t["job"], t["outcome"]))
