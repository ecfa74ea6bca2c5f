"""The worker's background thread: renew reservations, beat, read stamps, watch the clock.

It never runs job code. Its watchdog ends a worker whose job is stuck where SIGALRM or a
second stop signal cannot reach it, after settling that job so nothing is lost.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import psutil

from ..errors import DriverUnavailable, JobTimeout

if TYPE_CHECKING:
    from .loop import Worker

GRACE = 1.0          # seconds past a job's timeout before the watchdog steps in
BEAT_EVERY = 5.0
STAMP_EVERY = 1.0
RSS_EVERY = 1.0
COUNTS_EVERY = 5.0   # seconds between adds of the job counts to the store (farm/counts.py)
PAUSE_EVERY = 0.5    # seconds between reads of the paused queues (farmctl pause): taken within a second
DONE_EVERY = 60.0    # seconds between prunes of expired done jobs, once this worker has kept one
TIDY_EVERY = 30.0    # seconds between looks at the jobs table's dead rows (PostgreSQL: drivers/pgtidy.py)
RENEW_AGAIN = 1.0    # a renew that failed is tried again this soon, not a third of retry_after later
SLOW_RENEW = 1.0     # a renew slower than this is logged (it holds the rows of the jobs it renews)


def rss_mb(proc: psutil.Process) -> float:
    """RSS of the worker and its children, in MB."""
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total / (1024 * 1024)


class Heart(threading.Thread):
    def __init__(self, worker: "Worker") -> None:
        super().__init__(name="farm-heart", daemon=True)
        self.worker = worker
        self.halt = threading.Event()
        self.proc = psutil.Process()
        self.renew_every = max(0.2, worker.options.retry_after / 3)
        self.tick = min(0.25, self.renew_every)
        self.host = socket.gethostname()
        self.last = {"renew": 0.0, "beat": 0.0, "stamp": 0.0, "rss": 0.0, "counts": time.monotonic()}
        self.rss_mb = rss_mb(self.proc)
        self.last.update(pause=0.0, done=0.0, tidy=0.0)
        self.beat_paused = False

    def run(self) -> None:
        while not self.halt.wait(self.tick):
            try:
                self.beat_once(time.monotonic())
            except DriverUnavailable as e:     # only this thread's connections are dropped
                self.worker.log.warning("worker.heart", error=str(e))
            except Exception as e:      # the heart must keep beating whatever one tick hit
                self.worker.log.error("worker.heart", error=f"{type(e).__name__}: {e}")
        self.worker.flush_counts()      # the last counts, on this thread's own connection

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=5)

    def due(self, what: str, every: float, now: float) -> bool:
        if now - self.last[what] >= every:
            self.last[what] = now
            return True
        return False

    def beat_once(self, now: float) -> None:
        w = self.worker
        self.watchdog(now)
        held = w.holding()
        unsettled = getattr(w.queue, "has_unsettled", None)      # database: acks not known to have landed
        if (held or (unsettled is not None and unsettled())) and self.due("renew", self.renew_every, now):
            self.renew(held, now)
        if self.due("rss", RSS_EVERY, now):
            self.rss_mb = rss_mb(self.proc)
        if w.store is not None and self.due("stamp", STAMP_EVERY, now):
            stamp = w.store.stamp("restart")
            if stamp is not None and stamp > w.started_wall:
                w.lifecycle.restart_requested = True
        if w.store is not None and self.due("pause", PAUSE_EVERY, now):
            self.read_paused()
        tidy = getattr(w.queue, "tidy", None)
        if tidy is not None and self.due("tidy", TIDY_EVERY, now):
            error = tidy()
            if error:
                w.log.warning("worker.vacuum", error=error)
        if w.runner.kept and self.due("done", DONE_EVERY, now):
            done_by = w.queue if hasattr(w.queue, "prune_done") else w.store
            done_by.prune_done(time.time())
        if w.store is not None:
            pausing = self.pausing()    # a pause or resume shows in `status` at once, not 5 s later
            if pausing != self.beat_paused or self.due("beat", BEAT_EVERY, now):
                self.beat_paused = pausing
                w.store.beat(self.info())
        counts = w.runner.counts
        if counts is not None:
            counts.collect()            # summed here, off the worker's thread
            if self.due("counts", COUNTS_EVERY, now):
                counts.flush(w.store)

    def renew(self, held: list[Any], now: float) -> None:
        """Renew, and say when next: a second after a failure (the rest of the tick runs all
        the same), or as soon as an ack left out of this one needs it (database)."""
        q = self.worker.queue
        started = time.monotonic()
        try:
            q.renew(held)
        except Exception as e:
            self.renew_in(RENEW_AGAIN)
            level = "warning" if isinstance(e, DriverUnavailable) else "error"
            getattr(self.worker.log, level)("worker.renew", error=f"{type(e).__name__}: {e}")
            return
        took = time.monotonic() - started
        if took >= SLOW_RENEW:
            self.worker.log.warning("worker.renew", seconds=round(took, 2), held=len(held))
        sooner = getattr(q, "renew_due_in", None)
        left_out = sooner() if sooner is not None else None
        if left_out is not None:
            self.renew_in(left_out)

    def renew_in(self, seconds: float) -> None:
        """Make the next renew due `seconds` from now, if that is sooner than its turn."""
        self.last["renew"] = min(self.last["renew"], time.monotonic() + seconds - self.renew_every)

    def read_paused(self, role: str | None = None) -> None:
        """The queues paused across the farm (`farmctl pause`), which the worker claims none from.
        `role`: a database store's connection to read on (the worker's own thread passes the one
        it claims on, so its first read opens no connection of its own)."""
        w = self.worker
        kw = {"role": role} if role and getattr(w.store, "dialect", None) else {}
        w.paused = frozenset(name[len("pause:"):] for name in w.store.stamps("pause:", **kw))

    def pausing(self) -> bool:
        """Paused by SIGUSR2, or every queue of the worker paused across the farm."""
        w = self.worker
        return w.lifecycle.paused or (bool(w.paused) and all(q in w.paused for q in w.options.queues))

    def info(self) -> dict[str, Any]:
        w = self.worker
        running = w.attempts()
        attempt = running[0] if running else None
        state = "paused" if self.pausing() else "busy" if attempt else "idle"
        doc: dict[str, Any] = {
               "id": w.worker_id, "host": self.host, "pid": os.getpid(), "pipeline": w.options.pipeline,
               "connection": w.options.connection, "queues": list(w.options.queues), "state": state,
               "job": attempt.doc.get("job") if attempt and attempt.doc else None,
               "job_id": attempt.reserved.id if attempt else None,
               "job_seconds": round(time.monotonic() - attempt.started, 1) if attempt else None,
               "job_ids": [a.reserved.id for a in running], "token": getattr(w.queue, "token", None),
               "jobs": len(running), "done": w.done, "rss_mb": round(self.rss_mb, 1), "started": w.started_wall, "code": w.code}
        if w.options.weights:           # beside `queues` (names, a contract): a weighted worker's weights
            doc["weights"] = dict(zip(w.options.queues, w.options.weights))
        return doc

    def watchdog(self, now: float) -> None:
        w = self.worker
        attempt = w.runner.current
        if attempt is None:
            return
        overdue = now - attempt.started > attempt.timeout + GRACE
        abandoned = w.lifecycle.abandon and now - (w.lifecycle.abandoned_at or now) > 2 * GRACE
        if not (overdue or abandoned) or not w.runner.claim(attempt, "watchdog"):
            return                      # in time, or the main thread is settling it already
        try:
            w.runner.current = None
            if abandoned:
                w.queue.give_back([attempt.reserved] + w.held)
                w.log.error("worker.stop", reason="abandon", detail="the job did not stop; given back")
            else:
                w.log.error("worker.stuck", id=attempt.reserved.id, timeout=attempt.timeout,
                            detail="the job did not stop at its timeout; settling it and exiting")
                w.runner.settle(attempt, JobTimeout(f"the job ran past its timeout of {attempt.timeout:g}s"))
                w.queue.give_back(w.held)
            w.flush_counts()
        except Exception as e:
            w.log.error("worker.stuck", error=f"{type(e).__name__}: {e}",
                        detail="the jobs held are handed out again after retry_after")
        finally:
            os._exit(1)
