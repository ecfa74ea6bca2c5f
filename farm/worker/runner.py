"""Running one attempt of one job and settling it: ack, release, retry or fail."""
from __future__ import annotations

import datetime as dt
import json
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from .. import batches, chains, events, middleware, payload, unique
from ..errors import Abandon, DriverUnavailable, FarmError, MaxAttemptsExceeded, PayloadError, SkipRetry
from ..drivers.base import Reserved
from ..jobs import Job, instantiate, job_name, option
from ..log import Log
from . import retry
from .lifecycle import Lifecycle
from .options import WorkerOptions
from .timeout import hard_timeout

BAD_PAYLOAD = "(bad payload)"   # the metrics' job label of a document that names no job we run
CRASHES_ALLOWED = 2      # starts that ended with the worker dying, before the job is failed
UNSETTLED = "unsettled"  # an outcome: the fail was cut off with its connection, made again on reconnect


@dataclass
class Attempt:
    """One started job, as the heart's watchdog sees it."""

    reserved: Any
    doc: dict[str, Any] | None
    job: Job | None
    timeout: float
    started: float           # time.monotonic()
    settler: str | None = None   # "main" or "watchdog": the one thread that settles it
    runner: Any = field(default=None, repr=False)   # for the `before` event on a job thread
    store: Any = None            # where middleware keeps shared state (the worker's store)
    unique: dict[str, Any] | None = None   # the document's unique lock (farm/unique.py), if any


class Runner:
    def __init__(self, queue: Any, registry: payload.Registry, options: WorkerOptions, log: Log,
                 lifecycle: Lifecycle) -> None:
        self.queue = queue
        self.registry = registry
        self.options = options
        self.log = log
        self.lifecycle = lifecycle
        self.current: Attempt | None = None
        self.unacked: list[Any] = []       # finished jobs whose ack failed: acked again later
        # a release or fail lost with its connection (database drivers: they match the worker's
        # token, so a second one is harmless): made again before the next claim, renewed till
        # then; (job, verb, then): `then` gets the verb's result once it has landed
        self.unsettled: list[tuple[Any, Any, Any]] = []
        self.counts: Any = None            # a farm.counts.Counts when the worker has a store to add to
        self.kept = 0                      # jobs acked with a retention (the heart prunes expired ones)
        self.store: Any = None             # the connection's store: middleware state, unique locks
        self._settling = threading.Lock()

    def prepare(self, reserved: Any) -> Attempt | None:
        """Parse and resolve the job; a bad document is failed here and None returned."""
        doc: Any = None
        try:
            doc = payload.parse(reserved.body)
            job = instantiate(self.registry.resolve(doc["job"]), payload.decode_data(doc["data"]))
        except Exception as e:       # whatever the document holds, it never reaches the loop
            reason = str(e) if isinstance(e, PayloadError) else f"{type(e).__name__}: {e}"
            try:                        # a batch job that cannot run still counts, failed (first)
                batches.unrunnable(self, reserved)
            except Exception as count_exc:
                self.log.error("batch.count_failed", id=reserved.id, error=_summary(count_exc))
            failed = self.queue.fail(reserved, _text(reserved.body), f"PayloadError: {reason}")
            self.log.error("job.failed", id=reserved.id, queue=reserved.queue, reason="bad payload",
                           error=reason.splitlines()[0] if reason else "")
            if failed is not False and isinstance(doc, dict) and "unique" in doc:   # e.g. no key opens it
                unique.release(self.store, unique.held(doc), self.log)
            if self.counts is not None:     # under one label: the name is whatever the document says
                self.counts.add(reserved.queue, BAD_PAYLOAD, "failed", 0.0)
            return None
        job._farm_id, job._farm_attempts = reserved.id, reserved.attempts
        timeout = float(doc.get("timeout") or _own(job, "timeout") or self.options.timeout)
        limit = self.options.job_limit
        if limit and timeout > limit:       # a deploy's stop window would SIGKILL it: end it sooner
            self.log.warning("job.timeout_clamped", id=reserved.id, job=doc["job"], timeout=timeout,
                             to=limit, detail="raise the pipeline's stop_wait or timeout")
            timeout = limit
        attempt = Attempt(reserved, doc, job, timeout, time.monotonic(), runner=self, store=self.store)
        if "unique" in doc:
            attempt.unique = unique.held(doc)
        return attempt

    def claim(self, attempt: Attempt, who: str) -> bool:
        """Make `who` the one thread that settles the attempt; False if the other one is."""
        with self._settling:
            if attempt.settler is None:
                attempt.settler = who
            return attempt.settler == who

    def run(self, attempt: Attempt) -> str:
        """Run the attempt and settle it; returns the outcome (done/released/retried/failed)."""
        killed = self.killed_too_often(attempt)
        if killed is not None:
            return killed
        self.current = attempt
        try:
            exc = self._handle(attempt)
        except Abandon:
            self._own(attempt)          # a give-back, which the watchdog must not also make
            raise
        self._own(attempt)
        self.current = None
        return self.conclude(attempt, exc)

    def killed_too_often(self, attempt: Attempt) -> str | None:
        """Fail, without running it, a job whose earlier starts each ended with its worker dead
        (or skip a job of a cancelled batch)."""
        assert attempt.doc is not None
        crashes = attempt.reserved.attempts - 1 - int(attempt.doc.get("attempts") or 0)
        if crashes <= CRASHES_ALLOWED + getattr(self.queue, "uncertain_deaths", 0):
            # batches (farm/batches.py): a job of a cancelled batch is skipped, not run
            if "batch" in attempt.doc and batches.skipped(self, attempt):
                return "skipped"
            return None
        exc = MaxAttemptsExceeded(f"the job was started {crashes} times by workers that died running it")
        return self.settle(attempt, exc, decided=retry.Decision(False, reason=str(exc)))

    def conclude(self, attempt: Attempt, exc: BaseException | None) -> str:
        """Settle an attempt whose handle() has ended (`exc`: what it raised, or None)."""
        job, r = attempt.job, attempt.reserved
        assert job is not None and attempt.doc is not None
        if exc is not None:
            if isinstance(exc, SkipRetry):      # farm.SkipRetry: fail now, no retry
                return self.settle(attempt, exc, decided=retry.Decision(False, reason="the job raised SkipRetry"))
            return self.settle(attempt, exc)
        outcome = getattr(job, "_farm_outcome", None)
        if outcome is None:
            retain = attempt.doc.get("retention") or self.options.retention
            if retain:                  # `retention`: the ack keeps it as done for that long
                r.retain = float(retain)
                self.kept += 1
            doc = attempt.doc
            if "batch" in doc:          # chains and batches: counted, next link pushed, before the ack
                batches.finished(self, doc, r.id, False)
            if "chain" in doc:
                chains.succeeded(self, doc)
            self._ack(r)
            if attempt.unique is not None:
                unique.release(self.store, attempt.unique, self.log)
            seconds = time.monotonic() - attempt.started
            self.log.info("job.done", id=r.id, job=attempt.doc["job"], queue=r.queue, attempt=r.attempts,
                          ms=round(seconds * 1000, 3))
            if self.counts is not None:
                self.counts.add(r.queue, attempt.doc["job"], "done", seconds)
            if events.HANDLERS["after"]:        # farm.on("after", ...)
                self.fire("after", attempt)
            return "done"
        if outcome[0] == "release":
            return self.settle(attempt, None, release_delay=outcome[1])
        if outcome[0] == "hold":
            return self.hold_back(attempt, outcome[1], outcome[2] if len(outcome) > 2 else None)
        return self.settle(attempt, outcome[1], decided=retry.Decision(False, reason="the job failed itself"))

    def _handle(self, attempt: Attempt) -> BaseException | None:
        """Call `handle()`; its exception, or None. Only this call may be abandoned by a second
        stop signal: once it has returned, the job is settled whatever signal comes."""
        returned = False
        try:
            with hard_timeout(attempt.timeout):
                self.lifecycle.busy = True
                try:
                    # handle(), inside the job's middleware if any; farm.on("before") just ahead of it
                    middleware.run(attempt, self.before_event(attempt) if events.HANDLERS["before"] else None)
                    returned = True
                finally:
                    self.lifecycle.busy = False
        except Abandon:
            if not returned:
                raise
        except BaseException as exc:    # JobTimeout, SystemExit, asyncio's CancelledError, ...
            return None if returned else exc
        return None

    def hold_back(self, attempt: Attempt, delay: float, error: str | None = None) -> str:
        """Middleware held the job back before handle() ran (or could not reach the store,
        `error`): back on its queue after `delay`, its start taken back, so neither its
        attempts nor its crash count change."""
        r = attempt.reserved
        self.queue.give_back([r], delay)
        if error is None:
            self.log.info("job.held_back", id=r.id, job=attempt.doc["job"], queue=r.queue,   # type: ignore[index]
                          delay=round(delay, 3))
        else:
            self.log.warning("job.held_back", id=r.id, job=attempt.doc["job"], queue=r.queue,   # type: ignore[index]
                             delay=round(delay, 3), error=error, detail="the store cannot be reached")
        if self.counts is not None:
            self.counts.add(r.queue, attempt.doc["job"], "released", 0.0)   # type: ignore[index]
        return "released"

    def _ack(self, r: Any) -> None:
        """Ack a finished job; if that fails it is kept (and renewed) to be acked again, never
        run again or failed: acks match the worker's token, so a second one is harmless."""
        try:
            self.queue.ack(r)
        except FarmError as e:
            self.unacked.append(r)
            self.log.warning("job.ack_failed", id=r.id, error=str(e), detail="acked again when it can be")

    def ack_again(self) -> None:
        """Retry the acks (and releases, fails) that failed (DriverUnavailable goes up while
        the database is away)."""
        while self.unacked:
            self.queue.ack(self.unacked[0])
            self.unacked.pop(0)
        while self.unsettled:
            _, verb, then = self.unsettled[0]
            result = verb()
            self.unsettled.pop(0)       # landed: never made a third time, whatever `then` does
            if then is not None:
                then(result)

    def pending(self) -> list[Any]:
        """Finished jobs whose ack, release or fail is still to be made: renewed till then."""
        return list(self.unacked) + [r for r, _, _ in self.unsettled]

    def _again_later(self, r: Any, name: str, verb: Any, then: Any = None) -> Any:
        """Make `verb` now and return its result; if its connection drops and the driver allows
        it, keep it to be made again (returns UNSETTLED; `then(result)` runs once it lands).
        Other errors, and drivers that cannot, raise as before."""
        try:
            return verb()
        except DriverUnavailable as e:
            if not getattr(self.queue, "settles_again", False):
                raise
            self.unsettled.append((r, verb, then))
            self.log.warning("job.ack_failed", id=r.id, error=str(e), settle=name,   # README's event list
                             detail="made again when it can be")
            return UNSETTLED

    def _own(self, attempt: Attempt) -> None:
        """Settle from the main thread, unless the watchdog got there first: it is settling the
        attempt and ending the process, so this thread only waits for that."""
        if self.claim(attempt, "main"):
            return
        while True:
            time.sleep(60)

    def last_resort(self, reserved: Any, exc: BaseException) -> None:
        """An unexpected error while preparing or settling one job: fail that job, keep working."""
        self.current = None
        summary = _summary(exc)
        self.log.error("worker.error", id=reserved.id, queue=reserved.queue, error=summary,
                       detail="failing the job")
        try:
            self.queue.fail(reserved, _text(reserved.body), f"WorkerError: {_describe(exc)}")
        except Exception as e:
            self.log.error("worker.error", id=reserved.id, error=_summary(e),
                           detail="left reserved: it is handed out again after retry_after")
            return
        try:                            # a batch job failed here still counts, so its batch finishes
            batches.unrunnable(self, reserved)
        except Exception as e:
            self.log.error("batch.count_failed", id=reserved.id, error=_summary(e))

    def settle(self, attempt: Attempt, exc: BaseException | None, release_delay: float | None = None,
               decided: retry.Decision | None = None) -> str:
        """Release, retry or fail an attempt that did not succeed; counted when it was."""
        outcome = self._settle(attempt, exc, release_delay, decided)
        self._count(attempt, outcome, time.monotonic() - attempt.started)
        return outcome

    def _count(self, attempt: Attempt, outcome: str, seconds: float) -> None:
        """Count a settled attempt: not one lost to another worker, nor one still unsettled
        (counted when its fail lands)."""
        if self.counts is not None and outcome not in ("lost", UNSETTLED):
            self.counts.add(attempt.reserved.queue, attempt.doc["job"], outcome, seconds)   # type: ignore[index]

    def _settle(self, attempt: Attempt, exc: BaseException | None, release_delay: float | None,
                decided: retry.Decision | None) -> str:
        job, r, doc = attempt.job, attempt.reserved, attempt.doc
        assert job is not None and doc is not None
        raised = exc is not None and release_delay is None
        exceptions = int(doc.get("exceptions") or 0) + (1 if raised else 0)
        decision = decided or retry.decide(
            attempts=r.attempts, tries=_tries(doc, job, self.options),
            backoff=_backoff(doc, job, self.options), exceptions=exceptions,
            max_exceptions=doc.get("max_exceptions") or _own(job, "max_exceptions"),
            retry_until=retry.parse_until(doc.get("retry_until")), now=dt.datetime.now(dt.timezone.utc),
            raised=raised)
        body = _updated(r.body, r.attempts, exceptions)
        if decision.retry:
            delay = release_delay if release_delay is not None else decision.delay
            self._again_later(r, "release", lambda: self.queue.release(r, delay, body))
            event = "job.released" if release_delay is not None else "job.retry"
            self.log.warning(event, id=r.id, job=doc["job"], queue=r.queue, attempt=r.attempts, delay=delay,
                             error=_summary(exc) if exc else None)
            return "released" if release_delay is not None else "retried"
        if exc is None:
            exc = MaxAttemptsExceeded(f"released {r.attempts} times: {decision.reason}")
        if "batch" in doc:              # batches (farm/batches.py): a final failure counts, before
            self._count_failed(doc, r.id)   # the fail (idempotent per id), so no crash leaves it uncounted
        error, seconds, failing = _describe(exc), time.monotonic() - attempt.started, exc
        # a fail cut off with its connection is made again on reconnect: its log line and hooks
        # wait for it to land, and there is none if another worker took the job meanwhile
        landed = self._again_later(
            r, "fail", lambda: self._fail(r, body, error),
            then=lambda result: self._count(attempt, self._failed(attempt, failing, decision.reason, result, True),
                                            seconds))
        if landed is UNSETTLED:
            return UNSETTLED
        return self._failed(attempt, exc, decision.reason, landed)

    def _fail(self, r: Reserved, body: str, error: str) -> bool:
        """Move the job to the failed table. A fail that matched nothing may be one made again
        after a cut whose first commit landed (only its reply was lost): the failed table says."""
        landed = self.queue.fail(r, body, error)
        if landed is False and self.store is not None and getattr(self.store, "keeps_failed", True):
            try:
                return bool(self.store.failed([r.id]))
            except FarmError:
                return False
        return landed

    def _failed(self, attempt: Attempt, exc: BaseException, reason: str, landed: Any, late: bool = False) -> str:
        """After the fail: log it and run the hooks (unique lock, failed(), `failing`), or,
        when the fail matched nothing (`landed` False), log the job lost and run none."""
        job, r, doc = attempt.job, attempt.reserved, attempt.doc
        assert job is not None and doc is not None
        if landed is False:
            detail = "its reservation lapsed and another worker holds it; not failed here"
            if late:
                detail = ("its reservation lapsed while the fail was cut off, and another worker took it; "
                          "not failed here, no failed() or failing event")
            self.log.error("job.lost", id=r.id, job=doc["job"], queue=r.queue, detail=detail)
            return "lost"
        self.log.error("job.failed", id=r.id, job=doc["job"], queue=r.queue, attempt=r.attempts,
                       reason=reason, error=_summary(exc))
        if attempt.unique is not None:
            unique.release(self.store, attempt.unique, self.log)
        try:
            job.failed(exc)
        except BaseException as hook_exc:
            self.log.error("job.failed_hook_raised", id=r.id, error=_summary(hook_exc))
        if events.HANDLERS["failing"]:          # farm.on("failing", ...)
            self.fire("failing", attempt, exc)
        return "failed"

    def _count_failed(self, doc: dict[str, Any], job_id: str) -> None:
        """Count a batch job's final failure; a store error is logged, never in the way of the
        fail, `failed()` or the `failing` event (the job's rerun or retry counts it then)."""
        try:
            batches.finished(self, doc, job_id, True)
        except Exception as e:
            self.log.error("batch.count_failed", id=job_id, batch=doc.get("batch"), error=_summary(e))

    # -- farm.on events ------------------------------------------------------------------
    def before_event(self, attempt: Attempt) -> Any:
        """The `before` event of this attempt, for middleware.run to fire ahead of handle()."""
        return lambda: self.fire("before", attempt)

    def fire(self, event: str, attempt: Attempt, exc: BaseException | None = None) -> None:
        """Call the `event` handlers for this attempt; their errors are logged, never raised."""
        r = attempt.reserved
        events.fire(event, self.log, attempt.job, r.id, r.queue, getattr(self.queue, "name", None),
                    r.attempts, exc)


def run_inline(job: Job, connection: str | None = None) -> Any:
    """`dispatch_sync`: run in this process; on an exception call `failed()` and re-raise.
    Events fire and middleware runs, with this process's locks; a job it holds back does not run."""
    where = None
    if events.HANDLERS["before"] or events.HANDLERS["after"] or events.HANDLERS["failing"]:
        from ..dispatch import options_of

        own = options_of(job)
        where = (job.job_id, own["queue"] or "default", connection or own["connection"], job.attempts)
    before = (lambda: events.fire("before", None, job, *where)) if where and events.HANDLERS["before"] else None
    try:
        if not middleware.chain_of(job):
            if before is not None:
                before()
            result = job.handle()
        else:
            from ..locks import MEMORY

            result = middleware.wrap(job, MEMORY, float(_own(job, "timeout") or 0), before=before)
        outcome = getattr(job, "_farm_outcome", None)
        if outcome is not None and outcome[0] == "fail":      # self.fail(exc): failed, as a raise
            raise outcome[1]
    except Exception as exc:
        job.failed(exc)
        if where is not None:
            events.fire("failing", None, job, *where, exc)
        raise
    if outcome is not None:             # released or held back: nowhere to put it back here
        from ..log import Log

        Log().warning("job.not_run_again", job=job_name(job), outcome=outcome[0],
                      detail="dispatch_sync and the sync driver run a job once: a release or a "
                             "hold-back ends it without success")
        return result
    if where is not None:
        events.fire("after", None, job, *where)
    return result


def _own(job: Job, name: str) -> Any:
    return option(job, name)


def _tries(doc: dict[str, Any], job: Job, options: WorkerOptions) -> int:
    """The document's tries, else the job's own, else the worker's; 0 (kept, not a default) is
    unlimited, bounded by retry_until and max_exceptions."""
    value = doc.get("tries")
    if value is None:
        value = _own(job, "tries")
    return int(options.tries if value is None else value)


def _backoff(doc: dict[str, Any], job: Job, options: WorkerOptions) -> tuple[float, ...]:
    value = doc.get("backoff")
    if value is None:
        value = _own(job, "backoff")
    if value is None:
        return options.backoff
    return tuple(value) if isinstance(value, (list, tuple)) else (float(value),)


def _updated(body: Any, attempts: int, exceptions: int) -> str:
    doc = json.loads(body)
    doc["attempts"], doc["exceptions"] = attempts, exceptions
    return payload.dumps(doc)


def _text(body: Any) -> str:
    return body if isinstance(body, str) else bytes(body).decode("utf-8", "replace")


def _summary(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _describe(exc: BaseException) -> str:
    """First line `Type: message`, then the traceback (where there is one)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) if exc.__traceback__ else ""
    return _summary(exc) + ("\n\n" + tb if tb else "")
