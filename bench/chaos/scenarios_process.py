"""Process faults: workers killed, stopped, recycled; long jobs; poison jobs.

Every scenario is `(farm: ChaosFarm, size: Size) -> Result`. The harness plays supervisord:
a worker that exits is started again (`Keeper`), so the farm keeps its size.
"""
from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
import uuid
from typing import Callable

from farm.worker.runner import CRASHES_ALLOWED

from .farm import ChaosFarm, Size
from .report import Result

DRAIN_TIMEOUT = 120.0
SHORT_JOBS = (0.0, 0.005, 0.02, 0.05, 0.2)      # job lengths under load (seconds)


class Keeper:
    """Keeps `n` workers running, as supervisord's autorestart would; remembers exit codes."""

    def __init__(self, farm: ChaosFarm, n: int, *args: str) -> None:
        self.farm, self.n, self.args = farm, n, args
        self.exits: list[int] = []
        self.started: dict[int, float] = {}
        self.signalled: set[int] = set()     # a second TERM would abandon the job: never sent
        self.workers = [self._start() for _ in range(n)]

    def _start(self) -> subprocess.Popen[bytes]:
        p = self.farm.worker(*self.args)
        self.started[p.pid] = time.monotonic()
        return p

    def settled(self, after: float = 1.0) -> list[subprocess.Popen[bytes]]:
        """Workers up for `after` seconds at least (supervisord's startsecs=1: one that is still
        importing has no signal handlers yet, and a TERM then ends it with -15, holding no job)."""
        now = time.monotonic()
        return [p for p in self.workers if p.poll() is None and now - self.started[p.pid] >= after
                and p.pid not in self.signalled and self.up(p)]

    def up(self, p: subprocess.Popen[bytes]) -> bool:
        """It has logged worker.start: past its imports, its stop signals handled (the TERM of a
        worker still importing is Python's default: death by the signal, holding no job)."""
        log = self.farm.log_of(p)
        return log is not None and b"worker.start" in log.read_bytes()[:4096]

    def signal(self, p: subprocess.Popen[bytes], sig: int) -> None:
        self.signalled.add(p.pid)
        p.send_signal(sig)

    def stop(self, timeout: float = 60) -> list[int]:
        """TERM each worker once (none twice, none still starting: see settled) and wait;
        returns the exit codes of this stop."""
        for p in self.workers:
            if p.poll() is None and p.pid not in self.signalled:
                time.sleep(max(0.0, self.started[p.pid] + 1.0 - time.monotonic()))
                deadline = time.monotonic() + 30
                while p.poll() is None and not self.up(p) and time.monotonic() < deadline:
                    time.sleep(0.05)
                self.signal(p, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes = []
        for p in self.workers:
            try:
                codes.append(p.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait(10))
        return codes

    def tick(self) -> None:
        """Note the exits and start a worker for each one gone."""
        for p in list(self.workers):
            code = p.poll()
            if code is not None:
                self.workers.remove(p)
                self.exits.append(code)
                self.workers.append(self._start())

    def run_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Tick until `done()` or `timeout`; True when done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.tick()
            if done():
                return True
            time.sleep(0.1)
        return False


class Producer(threading.Thread):
    """Dispatches `n` ok-jobs of mixed lengths in chunks of 10 while the farm runs."""

    def __init__(self, farm: ChaosFarm, n: int, rng: random.Random, pause: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.farm, self.n, self.rng, self.pause = farm, n, rng, pause
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for start in range(0, self.n, 10):
                self.farm.dispatch(min(10, self.n - start), seconds=self.rng.choice(SHORT_JOBS))
                time.sleep(self.rng.uniform(0, self.pause))
        except BaseException as e:         # reported in the Result's note
            self.error = e


def _failed_by_death_rule(farm: ChaosFarm, ids: tuple[str, ...], killed: set[int]) -> tuple[str, ...]:
    """Of `ids` (no E in the ledger), those in the failed table that the ledger shows started
    more than CRASHES_ALLOWED times, each start by a worker the harness SIGKILLed: the rule
    that fails a job whose worker keeps dying caught an unlucky job, as it must."""
    if not ids:
        return ()
    failed = farm.failed_ids(list(ids))
    starts: dict[str, int] = {}
    for e in farm.ledger.events():
        if e.kind == "S" and e.job_id in failed and e.pid in killed:
            starts[e.job_id] = starts.get(e.job_id, 0) + 1
    return tuple(i for i in ids if starts.get(i, 0) > CRASHES_ALLOWED)


def _explain_lost(farm: ChaosFarm, ids: tuple[str, ...]) -> None:
    """Write workdir/lost.txt: each lost id's ledger lines and failed entry (kept with --keep)."""
    from farm import app

    failed = {f.id: f for f in app.store("main").failed(ids=list(ids))}
    events = farm.ledger.events()
    with open(farm.workdir / "lost.txt", "w") as out:
        for i in ids:
            out.write(f"{i}: " + " ".join(f"{e.kind}@{e.pid}" for e in events if e.job_id == i) + "\n")
            if i in failed:
                out.write("  failed: " + failed[i].exception.strip().splitlines()[-1] + "\n")


def _result(farm: ChaosFarm, name: str, t0: float, ok: bool, note: str, allowed: int = 0,
            failed_ok: tuple[str, ...] = (), ids: list[str] | None = None) -> Result:
    t = farm.ledger.tally(farm.dispatched if ids is None else ids, failed_ok)
    ok = ok and t.lost == 0
    if t.lost_ids:
        _explain_lost(farm, t.lost_ids)
        in_failed = len(farm.failed_ids(list(t.lost_ids)))
        note = (note + f"; lost {t.lost_ids[0]}" + (" and more" if t.lost > 1 else "")
                + f" ({in_failed} of {t.lost} in the failed table)").lstrip("; ")
    return Result(name, farm.backend, t.dispatched, t.completed, t.lost, t.completed_twice, t.started_twice,
                  round(time.monotonic() - t0, 1), allowed, ok, note)


def _storm(farm: ChaosFarm, size: Size, sig: int, name: str) -> Result:
    """Workers under a steady producer, one of them signalled every 0.2-0.6 s."""
    rng = random.Random()
    t0 = time.monotonic()
    keeper = Keeper(farm, size.workers)
    producer = Producer(farm, size.jobs, rng, pause=0.3)
    producer.start()
    inside = after_end = 0
    allowed: set[str] = set()
    killed: set[int] = set()
    signalled: list[subprocess.Popen[bytes]] = []
    sent = 0
    while sent < size.events:
        time.sleep(rng.uniform(0.2, 0.6))
        keeper.tick()
        ready = keeper.settled()
        if not ready:
            continue
        victim = rng.choice(ready)
        sent += 1
        keeper.signal(victim, sig)
        if sig == signal.SIGKILL:
            victim.wait(10)
            killed.add(victim.pid)
            last = farm.ledger.last_job(victim.pid)
            if last and last[0] == "S":
                inside += 1
                allowed.add(last[1])
            elif last:
                after_end += 1            # between its E and its ack: that job may run again too
                allowed.add(last[1])
        else:
            signalled.append(victim)
        keeper.tick()
    producer.join()
    drained = keeper.run_until(lambda: farm.wait_drained(0.5), DRAIN_TIMEOUT)
    keeper.stop()
    t = farm.ledger.tally(farm.dispatched)
    notes = [] if drained else ["not drained"]
    if producer.error:
        notes.append(f"producer: {type(producer.error).__name__}: {producer.error}")
    if sig == signal.SIGKILL:
        unexplained = set(t.twice_ids) - allowed
        ok = drained and not unexplained and producer.error is None
        notes.append(f"{size.events} kills, {inside} inside a job, {after_end} after its end")
        if unexplained:
            notes.append(f"{len(unexplained)} ran twice outside a kill")
        by_rule = _failed_by_death_rule(farm, t.lost_ids, killed)
        if by_rule:
            notes.append(f"{len(by_rule)} failed after {CRASHES_ALLOWED + 1} kills inside it (by design)")
        return _result(farm, name, t0, ok, "; ".join(notes), allowed=inside + after_end, failed_ok=by_rule)
    bad_exits = [c for c in (p.returncode for p in signalled) if c != 0]
    ok = drained and t.completed_twice == 0 and t.started_twice == 0 and not bad_exits and producer.error is None
    notes.append(f"{len(signalled)} TERMs" + (f", exits {sorted(set(bad_exits))}" if bad_exits else ", all exit 0"))
    return _result(farm, name, t0, ok, "; ".join(notes))


def sigkill_storm(farm: ChaosFarm, size: Size) -> Result:
    """SIGKILL a random worker every 0.2-0.6 s under load; only a job its worker held may run again."""
    return _storm(farm, size, signal.SIGKILL, "sigkill_storm")


def sigterm_storm(farm: ChaosFarm, size: Size) -> Result:
    """SIGTERM a random worker every 0.2-0.6 s under load: graceful, so 0 run twice, 0 lost."""
    return _storm(farm, size, signal.SIGTERM, "sigterm_storm")


def _graceful_verdict(farm: ChaosFarm, keeper: Keeper, drained: bool, extra: list[str]) -> tuple[bool, list[str]]:
    """0 run twice and every worker exit 0 (graceful paths)."""
    codes = keeper.exits + keeper.stop()
    t = farm.ledger.tally(farm.dispatched)
    bad = sorted({c for c in codes if c != 0})
    notes = ([] if drained else ["not drained"]) + extra
    if bad:
        notes.append(f"worker exits {bad}")
    return drained and t.completed_twice == 0 and t.started_twice == 0 and not bad, notes


def memory_recycling(farm: ChaosFarm, size: Size) -> Result:
    """Jobs that each keep 6 MB in their worker, `--memory 80`: workers exit 0 after a few jobs
    and are started again (as supervisord would); 0 lost, 0 run twice."""
    rng = random.Random()
    t0 = time.monotonic()
    keeper = Keeper(farm, size.workers, "--memory", "80")
    for start in range(0, size.jobs, 10):
        # a worker samples its RSS once a second: with --short the jobs last long enough that
        # every worker lives through a few samples (a 1.6 s drain in CI saw no recycle at all)
        seconds = 0.1 if size.short else rng.choice(SHORT_JOBS[1:4])
        farm.dispatch(min(10, size.jobs - start), kind="grow", mb=6, seconds=seconds)
        keeper.tick()
    drained = keeper.run_until(lambda: farm.wait_drained(0.5), DRAIN_TIMEOUT)
    recycled = len(keeper.exits)
    ok, notes = _graceful_verdict(farm, keeper, drained, [f"{recycled} recycles"])
    return _result(farm, "memory_recycling", t0, ok and recycled > 0, "; ".join(notes))


def long_jobs_renewal(farm: ChaosFarm, size: Size) -> Result:
    """Jobs of 2-3x retry_after among short ones: renewal keeps each on its first worker (0
    started twice), while a producer keeps the others busy."""
    rng = random.Random()
    t0 = time.monotonic()
    long_s = farm.retry_after * (2 if size.short else 3)
    long_ids = farm.dispatch(size.workers * 2, seconds=long_s)
    keeper = Keeper(farm, size.workers + 1)
    producer = Producer(farm, size.jobs // 2, rng, pause=0.2)
    producer.start()
    producer.join()
    drained = keeper.run_until(lambda: farm.wait_drained(0.5), DRAIN_TIMEOUT)
    ok, notes = _graceful_verdict(farm, keeper, drained, [f"{len(long_ids)} jobs of {long_s:g} s, retry_after {farm.retry_after:g} s"])
    return _result(farm, "long_jobs_renewal", t0, ok and producer.error is None, "; ".join(notes))


BAD_SHAPE = '{"v": 1, "job": 42, "queue": "default"}'


def _outside_imports(job_id: str) -> str:
    """A wire-format document naming a job outside `imports:` (stored, then failed by the worker)."""
    return json.dumps({"v": 1, "id": job_id, "job": "os:system", "data": {"command": "true"},
                       "queue": "default", "attempts": 0, "tries": 1, "backoff": 0, "timeout": 10,
                       "max_exceptions": None, "retry_until": None,
                       "dispatched_at": "2026-01-01T00:00:00+00:00"})


def poison_mix(farm: ChaosFarm, size: Size) -> Result:
    """Good jobs among poison: raising, timing out, malformed (a bad shape through `farmctl push`,
    refused; an unparsable body written raw; a job outside `imports:`) and jobs that SIGKILL their
    own worker every time. Every poison job ends in the failed table; a killer after at most
    3 deaths of its worker (CRASHES_ALLOWED + 1)."""
    from farm import app
    from farm.drivers.base import Outgoing

    t0 = time.monotonic()
    notes: list[str] = []
    ok = True
    bad = farm.farmctl("push", "--queue", "default", BAD_SHAPE)
    if bad.returncode != 2 or "Traceback" in bad.stderr or farm.pending() != 0:
        ok = False
        notes.append(f"push of a bad shape: exit {bad.returncode}")
    n_bad = max(2, size.jobs // 40)
    good = farm.dispatch(size.jobs - 4 * n_bad, seconds=0.01)
    raising = farm.dispatch(n_bad, kind="raise", tries=2)
    hanging = farm.dispatch(n_bad, kind="ok", seconds=6, timeout=1, tries=2)
    killers = farm.dispatch(n_bad, kind="kill", tries=3)
    raw = [str(uuid.uuid4()) for _ in range(n_bad)]
    app.queue("main").push([Outgoing(i, "default", "{not json " + i, time.time()) for i in raw])
    outside = str(uuid.uuid4())
    pushed = farm.farmctl("push", "--queue", "default", _outside_imports(outside))
    if pushed.returncode != 0:
        ok = False
        notes.append(f"push of a job outside imports: exit {pushed.returncode}")
    poison = set(raising + hanging + killers + raw + [outside])
    keeper = Keeper(farm, size.workers, "--timeout", "30")
    everyone = good + sorted(poison)

    def settled() -> bool:
        return set(good) <= farm.ledger.ended() and poison <= farm.failed_ids(sorted(poison))

    drained = keeper.run_until(settled, 120 if size.short else 240)
    deaths = sum(1 for c in keeper.exits if c == -signal.SIGKILL)
    codes = keeper.stop()
    failed = farm.failed_ids(sorted(poison))
    killers_failed = len(set(killers) & failed)
    # RabbitMQ cannot tell a death from a requeue out of a dead worker's prefetch: one more
    per_killer = CRASHES_ALLOWED + (2 if farm.backend == "rabbitmq" else 1)
    notes.append(f"{len(killers)} killers: {killers_failed} failed after {deaths} worker deaths (bound {per_killer * len(killers)})")
    if deaths > per_killer * len(killers):
        ok = False
    if not drained:
        missing = poison - failed
        notes.append(f"not settled: {len(missing)} poison jobs not failed")
    others = sorted({c for c in codes if c not in (0, -signal.SIGKILL)})
    if others:
        notes.append(f"worker exits {others}")
    t = farm.ledger.tally(good)
    if t.completed_twice or t.started_twice:
        ok = False
    return _result(farm, "poison_mix", t0, ok and drained and not others, "; ".join(notes),
                   failed_ok=tuple(poison & failed), ids=everyone)
