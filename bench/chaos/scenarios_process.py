"""Process faults (engineer A): workers killed, stopped, recycled; long jobs; poison jobs.

Every scenario is `(farm: ChaosFarm, size: Size) -> Result`. The harness plays supervisord:
a worker that exits is started again (`Keeper`), so the farm keeps its size.
"""
from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from typing import Callable

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
                and p.pid not in self.signalled]

    def signal(self, p: subprocess.Popen[bytes], sig: int) -> None:
        self.signalled.add(p.pid)
        p.send_signal(sig)

    def stop(self, timeout: float = 60) -> list[int]:
        """TERM each worker once (none twice) and wait; returns the exit codes of this stop."""
        for p in self.workers:
            if p.poll() is None and p.pid not in self.signalled:
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


def _result(farm: ChaosFarm, name: str, t0: float, ok: bool, note: str, allowed: int = 0,
            failed_ok: tuple[str, ...] = (), ids: list[str] | None = None) -> Result:
    t = farm.ledger.tally(farm.dispatched if ids is None else ids, failed_ok)
    ok = ok and t.lost == 0
    if t.lost_ids:
        note = (note + f"; lost e.g. {t.lost_ids[0]}").lstrip("; ")
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
        return _result(farm, name, t0, ok, "; ".join(notes), allowed=inside + after_end)
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
