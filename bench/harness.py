"""The measurements, written once for every system: jobfarm and each peer go through this file.

A system (see `System`) only says how to enqueue one job, how to enqueue many with its bulk
API, and which command starts one worker; this file times those calls, starts the workers,
and reads the completion signal of `record.py`. Every figure comes with an exactly-once check.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import psutil

HERE = Path(__file__).resolve().parent


class System(Protocol):
    name: str                      # "jobfarm", "celery", ...
    backend: str                   # "sqlite", "postgresql", "mysql", "amqp", "redis"
    how: str                       # one line: how its workers are run (for the README)
    env: dict[str, str]            # environment for its worker processes

    def reset(self) -> None: ...                              # empty queue, before each phase
    def worker_commands(self, workers: int) -> list[list[str]]: ...   # argv of each process to start
    def dispatch(self, kind: str, n: int) -> None: ...        # one job; kind is "tick" or "stamp"
    def dispatch_many(self, kind: str, ns: Sequence[int]) -> None: ...   # its bulk API
    def close(self) -> None: ...


def worker_env(out: Path, *paths: str, **values: str) -> dict[str, str]:
    """The environment of a system's workers: bench/ and bench/systems importable, BENCH_OUT set.

    `values` are set in this process too, since the systems' app modules read them at import.
    """
    values = {"BENCH_OUT": str(out), **values}
    os.environ.update(values)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE / "systems"), *paths]))


class Flags:
    """A system whose worker commands carry extra `farmctl work` flags."""

    def __init__(self, system: Any, *flags: str) -> None:
        self.system = system
        self.flags = list(flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.system, name)

    def worker_commands(self, workers: int) -> list[list[str]]:
        return [argv + self.flags for argv in self.system.worker_commands(workers)]


class Failed(Exception):
    """A run that lost or repeated a job, or whose workers died: its figures are not printed."""


@dataclass(frozen=True)
class Counts:
    dispatch: int = 2000
    dispatch_many: int = 20000
    drain: int = 10000
    latency: int = 200
    soak: int = 100000


QUICK = Counts(dispatch=300, dispatch_many=2000, drain=2000, latency=60, soak=0)


class Records:
    """The lines jobs wrote under one directory.

    `count` reads only what was appended since its last call, so waiting on a million jobs
    does not read every line again twenty times a second (that CPU would slow the drain).
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self._seen: dict[Path, tuple[int, int]] = {}      # file -> (bytes read, lines in them)

    def clear(self) -> None:
        for f in self.out.glob("*.txt"):
            f.unlink()
        self._seen.clear()

    def count(self) -> int:
        total = 0
        for f in self.out.glob("*.txt"):
            offset, lines = self._seen.get(f, (0, 0))
            with f.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            end = chunk.rfind(b"\n") + 1           # a line half written is counted next time
            offset, lines = offset + end, lines + chunk.count(b"\n", 0, end)
            self._seen[f] = (offset, lines)
            total += lines
        return total

    def read(self) -> list[tuple[int, float]]:
        rows = []
        for f in self.out.glob("*.txt"):
            for line in f.read_text().splitlines():
                n, t = line.split()
                rows.append((int(n), float(t)))
        return rows

    def wait(self, n: int, seconds: float, workers: Sequence[subprocess.Popen[bytes]] = (),
             watch: Callable[[int], None] | None = None) -> None:
        """Until n lines are written; `watch(done)` is called on each look (an RSS sampler)."""
        deadline = time.monotonic() + seconds
        while (done := self.count()) < n:
            dead = [w for w in workers if w.poll() is not None]
            if dead:
                raise Failed(f"a worker exited with status {dead[0].returncode} before the jobs ran")
            if time.monotonic() > deadline:
                raise Failed(f"only {done} of {n} jobs ran within {seconds:.0f} s")
            if watch:
                watch(done)
            time.sleep(0.05)


class Bench:
    def __init__(self, system: System, out: Path, log: Path) -> None:
        self.system = system
        self.records = Records(out)
        self.log = log

    # -- workers -----------------------------------------------------------------------
    def start(self, workers: int) -> list[subprocess.Popen[bytes]]:
        logf = self.log.open("ab")
        return [subprocess.Popen(argv, env=self.system.env, cwd=self.records.out.parent, stdout=logf,
                                 stderr=logf, start_new_session=True)
                for argv in self.system.worker_commands(workers)]

    @staticmethod
    def stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
        """SIGTERM (a graceful stop for each of these CLIs), SIGKILL the group after 20 s."""
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)     # pool children and work horses too
            except (ProcessLookupError, PermissionError):
                pass
            p.wait()

    @staticmethod
    def tree_rss_mb(procs: Sequence[subprocess.Popen[bytes]]) -> float:
        total = 0
        for p in procs:
            root = psutil.Process(p.pid)
            for proc in [root, *root.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
        return total / 1048576

    def exactly_once(self, expect: Sequence[int]) -> list[tuple[int, float]]:
        rows = self.records.read()
        counts = Counter(n for n, _ in rows)
        missing = [n for n in expect if n not in counts]
        twice = sum(1 for v in counts.values() if v > 1)
        if missing or twice or len(counts) != len(expect):
            raise Failed(f"{self.system.name}/{self.system.backend}: exactly-once check failed: "
                         f"{len(missing)} missing, {twice} ran twice, {len(counts)} distinct of {len(expect)}")
        return rows

    # -- the measurements ----------------------------------------------------------------
    def _rate(self, n: int, send: Callable[[], None]) -> float:
        t = time.perf_counter()
        send()
        return n / (time.perf_counter() - t)

    def dispatch_rate(self, n: int) -> float:
        """Single dispatches, one after the other from one process; then drained and checked."""
        s = self.system
        s.reset()
        s.dispatch("tick", -1)                  # connect, declare the queue, warm caches
        rate = self._rate(n, lambda: [s.dispatch("tick", i) for i in range(n)])
        self._drain(list(range(-1, n)), workers=2)
        return rate

    def dispatch_many_rate(self, n: int) -> float:
        """The bulk API in chunks of 1,000; then drained and checked."""
        s = self.system
        s.reset()
        s.dispatch("tick", -1)
        rate = self._rate(n, lambda: [s.dispatch_many("tick", range(i, min(n, i + 1000)))
                                      for i in range(0, n, 1000)])
        self._drain(list(range(-1, n)), workers=2)
        return rate

    def fill(self, n: int, chunk: int = 1000, **how: Any) -> None:
        """n jobs numbered 0..n-1 through the bulk API in chunks (`how`: jobfarm's queue, delay)."""
        for i in range(0, n, chunk):
            self.system.dispatch_many("tick", range(i, min(n, i + chunk)), **how)

    def drain_rate(self, n: int, workers: int) -> float:
        """n queued no-op jobs, `workers` processes: jobs per second from the first start to the last.

        Process start-up is left out for every system alike (Celery's takes seconds): the clock
        runs from the first job's start to the last one's, both written by the jobs themselves.
        """
        s = self.system
        s.reset()
        for i in range(0, n, 1000):
            s.dispatch_many("tick", range(i, min(n, i + 1000)))
        rows = self._drain(list(range(n)), workers)
        times = sorted(t for _, t in rows)
        return (n - 1) / max(times[-1] - times[0], 1e-9)

    def _drain(self, expect: list[int], workers: int,
               watch: Callable[[Sequence[subprocess.Popen[bytes]], int], None] | None = None
               ) -> list[tuple[int, float]]:
        """Start `workers`, wait for every job of `expect`, stop them, check exactly-once.
        `watch(procs, done)` is called while they run (at least 500 jobs/s are waited for)."""
        self.records.clear()
        procs = self.start(workers)
        try:
            self.records.wait(len(expect), max(900, len(expect) / 500), procs,
                              (lambda done: watch(procs, done)) if watch else None)
            time.sleep(0.3)                      # a job run twice would show up now
        finally:
            self.stop(procs)
        return self.exactly_once(expect)

    def latency(self, n: int) -> tuple[float, float, float]:
        """p50 and p99 ms from dispatch to job start on an idle worker, and that worker's RSS in MB."""
        s = self.system
        s.reset()
        self.records.clear()
        procs = self.start(1)
        try:
            s.dispatch("stamp", -1)              # the worker is up once this one ran
            self.records.wait(1, 120, procs)
            time.sleep(1.5)                      # idle now
            rss = self.tree_rss_mb(procs)
            sent: dict[int, float] = {}
            for i in range(n):
                sent[i] = time.time()
                s.dispatch("stamp", i)
                time.sleep(0.02)
            self.records.wait(n + 1, 60, procs)
        finally:
            self.stop(procs)
        rows = self.exactly_once(list(range(-1, n)))
        lat = sorted((t - sent[i]) * 1000 for i, t in rows if i >= 0)
        return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))], rss

    def soak(self, n: int) -> tuple[float, float]:
        """One worker through n jobs: its RSS after the first tenth, and the most it reached after."""
        s = self.system
        s.reset()
        for i in range(0, n, 1000):
            s.dispatch_many("tick", range(i, min(n, i + 1000)))
        self.records.clear()
        procs = self.start(1)
        samples: list[tuple[int, float]] = []
        try:
            deadline = time.monotonic() + 1200
            while (done := self.records.count()) < n:
                if procs[0].poll() is not None or time.monotonic() > deadline:
                    raise Failed(f"soak: {done} of {n} jobs ran")
                samples.append((done, self.tree_rss_mb(procs)))
                time.sleep(0.25)
        finally:
            self.stop(procs)
        self.exactly_once(list(range(n)))
        warm = [rss for done, rss in samples if done >= n // 10]
        return (warm[0], max(warm)) if warm else (0.0, 0.0)


def measure(system: System, counts: Counts, out: Path, log: Path) -> dict[str, float | str]:
    """Every figure of one system on one backend."""
    b = Bench(system, out, log)
    fig: dict[str, float | str] = {"how": system.how}
    fig["dispatch_per_s"] = b.dispatch_rate(counts.dispatch)
    fig["dispatch_many_per_s"] = b.dispatch_many_rate(counts.dispatch_many)
    fig["drain_1_per_s"] = b.drain_rate(counts.drain, 1)
    fig["drain_2_per_s"] = b.drain_rate(counts.drain, 2)
    p50, p99, rss = b.latency(counts.latency)
    fig.update(latency_p50_ms=p50, latency_p99_ms=p99, idle_rss_mb=rss)
    if counts.soak:
        first, peak = b.soak(counts.soak)
        fig.update(soak_jobs=counts.soak, soak_rss_first_mb=first, soak_rss_peak_mb=peak)
    return fig


def jobfarm_figure(name: str, measure: Callable[..., dict], doc: str | None = None) -> int:
    """The `main` of a jobfarm-only figure (bench/concurrency.py, bench/workflows.py): parse
    --backend and --quick, make the jobfarm system in a temp dir, call
    `measure(system, quick, tmp, out, log)`, print one JSON line; 1 if the run failed."""
    import argparse
    import json
    import shutil
    import tempfile

    import jobfarm_sys

    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    out = tmp / "out"
    out.mkdir()
    log = tmp / "workers.log"
    row = {"system": "jobfarm", "backend": args.backend, "quick": args.quick, "time": time.time()}
    system = jobfarm_sys.make(args.backend, tmp, out)
    try:
        row.update(measure(system, args.quick, tmp, out, log))
    except Failed as e:
        row.update(error=str(e), log_tail=log.read_text(errors="replace")[-2000:] if log.exists() else "")
    finally:
        system.close()
    print(json.dumps(row))
    if "error" in row:
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def split_failed(rows: list[dict], labels: dict[str, str]) -> list[dict]:
    """Print the runs that failed (one line each); the rows that did not."""
    for r in [r for r in rows if "error" in r]:
        print(f"\n{labels[r['backend']]:12} FAILED: {r['error']}")
    return [r for r in rows if "error" not in r]
