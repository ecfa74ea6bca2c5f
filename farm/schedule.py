"""The scheduler: `schedule:` entries, their ticks, and the loop that dispatches each tick once.

A tick is dispatched by whichever `farmctl schedule` claims it first: a claim is one atomic
write in the store of the entry's connection (`Store.claim`: a row keyed by the entry and the
tick, or a Redis SET NX), so any number of schedulers on any number of hosts dispatch each
tick exactly once. A scheduler starts with the ticks after its start: ticks that fell while
none ran are skipped, never replayed.

Ticks of `@every N` fall on multiples of N seconds since the Unix epoch, so every scheduler
agrees on them. Cron ticks are computed on the entry's local wall clock and keyed by that wall
time: on a fall-back day a 01:30 tick names the first 01:30 (the second one would claim the same
key), and on a spring-forward day a time that does not exist (02:30) fires when the clocks jump
(03:00), once, as Vixie cron does.
"""
from __future__ import annotations

import datetime as dt
import math
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .errors import FarmError, ManifestError

if TYPE_CHECKING:
    from .log import Log
    from .manifest import Connection, Manifest, Pipeline

SCHEDULER = "farm-scheduler"            # the supervisord program and systemd unit
KEYS = {"cron", "job", "args", "queue", "timezone", "connection"}
CLAIM_FOR = 86400.0                     # a claim is kept this long after its tick, then pruned
LATE = 60.0                             # a tick found later than this (a suspended process) is skipped
_EVERY = re.compile(r"@every\s+([1-9][0-9]{0,6})\s*([smh])")
_UNITS = {"s": 1, "m": 60, "h": 3600}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_JOB = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)")
_STORED = ("database", "amqp", "redis")  # drivers whose connection has a store to claim ticks in


@dataclass(frozen=True)
class Entry:
    name: str
    cron: str                           # as written: five fields, or `@every 30s`
    job: str                            # module:Qualname
    args: dict[str, Any] = field(default_factory=dict)   # the job's constructor keyword arguments
    queue: str | None = None            # None: the job's own queue
    timezone: str = "UTC"
    connection: str = "database"
    every: int | None = None            # seconds, for `@every`
    where: str = ""                     # `conf/farm.yaml:LINE`, for problems found when it starts

    def zone(self) -> Any:
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.timezone)

    def ticks(self, after: float) -> Iterator[Tick]:
        """Its ticks strictly after the instant `after` (epoch seconds), in order, forever."""
        if self.every:
            return _every_ticks(self.every, self.zone(), after)
        return _cron_ticks(self.cron, self.zone(), after)


@dataclass(frozen=True)
class Tick:
    key: str                            # the same on every host: epoch seconds, or local wall time
    at: float                           # when it fires (epoch seconds)
    label: str                          # ISO 8601 in the entry's timezone

    def claim_name(self, entry: Entry) -> str:
        return f"schedule:{entry.name}:{self.key}"


# -- the manifest's `schedule:` ------------------------------------------------------------
def entries(b: Any, value: Any, connections: dict[str, Connection], default: str,
            imports: list[str], pipelines: dict[str, Pipeline]) -> dict[str, Entry]:
    """`schedule:` checked entry by entry; `b` is the manifest's builder (problems with lines)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        b.r.problem("schedule", "expected a mapping of entry names to {cron, job, ...}")
        return {}
    if value and SCHEDULER in pipelines:
        b.r.problem(f"pipelines.{SCHEDULER}", f"{SCHEDULER!r} is the scheduler's own program: rename the pipeline")
    out: dict[str, Entry] = {}
    for name, spec in value.items():
        key = f"schedule.{name}"
        if not _NAME.fullmatch(str(name)):
            b.r.problem(key, "an entry name is 1 to 100 letters, digits, _, . and -")
            continue
        if not isinstance(spec, dict):
            b.r.problem(key, "expected a mapping such as {cron: '0 2 * * *', job: 'app.jobs:Report'}")
            continue
        b._unknown(spec, KEYS, key)
        entry = _entry(b, key, str(name), spec, connections, default, imports)
        if entry is not None:
            out[str(name)] = entry
    return out


def _entry(b: Any, key: str, name: str, spec: dict[str, Any], connections: dict[str, Connection],
           default: str, imports: list[str]) -> Entry | None:
    problems = len(b.r.problems)
    cron, every = _cron(b, f"{key}.cron", spec.get("cron"))
    job = _job(b, f"{key}.job", spec.get("job"), imports)
    args = spec.get("args") or {}
    if not isinstance(args, dict) or not all(isinstance(k, str) and k.isidentifier() for k in args):
        b.r.problem(f"{key}.args", "expected a mapping of the job's keyword arguments")
    queue = spec.get("queue")
    if queue is not None and not (isinstance(queue, str) and 0 < len(queue) <= 191):
        b.r.problem(f"{key}.queue", f"expected a queue name (1 to 191 characters), got {queue!r}")
    timezone = spec.get("timezone", "UTC")
    if not _zone_ok(timezone):
        b.r.problem(f"{key}.timezone", f"unknown timezone {timezone!r} (an IANA name such as Europe/Kyiv or UTC)")
    conn = spec.get("connection", default)
    c = connections.get(conn) if isinstance(conn, str) else None
    if c is None:
        b.r.problem(f"{key}.connection", f"unknown connection {conn!r} ({b._known(connections)})")
    elif c.driver not in _STORED:
        b.r.problem(f"{key}.connection", f"a {c.driver} connection has no store to claim ticks in, and would run "
                    "the jobs inside the scheduler: use a database, amqp or redis connection")
    if len(b.r.problems) > problems:
        return None
    return Entry(name=name, cron=cron, job=job, args=dict(args), queue=queue, timezone=timezone,
                 connection=conn, every=every, where=f"{b.r.display}:{b.r.lines.get(key, 1)}")


def _cron(b: Any, key: str, expr: Any) -> tuple[str, int | None]:
    """A five-field cron expression that fires, or `@every N[smh]`: (expr, seconds or None)."""
    if not isinstance(expr, str):
        b.r.problem(key, f"expected a five-field cron expression or '@every 30s', got {expr!r}")
        return "", None
    if expr.startswith("@every"):
        m = _EVERY.fullmatch(expr.strip())
        if m is None:
            b.r.problem(key, f"expected '@every N' with N a whole number of s, m or h (such as @every 30s), got {expr!r}")
            return expr, None
        return expr, int(m.group(1)) * _UNITS[m.group(2)]
    from croniter import croniter

    if len(expr.split()) != 5 or not croniter.is_valid(expr):
        b.r.problem(key, f"not a five-field cron expression (minute hour day month weekday): {expr!r}")
        return expr, None
    try:
        croniter(expr, dt.datetime(2000, 1, 1)).get_next(dt.datetime)
    except Exception:
        b.r.problem(key, f"{expr!r} never fires (no such date)")
    return expr, None


def _job(b: Any, key: str, job: Any, imports: list[str]) -> str:
    if not isinstance(job, str) or not _JOB.fullmatch(job):
        b.r.problem(key, f"expected module:Qualname (such as app.jobs:Report), got {job!r}")
        return ""
    module = job.partition(":")[0]
    if module not in imports:
        b.r.problem(key, f"its module {module!r} is not listed under imports: ({', '.join(imports) or 'none'})")
    return job


def _zone_ok(name: Any) -> bool:
    from zoneinfo import ZoneInfo

    if not isinstance(name, str) or not name:
        return False
    try:
        ZoneInfo(name)
    except Exception:                   # ZoneInfoNotFoundError, or a name that is no key (`../x`)
        return False
    return True


# -- ticks -------------------------------------------------------------------------------
def _every_ticks(period: int, zone: Any, after: float) -> Iterator[Tick]:
    n = math.floor(after / period) + 1
    while True:
        at = n * period
        yield Tick(key=str(at), at=float(at), label=_label(at, zone))
        n += 1


def _cron_ticks(expr: str, zone: Any, after: float) -> Iterator[Tick]:
    """Wall-clock ticks mapped to instants; the mapping never goes backwards (see `instant`),
    so stepping back from `after`'s wall time until a tick is not after it finds the first.
    Ticks that land on one instant (`*/30` in a spring-forward gap: 02:00, 02:30, 03:00) fire
    once, under the first one's key."""
    from croniter import croniter

    back = croniter(expr, wall(after, zone))
    start = back.get_prev(dt.datetime)
    while instant(start, zone) > after:      # the repeated hour of a fall-back day
        start = back.get_prev(dt.datetime)
    ahead = croniter(expr, start)
    floor = after
    while True:
        local = ahead.get_next(dt.datetime)
        at = instant(local, zone)
        if at > floor:
            floor = at
            yield Tick(key=local.strftime("%Y-%m-%dT%H:%M"), at=at, label=_label(at, zone))


def wall(at: float, zone: Any) -> dt.datetime:
    """The naive local wall time at the instant `at`."""
    return dt.datetime.fromtimestamp(at, zone).replace(tzinfo=None)


def instant(local: dt.datetime, zone: Any) -> float:
    """The instant a naive wall time names: the first of the two on a fall-back day; for a time
    that does not exist (a spring-forward gap), the moment the gap ends."""
    at = local.replace(tzinfo=zone, fold=0).timestamp()
    if wall(at, zone) == local:
        return at
    lo = math.floor(local.replace(tzinfo=zone, fold=1).timestamp())   # before the gap
    hi = math.ceil(at)                                                  # after it
    while hi - lo > 1:                  # the first whole second whose wall time is past `local`
        mid = (lo + hi) // 2
        if wall(mid, zone) >= local:
            hi = mid
        else:
            lo = mid
    return float(hi)


def _label(at: float, zone: Any) -> str:
    return dt.datetime.fromtimestamp(at, zone).isoformat()


def upcoming(manifest: Manifest, count: int = 3, now: float | None = None) -> list[dict[str, Any]]:
    """Each entry with its next `count` fire times (ISO 8601 in its timezone): for `schedule
    --list` and the dashboard. `queue` None means the job's own queue."""
    now = time.time() if now is None else now
    out = []
    for e in manifest.schedule.values():
        ticks = e.ticks(now)
        out.append({"name": e.name, "cron": e.cron, "job": e.job, "queue": e.queue,
                    "connection": e.connection, "timezone": e.timezone,
                    "next": [next(ticks).label for _ in range(count)]})
    return out


# -- the loop ----------------------------------------------------------------------------
class Scheduler:
    """Finds due ticks and hands each to `claim` then `dispatch`, logging what became of it.
    The time is an argument (`now`), so it is tested without waiting; `clock` only times the
    `late=` of the log."""

    def __init__(self, entries: list[Entry], started: float,
                 claim: Callable[[Entry, Tick], bool], dispatch: Callable[[Entry, Tick], str | None],
                 log: Log, clock: Callable[[], float] = time.time,
                 unclaim: Callable[[Entry, Tick], None] | None = None) -> None:
        self.claim, self.dispatch, self.log, self.clock = claim, dispatch, log, clock
        self.unclaim = unclaim
        self.again: list[tuple[Entry, Tick]] = []     # claimed, not dispatched, claim given up: retried
        self.pending = {e.name: (e, e.ticks(started)) for e in entries}
        self.next = {name: next(ticks) for name, (_, ticks) in self.pending.items()}

    def wake_at(self) -> float:
        """When the soonest tick falls (a tick to try again: in a second)."""
        soonest = min((t.at for t in self.next.values()), default=math.inf)
        return min(soonest, self.clock() + 1.0) if self.again else soonest

    def run_once(self, now: float) -> None:
        """Dispatch the due ticks: of an entry found with several due (the process was held up),
        only the latest, the others logged as skipped; none that is more than LATE seconds old.
        A tick whose dispatch failed is tried again (by whichever scheduler claims it) until LATE."""
        again, self.again = self.again, []
        for entry, tick in again:
            if now - tick.at > LATE:
                self.log.error("schedule.error", entry=entry.name, tick=tick.label,
                               detail=f"not dispatched within {LATE:g} s of its time; given up")
            else:
                self._fire(entry, tick)
        for name, (entry, ticks) in self.pending.items():
            due = []
            while self.next[name].at <= now:
                due.append(self.next[name])
                self.next[name] = next(ticks)
            if not due:
                continue
            skipped, tick = due[:-1], due[-1]
            if now - tick.at > LATE:
                skipped, tick = due, None
            if skipped:
                self.log.warning("schedule.skipped", entry=name, ticks=len(skipped), first=skipped[0].label,
                                 reason="the scheduler was held up past them")
            if tick is not None:
                self._fire(entry, tick)

    def _fire(self, entry: Entry, tick: Tick) -> None:
        try:
            if not self.claim(entry, tick):
                self.log.event("debug", "schedule.taken", entry=entry.name, tick=tick.label)
                return
        except FarmError as e:
            self.log.error("schedule.error", entry=entry.name, tick=tick.label, error=str(e),
                           detail="not claimed; the next tick tries again")
            return
        try:
            job_id = self.dispatch(entry, tick)
        except FarmError as e:
            self._give_up(entry, tick, str(e))
            return
        except Exception as e:          # the job's own code (its __init__) raised
            self.log.error("schedule.error", entry=entry.name, tick=tick.label,
                           error=f"{type(e).__name__}: {e}", detail="not dispatched")
            return
        self.log.info("schedule.dispatch", entry=entry.name, tick=tick.label, id=job_id,
                      late=round(self.clock() - tick.at, 3))     # when the job was stored

    def _give_up(self, entry: Entry, tick: Tick, error: str) -> None:
        """The dispatch failed after our claim: give the claim up, so the tick is tried again
        (here, or by another scheduler) until LATE; if even that fails, the tick is lost."""
        try:
            if self.unclaim is None:
                raise FarmError("no way to give the claim up")
            self.unclaim(entry, tick)
        except FarmError as e:
            self.log.error("schedule.error", entry=entry.name, tick=tick.label, error=error,
                           detail=f"not dispatched, and the claim is kept ({e}): the tick is lost")
            return
        self.again.append((entry, tick))
        self.log.error("schedule.error", entry=entry.name, tick=tick.label, error=error,
                       detail="not dispatched; tried again within a second")


CHECK = 1.0     # seconds between looks at the manifest file (a stat), at the longest


def serve(manifest: Manifest, log: Log, clock: Callable[[], float] = time.time) -> int:
    """Run the manifest's schedule until SIGTERM, SIGINT or SIGHUP (exit status 0): sleep until
    the soonest tick, claim it in its connection's store, dispatch it if the claim was ours.
    An edited manifest is read again: its entries take over from the next tick."""
    import signal

    from . import waker
    from .worker.signals import wakeup

    run = _Run(manifest, log, clock)        # a job that cannot be made: ManifestError, exit 2
    stop: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        if stop:                        # a second one: a dispatch hangs on a dead server, do not wait
            raise SystemExit(1)
        stop.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        with wakeup():
            run.start("schedule.start")
            while not stop:
                delay = run.sched.wake_at() - clock()
                if delay > 0:
                    waker.wait(min(delay, CHECK))
                else:
                    run.tick()
                run.reload_if_changed()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    log.info("schedule.stop", reason=signal.Signals(stop[0]).name)
    return 0


class _Run:
    """One scheduler process: its manifest, a job maker per entry, and the Scheduler."""

    def __init__(self, manifest: Manifest, log: Log, clock: Callable[[], float]) -> None:
        import sys

        sys.path.insert(0, str(manifest.root))
        self.manifest, self.log, self.clock = manifest, log, clock
        self.makers = _makers(manifest)
        self.seen = _file_state(manifest.path)
        self.last: float | None = None  # ticks after this are still to be looked at

    def start(self, event: str) -> None:
        from . import app

        for name in sorted({e.connection for e in self.manifest.schedule.values()}):
            try:                        # open them now, so that the first tick is not late
                app.queue(name)
                app.store(name)
            except FarmError as e:
                self.log.warning("schedule.connection", connection=name, error=str(e), detail="tried at each tick")
        if self.last is None:           # the first start: from now on, with the connections open
            self.last = self.clock()
        self.sched = Scheduler(list(self.manifest.schedule.values()), self.last, self._claim, self._send, self.log,
                               self.clock, unclaim=self._unclaim)
        for name, tick in self.sched.next.items():
            self.log.info("schedule.entry", entry=name, cron=self.manifest.schedule[name].cron, next=tick.label)
        self.log.info(event, entries=len(self.makers))
        if not self.makers:
            self.log.warning("schedule.empty", detail="the manifest has no schedule: entries")

    def tick(self) -> None:
        self.last = self.clock()
        self.sched.run_once(self.last)

    def reload_if_changed(self) -> None:
        """A manifest that changed on disk is loaded again; one with problems is logged and the
        entries go on as they were."""
        from . import app

        state = _file_state(self.manifest.path)
        if state == self.seen:
            return
        self.seen = state
        try:
            manifest = app.configure(self.manifest.path)
            makers = _makers(manifest)
        except FarmError as e:
            problems = e.problems if isinstance(e, ManifestError) else [str(e)]
            self.log.error("schedule.reload", error=" | ".join(problems), detail="the entries as they were go on")
            return
        self.tick()                     # what fell due under the old entries, then the new ones from now
        self.manifest, self.makers = manifest, makers
        self.start("schedule.reload")

    def _claim(self, entry: Entry, tick: Tick) -> bool:
        from . import app

        return bool(app.store(entry.connection).claim(tick.claim_name(entry), tick.at + CLAIM_FOR))

    def _unclaim(self, entry: Entry, tick: Tick) -> None:
        from . import app

        app.store(entry.connection).unclaim(tick.claim_name(entry))

    def _send(self, entry: Entry, tick: Tick) -> str | None:
        from .dispatch import dispatch

        return dispatch(self.makers[entry.name](), queue=entry.queue, connection=entry.connection)


def _file_state(path: Any) -> tuple[int, int] | None:
    import os

    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _makers(manifest: Manifest) -> dict[str, Callable[[], Any]]:
    """A job maker per entry; every entry that has none is a problem of one ManifestError."""
    makers, problems = {}, []
    for e in manifest.schedule.values():
        try:
            makers[e.name] = job_maker(manifest, e)
        except ManifestError as err:
            problems.extend(err.problems)
    if problems:
        raise ManifestError(problems)
    return makers


def job_maker(manifest: Manifest, entry: Entry) -> Callable[[], Any]:
    """A function making the entry's job from its args, tried once now: a job that cannot be
    imported, built from its args or serialized is a manifest error (with the entry's line)."""
    from . import payload
    from .dispatch import _outgoing
    from .jobs import FunctionJob

    where = f"{entry.where}: schedule.{entry.name}"
    try:
        target = payload.Registry(manifest.imports).resolve(entry.job)
    except FarmError as e:
        raise ManifestError(f"{where}.job: {e}") from None
    if not isinstance(target, (type, FunctionJob)):
        target = FunctionJob(target)
    make: Callable[[], Any] = (lambda: target(**entry.args)) if isinstance(target, type) \
        else (lambda: target.job(**entry.args))
    try:
        _outgoing(make(), entry.queue, None, entry.connection, None, None, None)
    except Exception as e:              # the job's own __init__ may raise anything
        raise ManifestError(f"{where}.args: {entry.job} cannot be made from them: "
                            f"{type(e).__name__}: {e}") from None
    return make
