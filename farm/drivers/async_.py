"""The `async` driver: jobs kept in memory and run by a pool of threads in the dispatching process.

For development and small apps, like Masonite's async driver. `push` returns at once; each
job then runs through the worker's own Runner (tries, backoff, release(), fail(), the
failed() hook, the same log lines), its handle() on a pool thread through `threads.call`,
with JobTimeout raised in that thread past the job's timeout as `farmctl work --concurrency`
does. Nothing is persisted: a crash loses what is queued. At interpreter exit the process
waits for the queued jobs, delayed ones due within EXIT_WAIT seconds included (`drain`).
"""
from __future__ import annotations

import atexit
import heapq
import itertools
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Sequence

from .. import app, payload
from ..errors import JobTimeout
from ..locks import MEMORY
from ..log import Log
from ..manifest import Connection
from ..worker.lifecycle import Lifecycle
from ..worker.options import WorkerOptions
from ..worker.runner import Runner
from ..worker.threads import Running, call
from .base import Outgoing, Reserved

EXIT_WAIT = 60.0      # at exit, jobs due within this many seconds are waited for; later ones are dropped


@dataclass(eq=False)
class _Entry:
    id: str
    queue: str
    body: str
    attempts: int         # starts made so far
    due: float            # epoch seconds
    seq: int = 0          # order of arrival: the pool takes the oldest ready job of any queue


class AsyncQueue:
    """A thread-safe in-memory queue whose own pool of daemon threads runs its jobs."""

    supports_notify = True

    def __init__(self, conn: Connection, log: Log | None = None) -> None:
        self.name = conn.name
        self.size = conn.workers
        self.log = log or Log()
        self._cond = threading.Condition()
        self._ready: dict[str, deque[_Entry]] = {}
        self._delayed: list[tuple[float, int, _Entry]] = []      # a heap by due time
        self._held: dict[str, Reserved] = {}                      # id -> its reservation
        self._running: dict[int, Running] = {}                    # for the timeout watchdog
        self._failed: dict[str, int] = {}
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._busy = 0                    # jobs a pool thread has taken and not yet settled
        self._stopping = False
        self._deadline: float | None = None   # set by drain(): a job due later is dropped
        self._pid = os.getpid()
        self._exit_hook = False

    # -- the Queue interface ---------------------------------------------------------------
    def push(self, items: Sequence[Outgoing]) -> None:
        """Queue the jobs and return at once; the pool starts with the first push."""
        with self._cond:
            if not self._threads or self._stopping:
                self._start()
            for item in items:
                self._enqueue(_Entry(item.id, item.queue, item.body, item.attempts, item.available_at))

    def reserve(self, queues: Sequence[str], limit: int, wait: float) -> list[Reserved]:
        """Up to `limit` ready jobs of `queues` in priority order (`farm.reserve` by hand)."""
        deadline = time.monotonic() + wait
        out: list[Reserved] = []
        with self._cond:
            while True:
                while len(out) < limit and (r := self._claim(queues)) is not None:
                    out.append(r)
                left = deadline - time.monotonic()
                if out or left <= 0:
                    return out
                due = self._until_due()
                self._cond.wait(left if due is None else min(left, due))

    def starting(self, job: Reserved) -> bool:
        return True

    def renew(self, jobs: Sequence[Reserved]) -> None: ...

    def ack(self, job: Reserved) -> None:
        with self._cond:
            self._settled(job)

    def release(self, job: Reserved, delay: float, body: str) -> None:
        with self._cond:
            if self._settled(job):
                e = job.handle
                e.body, e.attempts, e.due = body, job.attempts, time.time() + delay
                self._enqueue(e)

    def give_back(self, jobs: Sequence[Reserved], delay: float = 0.0) -> None:
        with self._cond:
            for job in jobs:
                if self._settled(job):
                    if delay:
                        job.handle.due = time.time() + delay
                    self._enqueue(job.handle)

    def fail(self, job: Reserved, body: str, error: str) -> bool:
        """Nothing keeps failed jobs here: the failure and its traceback go to the log."""
        with self._cond:
            if not self._settled(job):
                return False
            self._failed[job.queue] = self._failed.get(job.queue, 0) + 1
        self.log.error("job.discarded", id=job.id, queue=job.queue,
                       detail=f"connection {self.name!r} (async) keeps no failed jobs; the error follows")
        try:
            trace = error.partition("\n\n")[2] or error        # the job.failed line has the summary
            self.log.stream.write("".join(f"    {line}\n" for line in trace.splitlines()))
        except (OSError, ValueError):
            pass
        return True

    def counts(self) -> dict[str, dict[str, int]]:
        """This process's jobs only: another process's memory is out of reach."""
        with self._cond:
            out: dict[str, dict[str, int]] = {}

            def row(q: str) -> dict[str, int]:
                return out.setdefault(q, {"ready": 0, "delayed": 0, "reserved": 0, "failed": 0})

            for q, entries in self._ready.items():
                row(q)["ready"] += len(entries)
            for _, _, e in self._delayed:
                row(e.queue)["delayed"] += 1
            for r in self._held.values():
                row(r.queue)["reserved"] += 1
            for q, n in self._failed.items():
                row(q)["failed"] += n
            return out

    def notes(self) -> list[str]:
        return [f"connection {self.name!r} (async): its jobs live in the memory of the process that "
                "dispatched them, out of sight of any other process"]

    def clear(self, queue: str) -> int:
        with self._cond:
            return len(self._ready.pop(queue, ()))

    def close(self) -> None:
        """Run what is queued (as at exit), then stop the pool."""
        self.drain()

    # -- the pool ---------------------------------------------------------------------------
    def _start(self) -> None:
        """Start the pool threads and the timeout watchdog; register the exit hook once."""
        self._stopping, self._deadline = False, None
        registry = payload.Registry(app.manifest().imports)
        options = WorkerOptions(connection=self.name)
        self._threads = [threading.Thread(target=self._serve, args=(self._runner(registry, options),),
                                          name=f"farm-async-{self.name}-{i}", daemon=True)
                         for i in range(self.size)]
        self._threads.append(threading.Thread(target=self._watch, name=f"farm-async-{self.name}-timeouts",
                                              daemon=True))
        for t in self._threads:
            t.start()
        if not self._exit_hook:
            atexit.register(self.drain)
            self._exit_hook = True

    def _runner(self, registry: payload.Registry, options: WorkerOptions) -> Runner:
        runner = Runner(self, registry, options, self.log, Lifecycle(options, time.monotonic()))
        runner.store = MEMORY       # middleware and unique locks: this process's (farm/locks.py)
        return runner

    def _serve(self, runner: Runner) -> None:
        while (r := self._next()) is not None:
            try:
                self._run(runner, r)
            except Exception as e:          # one job's trouble, never the pool's
                runner.last_resort(r, e)
            finally:
                with self._cond:
                    self._settled(r)        # a job whose settling went wrong is not left held
                    self._busy -= 1
                    self._cond.notify_all()

    def _next(self) -> Reserved | None:
        """The oldest ready job of any queue, waiting for one; None once the pool stops."""
        with self._cond:
            while not self._stopping:
                r = self._claim(None)
                if r is not None:
                    self._busy += 1
                    return r
                self._cond.wait(self._until_due())
            return None

    def _run(self, runner: Runner, r: Reserved) -> None:
        """The worker's path for one job: prepare, run handle() here, then settle."""
        attempt = runner.prepare(r)
        if attempt is None or runner.killed_too_often(attempt) is not None:
            return
        run = Running(attempt)
        with self._cond:
            self._running[id(run)] = run
            self._cond.notify_all()         # the watchdog: one more clock to watch
        try:
            exc = call(run)
        finally:
            with self._cond:
                self._running.pop(id(run), None)
        if run.interrupted and isinstance(exc, JobTimeout):
            exc = JobTimeout(f"the job ran past its timeout of {attempt.timeout:g}s")
        runner.conclude(attempt, exc)

    def _watch(self) -> None:
        """Raise JobTimeout in the thread of a job past its timeout (a job blocked in a C call
        sees it only when that call returns)."""
        with self._cond:
            while not (self._stopping and not self._running):
                now, wait = time.monotonic(), None
                for run in self._running.values():
                    a = run.attempt
                    if a.timeout <= 0 or run.interrupted:
                        continue
                    left = a.started + a.timeout - now
                    if left <= 0:
                        run.interrupt(JobTimeout)
                        continue
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def drain(self) -> None:
        """Wait until every queued job has finished, those due within EXIT_WAIT seconds
        included (a job due later, or retried past that, is dropped with a log line), then
        stop the pool. The exit hook; a forked child does not run its parent's jobs."""
        if os.getpid() != self._pid or threading.current_thread() in self._threads:
            return
        with self._cond:
            if not self._threads or self._stopping:
                return
            self._deadline = time.time() + EXIT_WAIT
            for _, _, e in [d for d in self._delayed if d[0] > self._deadline]:
                self._drop(e)
            self._delayed = [d for d in self._delayed if d[0] <= self._deadline]
            heapq.heapify(self._delayed)
            try:
                self._wait_out()
            except KeyboardInterrupt:       # a second Ctrl-C at exit: leave now, saying what is lost
                self._lose_running("interrupted at exit")
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(1)

    def _wait_out(self) -> None:
        """Until nothing is queued or running; running jobs (the last ones) get EXIT_WAIT
        seconds at most, so a job stuck in a C call cannot hold the process forever."""
        last_ones: float | None = None
        while any(self._ready.values()) or self._delayed or self._busy:
            if any(self._ready.values()) or self._delayed:
                last_ones = None
                self._cond.wait(1.0)
                continue
            last_ones = last_ones or time.monotonic()
            left = last_ones + EXIT_WAIT - time.monotonic()
            if left <= 0:
                self._lose_running(f"still running {EXIT_WAIT:g} s after the process began to exit")
                return
            self._cond.wait(left)

    def _lose_running(self, why: str) -> None:
        for run in list(self._running.values()):
            r = run.attempt.reserved
            self.log.error("job.lost", id=r.id, queue=r.queue, detail=f"{why}; the async driver persists nothing")

    # -- bookkeeping, with the lock held ------------------------------------------------------
    def _enqueue(self, e: _Entry) -> None:
        e.seq = next(self._seq)
        if self._deadline is not None and e.due > self._deadline:
            self._drop(e)
        elif e.due > time.time():
            heapq.heappush(self._delayed, (e.due, e.seq, e))
        else:
            self._ready.setdefault(e.queue, deque()).append(e)
        self._cond.notify_all()

    def _drop(self, e: _Entry) -> None:
        self.log.error("job.lost", id=e.id, queue=e.queue, due_in=round(e.due - time.time(), 3),
                       detail=f"the process is exiting and waits {EXIT_WAIT:g} s at most for delayed jobs; "
                              "the async driver persists nothing")

    def _claim(self, queues: Sequence[str] | None) -> Reserved | None:
        """Reserve the first ready job of `queues` in order (None: the oldest of any queue)."""
        now = time.time()
        while self._delayed and self._delayed[0][0] <= now:
            e = heapq.heappop(self._delayed)[2]
            self._ready.setdefault(e.queue, deque()).append(e)
        if queues is None:
            heads = [d for d in self._ready.values() if d]
            found = min(heads, key=lambda d: d[0].seq) if heads else None
        else:
            found = next((d for d in (self._ready.get(q) for q in queues) if d), None)
        if found is None:
            return None
        e = found.popleft()
        r = Reserved(e.id, e.queue, e.body, e.attempts + 1, handle=e)
        self._held[e.id] = r
        return r

    def _settled(self, job: Reserved) -> bool:
        """Forget the reservation; False if it was settled already."""
        if self._held.get(job.id) is not job:
            return False
        del self._held[job.id]
        self._cond.notify_all()
        return True

    def _until_due(self) -> float | None:
        return max(0.0, self._delayed[0][0] - time.time()) if self._delayed else None
