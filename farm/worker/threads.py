"""`--concurrency N`: N threads run jobs' handle(); the worker's own thread does the rest.

The worker's thread claims, writes starts, settles (ack, release, retry, fail) and hands
jobs back, exactly as with one job at a time, so a driver is used by that thread and the
heart only: one database connection per role whatever N is, and pika's single-threaded
connection stays in the hands it was in. Job threads only call `handle()` and report back.

A thread cannot be killed. A job past its timeout gets JobTimeout raised in its thread
(PyThreadState_SetAsyncExc), which ends a job running Python code. A job blocked in a C
call (a socket read with no timeout) does not see it: one second later the worker settles
it as timed out, takes no more jobs, and exits once its other jobs have ended, for the
process manager to start a fresh worker; the stuck thread dies with the process.
"""
from __future__ import annotations

import ctypes
import os
import sys
import queue as queues
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .. import events, middleware, waker
from ..errors import Abandon, DriverUnavailable, FarmError, JobTimeout
from . import signals
from .heart import GRACE
from .lifecycle import StopReason
from .loop import Worker, backoff
from .runner import Attempt

IDLE_POLL = 0.5           # how long a worker with jobs running waits between claims of an empty queue
ABANDON_WAIT = 0.5        # a second stop signal waits this long for jobs ending just then
EXIT_WAIT = 1.0           # at exit, for the job threads (all of them together) to end


@dataclass(eq=False)
class Running:
    """An attempt handed to a job thread."""

    attempt: Attempt
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: int | None = None     # the job thread's ident, once it has taken the attempt
    ended: bool = False           # handle() has ended: no timeout may be raised in its thread now
    interrupted: bool = False     # JobTimeout or Abandon was raised in its thread (once at most)
    abandoned: bool = False       # ... Abandon: a second stop signal gives the job back
    cancelled: bool = False       # given back before any thread took it: no thread may run it

    def interrupt(self, exc: type[BaseException]) -> bool:
        """Raise `exc` in the job's thread while its handle() runs, once at most (the hand-off
        in `call` relies on that); True if it was raised."""
        with self.lock:
            if self.thread is None or self.ended or self.interrupted:
                return False
            _interrupt(self.thread, exc)
            self.interrupted = True
            return True

    def cancel(self) -> bool:
        """Keep every thread from taking it, if none has yet; True if so."""
        with self.lock:
            if self.thread is None:
                self.cancelled = True
            return self.cancelled


def _checkpoint() -> None:
    """A Python-level call: an exception raised in this thread from outside lands here at the latest."""


def call(run: Running) -> BaseException | None:
    """Run handle() in this job thread; what it raised, or None. A JobTimeout from the worker's
    thread lands inside this function, never after it (see `_interrupt`)."""
    returned = False
    exc: BaseException | None = None
    try:
        with run.lock:
            if run.cancelled:
                return None
            run.thread = threading.get_ident()
        try:
            runner = run.attempt.runner     # farm.on("before") just ahead of handle()
            before = runner.before_event(run.attempt) if events.HANDLERS["before"] and runner is not None else None
            middleware.run(run.attempt, before)     # handle(), inside the job's middleware if any
            returned = True
        except BaseException as e:          # JobTimeout, SystemExit, ...: the job's own outcome
            exc = e
        with run.lock:
            run.ended = True
        _checkpoint()
    except BaseException as e:              # the timeout arrived as handle() ended
        if not returned and exc is None:
            exc = e
    return exc


class ThreadedWorker(Worker):
    def __init__(self, *args: Any, concurrency: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots = concurrency
        self.running: dict[int, Running] = {}          # id(Running) -> Running
        self.todo: queues.SimpleQueue[Running | None] = queues.SimpleQueue()
        self.finished: queues.SimpleQueue[tuple[Running, BaseException | None]] = queues.SimpleQueue()
        self.stuck = False
        self.fatal = False                              # gave up on the database or broker
        self.poll = 0.02                                # grows while the queue stays empty
        self.next_claim = 0.0
        if hasattr(self.queue, "slots"):               # amqp: running jobs are unacked deliveries
            self.queue.slots = concurrency
        if getattr(self.queue, "prefetch", None) is not None and self.queue.prefetch < concurrency:
            self.queue.prefetch = concurrency
        self.threads = [threading.Thread(target=self._serve, name=f"farm-job-{i}", daemon=True)
                        for i in range(concurrency)]
        for t in self.threads:
            t.start()

    def run(self) -> int:
        with signals.late_stops():          # a TERM while the threads are joined is noted, not fatal
            code = super().run()
            deadline = time.monotonic() + EXIT_WAIT
            for t in self.threads:
                t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self.threads):     # stuck, or given back by a second signal
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(code)              # no interpreter shutdown under a thread still running a job
        return code

    def _serve(self) -> None:
        while True:
            run = self.todo.get()
            if run is None:
                return
            self.finished.put((run, call(run)))

    def attempts(self) -> list[Attempt]:
        return [r.attempt for r in list(self.running.values())]

    def run_once(self, now: float | None = None) -> StopReason | None:
        """One step: settle what ended, time out what overran, stop, pause, claim, start."""
        self._collect(0)
        now = time.monotonic() if now is None else now
        self._time_out(now)
        if self.lifecycle.abandon:
            self._abandon()
            return StopReason.ABANDON
        reason = self.lifecycle.should_stop(now, self.heart.rss_mb, self.done)
        if reason is None and self.stuck:
            reason = StopReason.STUCK
        if reason is None and self.fatal:
            reason = StopReason.FATAL
        if reason is not None or self.lifecycle.paused:
            self._release_held()
            suspend = getattr(self.queue, "suspend", None)
            if suspend is not None:             # amqp: acks free basic.qos, so stop consuming
                suspend()
            if self.running:                    # running jobs finish first, whatever the reason
                self._collect(self._patience(now))
                return None
            if reason is not None:
                return reason
            waker.wait(1.0)
            return None
        queues = self.taking()
        if not queues:                          # every queue paused: running jobs finish
            if self.running:
                self._collect(self._patience(now))
            elif self.options.stop_when_empty or self.options.once:
                return StopReason.EMPTY         # nothing it may take
            else:
                self.idle_paused()
            return None
        if self.runner.unacked or self.runner.unsettled:
            self.runner.ack_again()
        free = self._free()
        if free > 0 and not self.held:
            if self.running:                    # settling must not wait on an empty queue
                if now < self.next_claim:
                    self._collect(min(self.next_claim - now, self._patience(now)))
                    return None
                wait = 0.0
            else:
                wait = 0.0 if self.options.stop_when_empty else min(self.options.sleep, 1.0)
            extra = 0 if (self.options.max_jobs or self.options.once) else self.batch.size() - 1
            self.held = self.claim(queues, free + extra, wait)
            self.failures = 0
            self.taking()                       # a queue paused while we waited: its jobs go back
            if self.lifecycle.stop_signal is not None:
                return None                     # stopped while waiting: what came is handed back
            if self.held:
                self.poll = 0.02
            else:
                if not self.running:
                    return StopReason.EMPTY if (self.options.stop_when_empty or self.options.once) else None
                self.next_claim = now + self.poll
                self.poll = min(self.poll * 2, IDLE_POLL)
        started = 0
        while self.held and self._free() > 0:
            started += self._start(self.held.pop(0))
        if not started and self.running:
            self._collect(self._patience(now))
        return None

    def _free(self) -> int:
        """Slots for more jobs, within --max-jobs and --once."""
        free = self.slots - len(self.running)
        o = self.options
        if o.max_jobs:
            free = min(free, o.max_jobs - self.done - len(self.running))
        if o.once:
            free = min(free, 1 - self.done - len(self.running))
        return free

    def _start(self, reserved: Any) -> int:
        """Write the job's start and hand it to a job thread; 1 if it went to one."""
        if not self._begin(reserved):
            return 0
        try:
            attempt = self.runner.prepare(reserved)
            if attempt is not None and self.runner.killed_too_often(attempt) is not None:
                attempt = None
        except (Abandon, DriverUnavailable):
            raise
        except Exception as e:
            self.runner.last_resort(reserved, e)
            attempt = None
        if attempt is None:                 # failed without running (bad payload, killed too often)
            self.done += 1
            return 0
        run = Running(attempt)
        self.running[id(run)] = run
        self.todo.put(run)
        return 1

    def _patience(self, now: float) -> float:
        """How long to wait for a job to end before looking at the clocks and signals again."""
        wait = 0.25
        for a in self.attempts():
            if a.timeout > 0:
                wait = min(wait, max(0.0, a.started + a.timeout - now) + 0.001)
        return wait

    def _collect(self, wait: float) -> None:
        """Settle the jobs whose threads have reported, waiting up to `wait` for the first."""
        try:
            item = self.finished.get(timeout=wait) if wait > 0 else self.finished.get_nowait()
        except queues.Empty:
            return
        while True:
            self._settle(*item)
            try:
                item = self.finished.get_nowait()
            except queues.Empty:
                return

    def _settle(self, run: Running, exc: BaseException | None) -> None:
        if self.running.pop(id(run), None) is None:
            return                              # settled already: stuck, or given back
        attempt = run.attempt
        if run.interrupted and isinstance(exc, JobTimeout):
            exc = JobTimeout(f"the job ran past its timeout of {attempt.timeout:g}s")
        self.batch.record(time.monotonic() - attempt.started)
        try:
            self.runner.conclude(attempt, exc)
        except (Abandon, DriverUnavailable):
            raise
        except Exception as e:                  # one job's trouble, not the worker's
            self.runner.last_resort(attempt.reserved, e)
        self.done += 1

    def _time_out(self, now: float) -> None:
        """Raise JobTimeout in the thread of a job past its timeout; a job that has not ended a
        second later is blocked outside Python: settle it as timed out and recycle the worker."""
        for run in list(self.running.values()):
            a = run.attempt
            if a.timeout <= 0 or now < a.started + a.timeout:
                continue
            if not run.interrupted:
                if run.interrupt(JobTimeout) or now < a.started + a.timeout + GRACE or not run.cancel():
                    continue
                # no thread took it (every one is stuck): it never started, so it goes back
                self.running.pop(id(run), None)
                self.queue.give_back([a.reserved])
                self.stuck = True
                continue
            if now < a.started + a.timeout + GRACE or run.ended:
                continue                        # in time, or ended and waiting to be settled
            if self.running.pop(id(run), None) is None:
                continue
            self.stuck = True
            self.log.error("worker.stuck", id=a.reserved.id, timeout=a.timeout,
                           detail="the job did not stop at its timeout (blocked outside Python code); "
                                  "settled as timed out; exiting once the other jobs end")
            try:
                self.runner.settle(a, JobTimeout(f"the job ran past its timeout of {a.timeout:g}s"))
            except (Abandon, DriverUnavailable):
                raise
            except Exception as e:
                self.runner.last_resort(a.reserved, e)

    def _abandon(self) -> None:
        """A second stop signal: raise Abandon in every running job, as the one-job worker does,
        and hand back those it stopped (and any still blocked after ABANDON_WAIT) with the held
        ones. A job that ended before Abandon reached it is settled as it ended."""
        self._collect(0)
        for run in list(self.running.values()):
            if run.interrupt(Abandon):
                run.abandoned = True
            else:
                run.cancel()
        back = [r for r in self.running.values() if r.cancelled]
        for run in back:
            self.running.pop(id(run))
        deadline = time.monotonic() + ABANDON_WAIT
        while self.running:
            try:
                run, exc = self.finished.get(timeout=max(0.0, deadline - time.monotonic()))
            except queues.Empty:
                break
            if run.abandoned and isinstance(exc, Abandon):
                if self.running.pop(id(run), None) is not None:
                    back.append(run)
            else:
                self._settle(run, exc)
        back += self.running.values()
        self.running.clear()
        self.held = [r.attempt.reserved for r in back] + self.held
        if back:
            self.log.error("worker.stop", reason="abandon", jobs=len(back), detail="running jobs given back")

    def _unavailable(self, e: FarmError) -> StopReason | None:
        """As the one-job worker, except that giving up waits for the running jobs to end."""
        if self.running and backoff(self.failures + 1, self.give_up) is None:
            self.fatal = True
            self.log.warning("worker.unavailable", error=str(e), jobs=len(self.running),
                             detail="giving up once the running jobs end")
            self._back_off(1.0)
            return None
        return super()._unavailable(e)

    def _back_off(self, seconds: float) -> None:
        """Wait, still raising JobTimeout in a job past its timeout."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            waker.wait(min(left, 0.25))
            try:
                self._time_out(time.monotonic())
            except FarmError:
                pass                            # a stuck job's settling waits for the database too

    def _shut_down(self) -> None:
        super()._shut_down()
        for _ in self.threads:
            self.todo.put(None)


def _interrupt(thread_id: int, exc: type[BaseException]) -> None:
    """Raise `exc` in that thread at its next Python instruction (hold the Running's lock)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc))
