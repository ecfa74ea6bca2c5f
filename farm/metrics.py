"""The farm's metrics in Prometheus' text format, read from the queues and the stores.

One scrape sees the whole farm: queue gauges come from each connection's `counts()`, job
counters and durations from the totals the workers add to their stores (farm/counts.py),
worker gauges from the heartbeats. Nothing is kept in this process between scrapes.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from . import app
from .manifest import Manifest

NAMES = ("farm_queue_jobs", "farm_jobs_total", "farm_job_duration_seconds", "farm_workers")   # what a scrape holds
STATES = ("ready", "delayed", "reserved", "failed")
WORKER_STATES = ("idle", "busy", "paused")
LIVE_FOR = 20.0     # seconds: a worker silent longer (4 missed beats) is not counted as live


def render(manifest: Manifest, now: float | None = None) -> bytes:
    """The text a scrape of `/metrics` returns (`now`: the clock, for tests)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FarmCollector(manifest, now))
    return generate_latest(registry)


class FarmCollector(Collector):
    def __init__(self, manifest: Manifest, now: float | None = None) -> None:
        self.manifest = manifest
        self.now = now

    def collect(self) -> Iterator[Metric]:
        stores = _stores(self.manifest)
        yield _queue_jobs(self.manifest)
        yield from _job_totals(stores)
        yield _workers(self.manifest, stores, time.time() if self.now is None else self.now)


def _stores(m: Manifest) -> list[Any]:
    """Every store once (an amqp connection's `store:` may be another connection's queue)."""
    seen: dict[int, Any] = {}
    for name, conn in m.connections.items():
        if conn.driver in ("database", "redis") or (conn.driver == "amqp" and conn.store):
            s = app.store(name)
            seen.setdefault(id(s), s)
    return list(seen.values())


def _queue_jobs(m: Manifest) -> Metric:
    """Every queue of every connection, each state, zeros included. amqp cannot count the
    jobs its workers hold (None): that gauge is left out rather than exported as a false 0."""
    g = GaugeMetricFamily("farm_queue_jobs", "Jobs per queue and state.", labels=["connection", "queue", "state"])
    for name, conn in m.connections.items():
        if conn.driver in ("sync", "async"):
            continue
        counts = app.queue(name).counts()
        queues = set(counts) | {q for p in m.pipelines.values() if p.connection == name for q in p.queues}
        for queue in sorted(queues):
            c = counts.get(queue, {})
            for state in STATES:
                value = c.get(state, 0)
                if value is not None:
                    g.add_metric([name, queue, state], value)
    return g


def _job_totals(stores: list[Any]) -> Iterator[Metric]:
    total = CounterMetricFamily("farm_jobs_total", "Attempts settled, per queue, job and outcome.",
                                labels=["queue", "job", "outcome"])
    hist = HistogramMetricFamily("farm_job_duration_seconds", "How long attempts ran, per queue, job and outcome.",
                                 labels=["queue", "job", "outcome"])
    summed: dict[tuple[str, str, str], dict[str, Any]] = {}
    for s in stores:
        for t in s.job_totals():
            key = (t["queue"], t["job"], t["outcome"])
            acc = summed.setdefault(key, {"n": 0, "seconds": 0.0, "buckets": {}})
            acc["n"] += t["n"]
            acc["seconds"] += t["seconds"]
            for le, n in t["buckets"].items():
                acc["buckets"][le] = acc["buckets"].get(le, 0) + n
    for key, acc in sorted(summed.items()):
        total.add_metric(list(key), acc["n"])
        hist.add_metric(list(key), buckets=list(acc["buckets"].items()), sum_value=acc["seconds"])
    yield total
    yield hist


def _workers(m: Manifest, stores: list[Any], now: float) -> Metric:
    """Live workers per pipeline and state; every pipeline of the manifest, zeros included, so
    an alert can see a pipeline with none. A worker run without --pipeline counts under ""."""
    counts = {(p, st): 0 for p, pipe in m.pipelines.items() if not pipe.drain for st in WORKER_STATES}
    for s in stores:
        for w in s.workers():
            if now - float(w.get("heartbeat") or 0) > LIVE_FOR:
                continue
            key = (w.get("pipeline") or "", w.get("state") or "idle")
            counts[key] = counts.get(key, 0) + 1
    g = GaugeMetricFamily("farm_workers", "Live workers (a heartbeat in the last 20 s) per pipeline and state.",
                          labels=["pipeline", "state"])
    for (pipeline, state), n in sorted(counts.items()):
        g.add_metric([pipeline, state], n)
    return g

