"""The worker loop: claim a batch, run its jobs one by one, stop when the Lifecycle says so."""
from __future__ import annotations

import os
import socket
import time
import uuid
from collections import Counter
from typing import Any, Callable

from .. import payload, waker
from ..counts import Counts
from ..knobs import seconds_from_env
from ..errors import Abandon, DriverUnavailable, FarmError, UsageError
from ..log import Log
from . import signals
from .heart import Heart
from .lifecycle import Lifecycle, StopReason
from .options import WorkerOptions
from .runner import Attempt, Runner
from .weights import Rotation

GIVE_UP_SECONDS = 71.5      # of backoff before exiting for the process manager: 12 failures (.5, 1, 2, 4, 8, ...)
BATCH_SECONDS = 0.05        # claim about this much work at once: many no-op jobs, one slow job
STARTSECS = 1.0             # supervisord's startsecs: a recycling exit waits out the first second
PAUSED_POLL = 0.25          # seconds between looks at the paused queues while every queue is paused


class Batch:
    """How many jobs to claim at once, from the running average of how long jobs take."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.avg: float | None = None

    def size(self) -> int:
        if self.avg is None:
            return 1
        return max(1, min(self.limit, int(BATCH_SECONDS / max(self.avg, 1e-6))))

    def record(self, seconds: float) -> None:
        self.avg = seconds if self.avg is None else self.avg * 0.8 + seconds * 0.2


class Worker:
    def __init__(self, queue: Any, store: Any, options: WorkerOptions, registry: payload.Registry,
                 log: Log, code: str = "") -> None:
        self.queue = queue
        self.code = code                   # fingerprint of the job code (farm.fingerprint)
        self.store = store
        self.options = options
        self.log = log
        self.lifecycle = Lifecycle(options, time.monotonic())
        self.runner = Runner(queue, registry, options, log, self.lifecycle)
        self.runner.store = store          # middleware state and unique locks (farm/locks.py)
        self.started_wall = time.time()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.held: list[Any] = []          # claimed, not started
        self.done = 0
        self.batch = Batch(options.prefetch_limit)
        if options.prefetch and hasattr(queue, "prefetch"):
            queue.prefetch = options.prefetch        # amqp: the channel's basic.qos
        if hasattr(queue, "longest_job"):            # amqp: how long a delivery may wait to start
            queue.longest_job = options.job_limit or options.timeout
        if hasattr(queue, "every_queue"):            # amqp: one consumer whatever is paused
            queue.every_queue = tuple(options.queues)
        self.paused: frozenset[str] = frozenset()    # queues paused across the farm (the heart reads them)
        self.rotation = Rotation(options.queues, options.weights) if options.weights else None
        if store is not None and hasattr(store, "add_counts"):
            self.runner.counts = Counts()     # the heart adds them to the store (farm/counts.py)
        self.heart = Heart(self)
        self.failures = 0
        self.give_up = give_up_seconds()

    def attempts(self) -> list[Attempt]:
        """The jobs running now."""
        current = self.runner.current
        return [current] if current else []

    def holding(self) -> list[Any]:
        return [a.reserved for a in self.attempts()] + list(self.held) + self.runner.pending()

    def run(self) -> int:
        """Work until a stop reason; return the exit status. From here to the exit a TERM
        outside the loop's handlers is noted, not fatal (signals.late_stops)."""
        with signals.late_stops() as late:
            return self._work(late)

    def _work(self, late: signals.LateStops) -> int:
        o = self.options
        self.log.info("worker.start", connection=o.connection, queues=o.queue_flag, pipeline=o.pipeline,
                      timeout=o.timeout, tries=o.tries, max_jobs=o.max_jobs or None,
                      max_time=o.max_time or None, memory=o.memory or None,
                      concurrency=o.concurrency if o.concurrency > 1 else None, code=self.code or None)
        if self.store is not None:          # before the first claim (a `listen` child claims at once)
            try:
                self.heart.read_paused(role="fast" if self.store is self.queue else "durable")
            except FarmError:
                pass                        # the heart reads them again within half a second
        self.heart.start()
        try:
            with signals.installed(self.lifecycle, late):
                reason = self._loop()
        finally:
            self._shut_down()
        self.log.info("worker.stop", reason=reason.value, signal=self.lifecycle.stop_signal,
                      done=self.done, seconds=round(time.monotonic() - self.lifecycle.started, 3))
        if reason.recycles:
            left = STARTSECS - (time.monotonic() - self.lifecycle.started)
            if left > 0:
                late.wait_out(left)         # a TERM ends the wait: exit 0, not death by signal
        return reason.exit_code

    def _loop(self) -> StopReason:
        while True:
            try:
                reason = self.run_once()
            except Abandon:
                reason = StopReason.ABANDON
            except UsageError:              # the broker disagrees with the manifest (amqp queue_type): no retry helps
                raise
            except FarmError as e:          # DriverUnavailable, or a driver error it could not place
                reason = self._unavailable(e)
            if reason is not None:
                return reason

    def run_once(self, now: float | None = None) -> StopReason | None:
        """One step: stop, pause, claim, or run the next held job."""
        now = time.monotonic() if now is None else now
        reason = self.lifecycle.should_stop(now, self.heart.rss_mb, self.done)
        if reason is not None:
            return reason
        if self.lifecycle.paused:
            self._release_held()
            suspend = getattr(self.queue, "suspend", None)
            if suspend is not None:         # amqp: stop consuming while paused
                suspend()
            waker.wait(1.0)
            return None
        queues = self.taking()
        if not queues:                  # every queue paused (farmctl pause): as SIGUSR2, until resumed
            self._release_held()
            if self.options.stop_when_empty or self.options.once:
                return StopReason.EMPTY     # nothing it may take
            self.idle_paused()
            return None
        if self.runner.unacked or self.runner.unsettled:
            self.runner.ack_again()
        if not self.held:
            wait = 0.0 if self.options.stop_when_empty else min(self.options.sleep, 1.0)
            self.held = self.claim(queues, self.batch.size(), wait)
            self.failures = 0
            self.taking()               # a queue paused while we waited: its jobs go back now
            if self.lifecycle.stop_signal is not None:
                return None             # stopped while waiting: what came is handed back
            if not self.held:
                return StopReason.EMPTY if (self.options.stop_when_empty or self.options.once) else None
        reserved = self.held.pop(0)
        if not self._begin(reserved):
            return None
        try:
            self._run(reserved)
        except (Abandon, DriverUnavailable):
            raise
        except Exception as e:          # the last line of defence: one job's trouble, not the worker's
            self.runner.last_resort(reserved, e)
        self.done += 1
        if self.options.rest:
            waker.wait(self.options.rest)
        return None

    def idle_paused(self) -> None:
        """Every queue of the worker is paused: stop consuming (amqp), look again shortly."""
        suspend = getattr(self.queue, "suspend", None)
        if suspend is not None:
            suspend()
        waker.wait(PAUSED_POLL)

    def taking(self) -> tuple[str, ...]:
        """The queues to claim from: the worker's, less those paused across the farm; claimed
        jobs of a paused queue not started yet are handed back."""
        paused = self.paused
        if not paused:
            return self.options.queues
        back = [r for r in self.held if r.queue in paused]
        if back:
            self.queue.give_back(back)      # held (and renewed) until it is done
            self.held = [r for r in self.held if r.queue not in paused]
        return tuple(q for q in self.options.queues if q not in paused)

    def claim(self, live: tuple[str, ...], size: int, wait: float) -> list[Any]:
        """Reserve up to `size` jobs of `live` (the queues `taking` gave), in priority order;
        a weighted worker's rotation gives the order and the size of each claim, and is
        told what came of it (farm/worker/weights.py)."""
        if self.rotation is None:
            return self.queue.reserve(live, size, wait)
        order = self.rotation.order(live)
        if hasattr(self.queue, "window"):       # amqp: basic.qos follows the batch, not this claim's share
            self.queue.window = size
        got = self.queue.reserve(order, self.rotation.limit(order[0], size), wait)
        self.rotation.took(order, Counter(r.queue for r in got))
        return got

    def _run(self, reserved: Any) -> None:
        attempt = self.runner.prepare(reserved)
        if attempt is None:
            return
        try:
            if self.lifecycle.abandon:
                raise Abandon("stop")
            self.runner.run(attempt)
        except Abandon:
            self.runner.current = None
            self.held.insert(0, reserved)
            raise
        self.batch.record(time.monotonic() - attempt.started)

    def _begin(self, reserved: Any) -> bool:
        """`_starting`, putting the job back first in `held` (handed back with the rest) when
        the driver fails to write its start."""
        try:
            return self._starting(reserved)
        except FarmError:
            self.held.insert(0, reserved)
            raise

    def _starting(self, reserved: Any) -> bool:
        """The driver writes the job's start (a death counts only against a started job).
        amqp: a delivery from before a reconnect was requeued by the broker, and one held
        too long to end before consumer_timeout is handed back; neither is started."""
        starting = getattr(self.queue, "starting", None)
        if starting is None or starting(reserved):
            return True
        self.log.warning("job.stale", id=reserved.id, queue=reserved.queue,
                         detail="no longer this worker's: its reservation lapsed, or the broker has it again")
        return False

    def _shut_down(self) -> None:
        """Whatever ended the loop: hand back, say goodbye, settle the acks, close."""
        self.heart.stop()               # it adds the last job counts to the store as it ends
        self._release_held()
        try:
            self.runner.ack_again()
        except FarmError as e:
            self.log.warning("worker.ack_failed", jobs=len(self.runner.pending()), error=str(e),
                             detail="they run again after retry_after")
        if self.store is not None:
            try:
                self.store.forget_worker(self.worker_id)
            except FarmError:
                pass
        try:
            self.queue.close()          # settles pending acks; amqp hands prefetched jobs back
        except FarmError as e:
            self.log.warning("worker.close", error=str(e))

    def flush_counts(self) -> None:
        """Add the jobs counted since the last flush to the store (the heart, as it ends)."""
        if self.runner.counts is None or self.store is None:
            return
        try:
            self.runner.counts.flush(self.store)
        except Exception as e:          # on the heart's way out: logged, never raised
            self.log.warning("worker.counts", error=f"{type(e).__name__}: {e}",
                             detail="the last seconds' job counts are lost")

    def _release_held(self) -> None:
        """Hand back claimed jobs not started (and an abandoned one): ready again at once."""
        if not self.held:
            return
        try:
            self.queue.give_back(self.held)
            self.held = []
        except FarmError as e:
            self.log.warning("worker.give_back", jobs=len(self.held), error=str(e),
                             detail="they are handed out again after retry_after")

    def _unavailable(self, e: FarmError) -> StopReason | None:
        """Back off and go on; after a minute of failures exit for the process manager."""
        self.failures += 1
        delay = backoff(self.failures, self.give_up)
        if delay is None:
            self.log.error("worker.unavailable", error=str(e), detail="giving up")
            return StopReason.FATAL
        self.log.warning("worker.unavailable", error=str(e), retry_in=delay)
        self._back_off(delay)
        return self.lifecycle.should_stop(time.monotonic(), self.heart.rss_mb, self.done)

    def _back_off(self, seconds: float) -> None:
        waker.wait(seconds)


def give_up_seconds() -> float:
    """How long a worker waits out a database or broker that is gone before it exits 1:
    $FARM_GIVE_UP_SECONDS, read at start (the tests shorten it), else GIVE_UP_SECONDS."""
    return seconds_from_env("FARM_GIVE_UP_SECONDS", GIVE_UP_SECONDS, zero=False)


def backoff(failures: int, give_up: float = GIVE_UP_SECONDS) -> float | None:
    """Seconds to wait after the n-th failure in a row to reach the database or broker
    (0.5, 1, 2, 4, then 8 s), the last wait cut to end at `give_up` seconds in all; None once
    that much has been waited: time to give up."""
    waited = 0.25 * (2 ** failures - 2) if failures <= 5 else 7.5 + 8.0 * (failures - 5)
    left = give_up - waited
    if left <= 0:
        return None
    return min(0.25 * 2 ** min(failures, 6), 8.0, left)


def connect(open_queue: Callable[[], Any], log: Log) -> Any:
    """Open the worker's connection, waiting for a database or broker that is not up yet (a
    reboot where supervisord starts before PostgreSQL): retried with backoff and logged once;
    after about a minute DriverUnavailable goes up, and the process manager starts us again."""
    failures = 0
    give_up = give_up_seconds()
    while True:
        try:
            return open_queue()
        except DriverUnavailable as e:
            failures += 1
            delay = backoff(failures, give_up)
            if delay is None:
                raise
            if failures == 1:
                log.warning("worker.unavailable", error=str(e), detail="waiting for it at start")
            time.sleep(delay)
