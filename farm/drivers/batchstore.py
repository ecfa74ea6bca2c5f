"""Batch state in a store (farm/batches.py): the database driver's tables, and an in-process
copy for the sync and async drivers. Redis keeps its own (`redis_batches`).

A batch record is `{"id", "name", "total", "processed", "failed", "callbacks", "created_at",
"finished_at", "cancelled_at"}`: `processed` counts the batch's jobs that have finished
(succeeded, finally failed, or skipped after a cancel), `failed` those that finally failed.
Each job of a batch is recorded as a member when the batch is made or grows (state pending),
and `batch_job_finished` counts only a member's pending -> finished change, in one transaction
with it: a job run again after its worker died is not counted twice, and a document that only
names the batch (`"batch": <id>`, pushed by anyone) is not counted at all.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Sequence

from .base import Outgoing

CALLBACKS = ("then", "catch", "finally")
PENDING = -1        # a member job that has not finished (its `failed` once it has: 0 or 1)
COLUMNS = "id, name, total, processed, failed, callbacks, created_at, finished_at, cancelled_at"


def record(row: Sequence[Any]) -> dict[str, Any]:
    """A batch record from a row of COLUMNS."""
    bid, name, total, processed, failed, callbacks, created, finished, cancelled = row
    return {"id": bid, "name": name, "total": int(total), "processed": int(processed), "failed": int(failed),
            "callbacks": json.loads(callbacks) if callbacks else {}, "created_at": float(created),
            "finished_at": None if finished is None else float(finished),
            "cancelled_at": None if cancelled is None else float(cancelled)}


class BatchQueries:
    """SQL for the `{table}_batches` and `{table}_batch_jobs` tables (sql.tables defines them)."""

    def __init__(self, dialect: str, jobs: str) -> None:
        q = (lambda s: s.replace("%s", "?")) if dialect == "sqlite" else (lambda s: s)
        b, bj = f"{jobs}_batches", f"{jobs}_batch_jobs"
        self.insert = q(f"INSERT INTO {b} ({COLUMNS}) VALUES (%s, %s, %s, 0, 0, %s, %s, %s, NULL)")
        self.select = q(f"SELECT {COLUMNS} FROM {b} WHERE id = %s")
        self.recent = f"SELECT {COLUMNS} FROM {b} ORDER BY created_at DESC, id LIMIT {{limit}}"
        self.grow = q(f"UPDATE {b} SET total = total + %s WHERE id = %s")
        # a member row's `failed` is PENDING until it finishes, then 0 or 1; only that change counts
        self.add_member = q(f"INSERT INTO {bj} (batch_id, job_id, failed) VALUES (%s, %s, {PENDING})")
        self.drop_member = q(f"DELETE FROM {bj} WHERE batch_id = %s AND job_id = %s AND failed = {PENDING}")
        self.record_job = q(f"UPDATE {bj} SET failed = %s WHERE batch_id = %s AND job_id = %s "
                            f"AND failed = {PENDING}")
        self.count_job = q(f"UPDATE {b} SET processed = processed + 1, failed = failed + %s WHERE id = %s")
        self.finish = q(f"UPDATE {b} SET finished_at = %s WHERE id = %s AND finished_at IS NULL "
                        "AND processed >= total")
        self.cancel = q(f"UPDATE {b} SET cancelled_at = %s WHERE id = %s AND cancelled_at IS NULL")
        self.prune_jobs = q(f"DELETE FROM {bj} WHERE batch_id IN "
                            f"(SELECT id FROM {b} WHERE finished_at IS NOT NULL AND finished_at < %s)")
        # a callback is pushed by the one caller whose update sets its column
        self.fire = {w: q(f"UPDATE {b} SET {w}_at = %s WHERE id = %s AND {w}_at IS NULL") for w in CALLBACKS}
        self.unfire = {w: q(f"UPDATE {b} SET {w}_at = NULL WHERE id = %s") for w in CALLBACKS}
        self.prune = q(f"DELETE FROM {b} WHERE finished_at IS NOT NULL AND finished_at < %s")


class DatabaseBatches:
    """The Store's batch methods for DatabaseQueue (a mixin: it brings `_cursor` and `sql`)."""

    _batch_sql: BatchQueries | None = None

    @property
    def batch_sql(self) -> BatchQueries:
        if self._batch_sql is None:
            self._batch_sql = BatchQueries(self.sql.dialect, self.config.table)  # type: ignore[attr-defined]
        return self._batch_sql

    def add_batch(self, doc: dict[str, Any]) -> None:
        """Record the batch and its members (`doc["jobs"]`: their ids) in one transaction."""
        jobs = list(doc.get("jobs") or ())
        finished = doc["created_at"] if not jobs else None
        with self._cursor(tx=True) as cur:        # type: ignore[attr-defined]
            cur.execute(self.batch_sql.insert, (doc["id"], doc.get("name"), len(jobs),
                                                json.dumps(doc.get("callbacks") or {}), doc["created_at"], finished))
            for start in range(0, len(jobs), 1000):
                cur.executemany(self.batch_sql.add_member, [(doc["id"], j) for j in jobs[start:start + 1000]])

    def grow_batch(self, batch_id: str, job_ids: Sequence[str]) -> None:
        """Add members to an existing batch (an unknown id: nothing happens)."""
        with self._cursor(tx=True) as cur:        # type: ignore[attr-defined]
            self._grow(cur, batch_id, job_ids)

    def shrink_batch(self, batch_id: str, job_ids: Sequence[str]) -> None:
        """Undo grow_batch (their push failed)."""
        with self._cursor(tx=True) as cur:        # type: ignore[attr-defined]
            for j in job_ids:
                cur.execute(self.batch_sql.drop_member, (batch_id, j))
                if cur.rowcount == 1:
                    cur.execute(self.batch_sql.grow, (-1, batch_id))

    def _grow(self, cur: Any, batch_id: str, job_ids: Sequence[str]) -> None:
        cur.execute(self.batch_sql.grow, (len(job_ids), batch_id))
        if cur.rowcount == 1 and job_ids:
            cur.executemany(self.batch_sql.add_member, [(batch_id, j) for j in job_ids])

    def batch_job_finished(self, batch_id: str, job_id: str, failed: bool) -> dict[str, Any] | None:
        """Count a member once (its pending -> finished change; atomic); the batch record after it."""
        s = self.batch_sql
        with self._cursor(tx=True) as cur:   # type: ignore[attr-defined]
            cur.execute(s.record_job, (int(failed), batch_id, job_id))
            if cur.rowcount == 1:
                cur.execute(s.count_job, (int(failed), batch_id))
                cur.execute(s.finish, (time.time(), batch_id))
            cur.execute(s.select, (batch_id,))
            row = cur.fetchone()
        return record(row) if row else None

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        with self._cursor() as cur:        # type: ignore[attr-defined]
            cur.execute(self.batch_sql.select, (batch_id,))
            row = cur.fetchone()
        return record(row) if row else None

    def batches(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._cursor() as cur:        # type: ignore[attr-defined]
            cur.execute(self.batch_sql.recent.format(limit=int(limit)))
            return [record(row) for row in cur.fetchall()]

    def cancel_batch(self, batch_id: str) -> bool:
        """Mark the batch cancelled; False for an unknown id."""
        with self._cursor() as cur:        # type: ignore[attr-defined]
            cur.execute(self.batch_sql.cancel, (time.time(), batch_id))
            if cur.rowcount == 1:
                return True
        return self.batch(batch_id) is not None

    def fire_batch(self, batch_id: str, which: str) -> bool:
        """True for the one caller that may push the batch's `which` callback."""
        with self._cursor() as cur:        # type: ignore[attr-defined]
            cur.execute(self.batch_sql.fire[which], (time.time(), batch_id))
            return cur.rowcount == 1

    def unfire_batch(self, batch_id: str, which: str) -> None:
        """Its push failed: the next worker to see the batch due pushes it."""
        with self._cursor() as cur:        # type: ignore[attr-defined]
            cur.execute(self.batch_sql.unfire[which], (batch_id,))

    # pushes that must happen once: the mark and the jobs in one transaction, so a worker
    # killed at any point has either done both or neither (farm/batches.py push_once)
    def claim_and_push(self, name: str, expires: float, items: Sequence[Outgoing],
                       grow: str | None = None) -> bool:
        """Take claim `name` and insert the jobs (growing batch `grow` by their number); False,
        with nothing written, when the claim was taken already."""
        now = time.time()
        if now >= self._claims_pruned:                   # type: ignore[has-type]
            self._claims_pruned = now + 3600
            with self._cursor() as cur:                  # type: ignore[attr-defined]
                cur.execute(self.sql.prune_claims, (now,))   # type: ignore[attr-defined]
        with self._cursor(tx=True) as cur:               # type: ignore[attr-defined]
            cur.execute(self.sql.claim, ("claim:" + name, expires))   # type: ignore[attr-defined]
            if cur.rowcount != 1:
                return False
            if grow is not None:
                self._grow(cur, grow, [o.id for o in items])
            self._insert_all(cur, items, now)
        return True

    def fire_and_push(self, batch_id: str, which: str, items: Sequence[Outgoing]) -> bool:
        """Mark the batch's `which` callback fired and insert it; False when it had fired."""
        now = time.time()
        with self._cursor(tx=True) as cur:               # type: ignore[attr-defined]
            cur.execute(self.batch_sql.fire[which], (now, batch_id))
            if cur.rowcount != 1:
                return False
            self._insert_all(cur, items, now)
        return True

    def _insert_all(self, cur: Any, items: Sequence[Outgoing], now: float) -> None:
        rows = [(o.id, o.queue, o.body, o.attempts, o.available_at, now) for o in items]
        cur.executemany(self.sql.insert, rows)           # type: ignore[attr-defined]

    def prune_batches(self, before: float) -> int:
        """Forget batches that finished before `before` (and their job records)."""
        with self._cursor(tx=True) as cur:   # type: ignore[attr-defined]
            cur.execute(self.batch_sql.prune_jobs, (before,))
            cur.execute(self.batch_sql.prune, (before,))
            return int(cur.rowcount)


class MemoryBatches:
    """Batches and claims in this process only: the sync and async drivers keep nothing else."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batches: dict[str, dict[str, Any]] = {}
        self._jobs: dict[str, set[str]] = {}
        self._claims: dict[str, float] = {}
        self._pruned_at, self._prune_size = 0.0, 1000
        self._fired: dict[str, set[str]] = {}

    def add_batch(self, doc: dict[str, Any]) -> None:
        jobs = set(doc.get("jobs") or ())
        with self._lock:
            self._batches[doc["id"]] = {
                "id": doc["id"], "name": doc.get("name"), "total": len(jobs), "processed": 0, "failed": 0,
                "callbacks": doc.get("callbacks") or {}, "created_at": doc["created_at"],
                "finished_at": doc["created_at"] if not jobs else None, "cancelled_at": None}
            self._jobs[doc["id"]] = jobs        # its members that have not finished

    def grow_batch(self, batch_id: str, job_ids: Sequence[str]) -> None:
        with self._lock:
            if batch_id in self._batches:
                new = set(job_ids) - self._jobs[batch_id]
                self._jobs[batch_id] |= new
                self._batches[batch_id]["total"] += len(new)

    def shrink_batch(self, batch_id: str, job_ids: Sequence[str]) -> None:
        with self._lock:
            if batch_id in self._batches:
                gone = set(job_ids) & self._jobs[batch_id]
                self._jobs[batch_id] -= gone
                self._batches[batch_id]["total"] -= len(gone)

    def batch_job_finished(self, batch_id: str, job_id: str, failed: bool) -> dict[str, Any] | None:
        with self._lock:
            b = self._batches.get(batch_id)
            if b is None:
                return None
            if job_id in self._jobs[batch_id]:      # a member, not finished before
                self._jobs[batch_id].discard(job_id)
                b["processed"] += 1
                b["failed"] += int(failed)
                if b["finished_at"] is None and b["processed"] >= b["total"]:
                    b["finished_at"] = time.time()
            return dict(b)

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        with self._lock:
            b = self._batches.get(batch_id)
            return dict(b) if b else None

    def batches(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            found = sorted(self._batches.values(), key=lambda b: -b["created_at"])
            return [dict(b) for b in found[:limit]]

    def cancel_batch(self, batch_id: str) -> bool:
        with self._lock:
            b = self._batches.get(batch_id)
            if b is None:
                return False
            b["cancelled_at"] = b["cancelled_at"] or time.time()
            return True

    def prune_batches(self, before: float) -> int:
        with self._lock:
            gone = [i for i, b in self._batches.items() if b["finished_at"] is not None and b["finished_at"] < before]
            for i in gone:
                del self._batches[i], self._jobs[i]
                self._fired.pop(i, None)
            return len(gone)

    def fire_batch(self, batch_id: str, which: str) -> bool:
        with self._lock:
            fired = self._fired.setdefault(batch_id, set())
            if which in fired:
                return False
            fired.add(which)
            return True

    def unfire_batch(self, batch_id: str, which: str) -> None:
        with self._lock:
            self._fired.get(batch_id, set()).discard(which)

    def claim(self, name: str, expires: float) -> bool:
        """Take claim `name` until `expires`; False while it is held. Expired claims are dropped
        as claims are taken (once a minute, or when their number has doubled: amortized O(1)),
        so a long-lived process does not grow."""
        now = time.time()
        with self._lock:
            if now >= self._pruned_at or len(self._claims) >= self._prune_size:
                for gone in [n for n, at in self._claims.items() if at <= now]:
                    del self._claims[gone]
                self._pruned_at, self._prune_size = now + 60.0, 2 * len(self._claims) + 1000
            held = self._claims.get(name)
            if held is not None and held > now:
                return False
            self._claims[name] = expires
            return True

    def unclaim(self, name: str) -> None:
        with self._lock:
            self._claims.pop(name, None)
