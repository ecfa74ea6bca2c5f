"""The measurements of scripts/bench --scale (issue 19), one function per section.

Each section takes a `Ctx` (the backend, the counts, where the jobs record) and returns the
figures of one JSON line; it raises harness.Failed when a job was lost or ran twice or a
worker died. Every phase runs on a fresh jobfarm table (database), key prefix (redis) or
queue (amqp), dropped after it, so a phase never sees the jobs of the one before.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import harness
import jobfarm_sys

DELAY = 86400.0                  # the delayed jobs wait a day: they never run during the bench
DELAYED_BASE = 10**8             # their numbers, apart from the ready jobs' 0..n-1


@dataclass(frozen=True)
class Counts:
    backlog: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    backlog_workers: tuple[int, ...] = (1, 2)
    delayed: int = 1_000_000
    ready: int = 10_000
    latency: int = 1_000           # single-job starts per phase: p99 is the tenth slowest, not the second
    queues: tuple[int, ...] = (1, 10, 50)
    queue_jobs: int = 10_000
    idle_workers: tuple[int, ...] = (1, 4, 16, 32)
    idle_seconds: float = 60.0
    idle_jobs: int = 50
    idle_gap: float = 1.1        # seconds between idle-latency jobs: past every poll back-off (1 s)
    rss: int = 1_000_000
    long_jobs: int = 10_000_000
    rss_every: float = 1.0       # seconds between RSS samples
    weight_jobs: int = 10_000    # bench/weights.py: jobs per drain (critical 6, default 3, low 1)
    weight_runs: int = 3         # drains of each kind, strict and weighted in turn (the median)


QUICK = Counts(backlog=(1_000, 10_000, 50_000), delayed=50_000, ready=2_000, latency=60, queue_jobs=2_000,
               idle_seconds=10.0, idle_jobs=20, rss=50_000, long_jobs=200_000, weight_jobs=2_000, weight_runs=1)
TINY = Counts(backlog=(200, 2_000), backlog_workers=(1,), delayed=1_000, ready=200, latency=5, queues=(1, 3),
              queue_jobs=200, idle_workers=(2,), idle_seconds=1.0, idle_jobs=3, idle_gap=0.2, rss=2_000, long_jobs=2_000,
              rss_every=0.02, weight_jobs=300, weight_runs=1)


@dataclass
class Ctx:
    backend: str
    counts: Counts
    tmp: Path
    out: Path
    log: Path
    url: str | None = None                       # a database of the bench's own (idle, PostgreSQL)
    rss: dict[str, Any] = field(default_factory=dict)   # the backlog's RSS samples, for section rss
    made: int = 0
    probe_note: str = ""                          # section idle: what its server counter counts
    probe_unit: str = "-"

    @contextlib.contextmanager
    def fresh(self, url: str | None = None) -> Iterator[jobfarm_sys.Jobfarm]:
        """A jobfarm system on a table/queue of its own, dropped after."""
        self.made += 1
        tmp = self.tmp / f"p{self.made}"
        tmp.mkdir()
        system = jobfarm_sys.Jobfarm(self.backend, tmp, self.out, url=url)
        try:
            yield system
        finally:
            system.close()
            if self.backend == "sqlite":
                for f in tmp.glob("farm.db*"):
                    f.unlink()

    def bench(self, system: Any) -> harness.Bench:
        return harness.Bench(system, self.out, self.log)


def rate(rows: Sequence[tuple[int, float]]) -> float:
    """Jobs per second from the first job's start to the last one's (record.py lines)."""
    times = sorted(t for _, t in rows)
    return (len(times) - 1) / max(times[-1] - times[0], 1e-9)


class RssSampler:
    """RSS of the (one) worker about once a second while it drains: (jobs done, MB)."""

    def __init__(self, every: float = 1.0) -> None:
        self.samples: list[tuple[int, float]] = []
        self.every = every
        self.last = 0.0

    def __call__(self, procs: Sequence[Any], done: int) -> None:
        if time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            try:
                self.samples.append((done, harness.Bench.tree_rss_mb(procs)))
            except Exception:            # the worker exiting between poll() and the sample
                pass

    def figures(self, jobs: int) -> dict[str, Any]:
        after = min(10_000, jobs // 5)
        warm = [mb for done, mb in self.samples if done >= after]
        if not warm:
            return {"rss_jobs": jobs, "rss_samples": len(self.samples)}
        return {"rss_jobs": jobs, "rss_first_after": after, "rss_first_mb": warm[0], "rss_peak_mb": max(warm),
                "rss_last_mb": warm[-1], "rss_growth_mb": max(warm) - warm[0], "rss_samples": len(warm)}


def backlog(ctx: Ctx) -> dict[str, Any]:
    """Drain rate with n jobs queued before the workers start, 1 and 2 workers; the 1-worker
    drain of the largest backlog also samples the worker's RSS (section rss reuses it)."""
    points = []
    for workers in ctx.counts.backlog_workers:
        for n in ctx.counts.backlog:
            with ctx.fresh() as system:
                b = ctx.bench(system)
                b.fill(n, chunk=10_000)
                sampler = RssSampler(ctx.counts.rss_every) if workers == 1 and n == max(ctx.counts.backlog) else None
                rows = b._drain(list(range(n)), workers, sampler)
                points.append({"jobs": n, "workers": workers, "per_s": rate(rows)})
                if sampler:
                    ctx.rss = {**sampler.figures(n), "rss_from": f"section backlog's 1-worker drain of {n:,} jobs"}
    fig: dict[str, Any] = {"points": points, "exactly_once": True}
    for workers in ctx.counts.backlog_workers:
        mine = [p for p in points if p["workers"] == workers]
        fig[f"ratio_{workers}w"] = mine[-1]["per_s"] / mine[0]["per_s"]
    return fig


def delayed(ctx: Ctx) -> dict[str, Any]:
    """10k ready jobs alone, then behind 1M delayed ones: 1-worker drain rate and the claim
    latency of single jobs on an idle worker (harness latency) in each."""
    c = ctx.counts
    fig: dict[str, Any] = {"ready": c.ready, "delayed": c.delayed, "exactly_once": True}
    for phase, behind in (("none", 0), ("behind", c.delayed)):
        with ctx.fresh() as system:
            b = ctx.bench(system)
            for i in range(0, behind, 10_000):
                system.dispatch_many("tick", range(DELAYED_BASE + i, DELAYED_BASE + min(behind, i + 10_000)),
                                     delay=DELAY)
            b.fill(c.ready, chunk=10_000)
            fig[f"{phase}_per_s"] = rate(b._drain(list(range(c.ready)), 1))
            p50, p99, _ = b.latency(c.latency)
            fig[f"{phase}_p50_ms"], fig[f"{phase}_p99_ms"] = p50, p99
    fig["rate_ratio"] = fig["behind_per_s"] / fig["none_per_s"]
    fig["p50_ratio"] = fig["behind_p50_ms"] / fig["none_p50_ms"]
    fig["p99_ratio"] = fig["behind_p99_ms"] / fig["none_p99_ms"]
    return fig


def queues(ctx: Ctx) -> dict[str, Any]:
    """One worker on 1, 10, 50 queues in priority order: the jobs spread evenly, or all on the
    last queue; 1-worker drain rate of each."""
    c = ctx.counts
    points = []
    for nq in c.queues:
        for where in ("spread", "last") if nq > 1 else ("spread",):
            with ctx.fresh() as system:
                system.queues = [f"{system.queue}_{i}" for i in range(nq)]
                n = c.queue_jobs
                if where == "last":
                    ctx.bench(system).fill(n, chunk=10_000, queue=system.queues[-1])
                else:
                    for k, q in enumerate(system.queues):
                        ns = list(range(k, n, nq))
                        for i in range(0, len(ns), 10_000):
                            system.dispatch_many("tick", ns[i:i + 10_000], queue=q)
                rows = ctx.bench(system)._drain(list(range(n)), 1)
                points.append({"queues": nq, "where": where, "per_s": rate(rows)})
    one = points[0]["per_s"]
    most = max(c.queues)
    fig: dict[str, Any] = {"jobs": c.queue_jobs, "points": points, "exactly_once": True}
    for where in ("spread", "last"):
        at = [p for p in points if p["queues"] == most and p["where"] == where]
        if at and most > 1:
            fig[f"ratio_{where}"] = at[0]["per_s"] / one
    return fig


def rss(ctx: Ctx) -> dict[str, Any]:
    """One worker's RSS over many jobs: the backlog's samples if it ran, else a drain of its own."""
    if ctx.rss:
        return {**ctx.rss, "exactly_once": True}
    n = ctx.counts.rss
    with ctx.fresh() as system:
        b = ctx.bench(system)
        b.fill(n, chunk=10_000)
        sampler = RssSampler(ctx.counts.rss_every)
        b._drain(list(range(n)), 1, sampler)
    return {**sampler.figures(n), "rss_from": f"a 1-worker drain of {n:,} jobs", "exactly_once": True}
