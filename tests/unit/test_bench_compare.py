"""scripts/bench's comparison: the best peer per figure, its ratio, and what never counts as a peer."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("bench_main", Path(__file__).parents[2] / "bench" / "main.py")
bench_main = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_main)

FIGURES = ("dispatch_per_s", "dispatch_many_per_s", "drain_1_per_s", "drain_2_per_s",
           "latency_p50_ms", "latency_p99_ms", "idle_rss_mb")


def row(system: str, backend: str, value: float, **over: float) -> dict:
    return {"system": system, "backend": backend, **{f: value for f in FIGURES}, **over}


def pick(table: list[dict], backend: str, figure: str) -> dict:
    (found,) = [t for t in table if t["backend"] == backend and t["figure"] == figure]
    return found


def test_rates_compare_against_the_fastest_peer_and_latency_against_the_quickest():
    own = {"amqp": row("jobfarm", "amqp", 10.0)}
    peers = [row("celery", "amqp", 4.0, latency_p50_ms=2.0), row("dramatiq", "amqp", 5.0, latency_p50_ms=20.0)]
    table = bench_main.compare(own, peers)
    drain = pick(table, "amqp", "drain_1_per_s")
    assert (drain["peer"], drain["ratio"]) == ("dramatiq", 2.0)
    p50 = pick(table, "amqp", "latency_p50_ms")
    assert (p50["peer"], p50["ratio"]) == ("celery", 0.2)         # 2 ms against our 10: behind


def test_a_variant_and_a_failed_peer_are_never_the_best_peer():
    own = {"amqp": row("jobfarm", "amqp", 10.0)}
    peers = [row("dramatiq_confirm", "amqp", 1000.0), {"system": "celery", "backend": "amqp", "error": "x"},
             row("dramatiq", "amqp", 5.0)]
    table = bench_main.compare(own, peers)
    assert {t["peer"] for t in table} == {"dramatiq"}


def test_rq_is_set_against_jobfarms_best_backend_per_figure_and_says_so():
    own = {"sqlite": row("jobfarm", "sqlite", 10.0, latency_p50_ms=8.0),
           "amqp": row("jobfarm", "amqp", 20.0, latency_p50_ms=1.0)}
    table = bench_main.compare(own, [row("rq", "redis", 5.0)])
    drain, p50 = pick(table, "redis", "drain_1_per_s"), pick(table, "redis", "latency_p50_ms")
    assert drain["jobfarm"] == 20.0 and "RabbitMQ" in drain["note"]
    assert p50["jobfarm"] == 1.0 and p50["ratio"] == pytest.approx(5.0)
