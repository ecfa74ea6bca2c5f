"""What the dashboard shows, read from the farm on one thread of its own.

Drivers are not all safe to share between threads (pika's connection is not), so every call
into the farm runs on one `FarmThread`. A `Snapshot` thread asks it for the status object
every few seconds and keeps the last answer: `GET /api/status` returns that copy and never
waits on a database. Requests that must read or write the store now (a page of failed jobs,
retry, forget) queue on the same thread and give up after `WAIT` seconds (HTTP 503).
"""
from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from typing import Any, Callable

import click

from ..errors import FarmError

WAIT = 15.0          # seconds a request waits for the farm thread before it answers 503
PER_PAGE = 50
SEARCH_LIMIT = 10_000    # failed entries per store scanned by a search on the job name


class Busy(FarmError):
    """The farm did not answer in time."""


def wait(future: concurrent.futures.Future[Any], timeout: float) -> Any:
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        raise Busy(f"the farm did not answer within {timeout:g}s") from None


class FarmThread:
    """One thread that makes every call into the farm, with the command's click context (the
    manifest it loaded) pushed on it."""

    def __init__(self, ctx: click.Context) -> None:
        from click.globals import push_context

        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="farm", initializer=push_context, initargs=(ctx,))

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        return self._pool.submit(fn, *args)

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = WAIT) -> Any:
        return wait(self.submit(fn, *args), timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def status() -> dict[str, Any]:
    """`status --json`'s object plus batches, the schedule and the last hour's throughput."""
    from .. import app
    from ..commands.ops import _stores, status_doc

    doc = status_doc()
    doc["batches"] = _section(doc, "batches", _batches)     # farm/batches.py: recent ones, with progress
    doc["schedule"] = _section(doc, "schedule", _schedule, app.manifest())
    doc["throughput"] = _section(doc, "throughput", _throughput, _stores())
    return doc


def _batches() -> list[dict[str, Any]]:
    from ..batches import recent_batches

    return recent_batches(20)


def _section(doc: dict[str, Any], what: str, read: Callable[..., list[Any]], *args: Any) -> list[Any]:
    """An extra section of the page; one that cannot be read is empty, with a note saying why,
    and the queues and workers are still shown."""
    try:
        return read(*args)
    except Exception as e:     # noqa: BLE001 - shown as a note on the page
        doc.setdefault("notes", []).append(f"{what} cannot be read: {type(e).__name__}: {e}")
        return []


def _schedule(manifest: Any) -> list[dict[str, Any]]:
    try:
        from ..schedule import upcoming
    except ImportError:
        return []
    return upcoming(manifest, count=3)


def _throughput(stores: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Jobs finished per minute over the last hour, from the stores that count them."""
    since = time.time() - 3600
    rows: list[dict[str, Any]] = []
    for _, s in stores:
        if hasattr(s, "counts_by_minute"):
            rows.extend(s.counts_by_minute(since))
    return rows


def failed_page(queue: str | None, job: str | None, page: int) -> dict[str, Any]:
    """One page of PER_PAGE failed entries, oldest first as `farmctl failed` lists them; `job`
    matches part of the job name (among each store's first SEARCH_LIMIT entries)."""
    from ..commands.ops import _row, _stores

    rows: list[dict[str, Any]] = []
    total = 0
    for _, s in _stores():
        if job:
            found = [r for r in map(_row, s.failed(queue=queue, limit=SEARCH_LIMIT))
                     if job.lower() in str(r["job"] or "").lower()]
            total += len(found)
            rows.extend(found)
        else:
            total += s.count_failed(queue)
            rows.extend(map(_row, s.failed(queue=queue, limit=(page + 1) * PER_PAGE)))
    rows.sort(key=lambda r: (r["failed_at"], r["id"]))
    return {"total": total, "page": page, "per_page": PER_PAGE,
            "pages": max(1, -(-total // PER_PAGE)),
            "items": rows[page * PER_PAGE:(page + 1) * PER_PAGE]}


def failed_one(job_id: str) -> dict[str, Any]:
    """`failed show ID --json`'s object (UnknownJob when there is none)."""
    from ..commands.ops import failed_doc

    return failed_doc(job_id)


def retry(job_id: str) -> int:
    from ..commands.ops import _find, _retry

    return sum(_retry(s, [f], None) for s, f in _find((job_id,)))


def forget(job_id: str) -> int:
    from ..commands.ops import _find

    return sum(s.forget([f.id]) for s, f in _find((job_id,)))


def job(job_id: str) -> dict[str, Any] | None:
    """`farm.job_status(id)`: where the job is now, or None."""
    from ..operations import job_status

    return job_status(job_id)


def cancel(job_id: str) -> Any:
    """`farm.cancel(id)`, with the reason when it refuses."""
    from ..operations import cancel_job

    return cancel_job(job_id)


def pause(queue: str) -> None:
    from ..operations import pause as pause_queue

    pause_queue(queue)


def resume(queue: str) -> None:
    from ..operations import resume as resume_queue

    resume_queue(queue)


def metrics() -> bytes:
    from .. import app

    try:
        from ..metrics import render
    except ImportError:
        return b"# farm.metrics is not part of this version\n"
    return render(app.manifest())


class Snapshot:
    """The last status object, refreshed every `interval` seconds on the farm thread."""

    def __init__(self, farm: FarmThread, interval: float) -> None:
        self.farm, self.interval = farm, interval
        self._doc: dict[str, Any] = {"queues": {}, "connections": {}, "workers": [], "supervisor": None,
                                     "batches": [], "schedule": [], "throughput": [], "notes": []}
        self._as_of: float | None = None
        self._error: str | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapshot", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def refresh_soon(self) -> None:
        """After an action: refresh now rather than at the next tick."""
        self._wake.set()

    def get(self) -> dict[str, Any]:
        with self._lock:
            return {**self._doc, "as_of": self._as_of, "error": self._error}

    def _run(self) -> None:
        reading: concurrent.futures.Future[Any] | None = None
        while not self._stop.is_set():
            try:
                if reading is None or reading.done():     # one reading at a time, however slow
                    reading = self.farm.submit(status)
                doc = wait(reading, max(WAIT, 4 * self.interval))
                doc = json.loads(json.dumps(doc, default=str))    # plain JSON values, once
                with self._lock:
                    self._doc, self._as_of, self._error = doc, time.time(), None
            except Exception as e:     # noqa: BLE001 - shown on the page; the old figures stay
                with self._lock:
                    self._error = f"{type(e).__name__}: {e}"
            self._wake.wait(self.interval)
            self._wake.clear()
