"""Weighted queues (issue #19): one worker on `critical:6,default:3,low:1` takes from each
non-empty queue in proportion to its weight; a plain list keeps strict priority order.

Each job records its queue as it runs, so the file is the order the worker ran them in.
"""
from __future__ import annotations

import itertools
import json
import signal
from collections import Counter

import pytest

import farm
from conftest import BACKENDS
from testjobs import Record

WEIGHTS = {"critical": 6, "default": 3, "low": 1}
PER_QUEUE = 2000


def fill(f, per_queue: int) -> None:
    for name in WEIGHTS:
        farm.dispatch_many([Record(str(f.out), name) for _ in range(per_queue)], queue=name)


def ran(f) -> list[str]:
    return [line.split()[0] for line in f.lines()]


def while_all_non_empty(order: list[str], per_queue: int) -> list[str]:
    """The jobs run before the first queue ran out (every queue had ready jobs meanwhile)."""
    seen: Counter[str] = Counter()
    for i, name in enumerate(order):
        seen[name] += 1
        if seen[name] == per_queue:
            return order[:i]
    return order


def finished(p, timeout: float = 60) -> int:
    try:
        return p.wait(timeout)
    except Exception:
        p.kill()
        raise AssertionError("the worker did not exit in time:\n" + (p.stderr.read() if p.stderr else ""))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_weighted_worker_takes_each_queue_in_proportion_to_its_weight(make_farm, backend):
    # A claim's size follows its head's weight (critical 100, default 50, low 17 of a batch of
    # 100), so a share is off by at most one claim of its queue: 2,000 jobs a queue keep that
    # within 5%. MariaDB commits each job (about 5 ms here): it gets half the jobs and half
    # the batch, the same precision in a quarter of the time.
    per_queue, flags = (PER_QUEUE // 2, ["--prefetch", "50"]) if backend == "mysql" else (PER_QUEUE, [])
    # Given 2,000 no-op jobs on each of critical, default and low
    f = make_farm(backend)
    fill(f, per_queue)
    # When one worker drains them on critical:6,default:3,low:1
    p = f.worker("--queue", "critical:6,default:3,low:1", "--stop-when-empty", "--log-level", "warning", *flags)
    assert finished(p) == 0, p.stderr.read()
    order = ran(f)
    assert Counter(order) == {name: per_queue for name in WEIGHTS}
    # Then while every queue had jobs, each got its weight's share of them, within 10%
    window = while_all_non_empty(order, per_queue)
    assert len(window) > 1.2 * per_queue, f"critical ran out after {len(window)} jobs"
    shares = {name: n / len(window) for name, n in Counter(window).items()}
    for name, weight in WEIGHTS.items():
        expected = weight / sum(WEIGHTS.values())
        assert abs(shares.get(name, 0) - expected) <= 0.1 * expected, (name, shares, runs(window))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_plain_list_keeps_strict_priority_order(make_farm, backend):
    # Given 200 jobs on each queue
    f = make_farm(backend)
    fill(f, 200)
    # When one worker drains them on critical,default,low
    p = f.worker("--queue", "critical,default,low", "--stop-when-empty", "--log-level", "warning")
    assert finished(p) == 0, p.stderr.read()
    # Then every critical job ran before any default one, and every default before any low one
    # (RabbitMQ: of the messages the worker holds; while its window opens at start, a message
    # the broker has not sent yet can be overtaken, docs/amqp.md: the first three are let be)
    order = ran(f)
    assert Counter(order) == {name: 200 for name in WEIGHTS}
    start = 3 if backend == "amqp" else 0
    rank = list(WEIGHTS).index
    assert order[start:] == sorted(order[start:], key=rank), runs(order)


def runs(order: list[str]) -> list[tuple[str, int]]:
    """`critical critical low` as [("critical", 2), ("low", 1)]: the order, readably."""
    return [(name, len(list(group))) for name, group in itertools.groupby(order)]


PIPELINE = "pipelines:\n  w:\n    queues: {critical: 6, default: 3, low: 1}\n"


def test_a_paused_queue_of_a_weighted_pipeline_is_left_out_and_the_rest_keep_their_ratio(make_farm):
    # Given a weighted pipeline with 400 jobs on each queue, and critical paused
    f = make_farm("sqlite", extra=PIPELINE)
    fill(f, 400)
    f.farmctl("pause", "critical", check=True)
    # When its worker drains what it may take
    p = f.worker("--pipeline", "w", "--stop-when-empty", "--log-level", "warning")
    assert finished(p) == 0, p.stderr.read()
    # Then no critical job ran, and default and low ran 3:1 while both had jobs
    order = ran(f)
    assert Counter(order) == {"default": 400, "low": 400}
    window = while_all_non_empty(order, 400)
    assert abs(Counter(window)["low"] / len(window) - 0.25) <= 0.025, runs(window)


def test_status_shows_a_weighted_workers_queues_as_names_and_its_weights_beside_them(make_farm):
    # Given a worker of a weighted pipeline
    f = make_farm("sqlite", extra=PIPELINE)
    p = f.worker("--pipeline", "w", "--sleep", "0.1", "--log-level", "warning")
    try:
        # When status --json lists it
        def worker():
            doc = json.loads(f.farmctl("status", "--json", check=True).stdout)
            return doc["workers"][0] if doc["workers"] else None
        w = f.wait_for(worker, what="the worker's heartbeat")
        # Then `queues` is the list of names (the contract) and `weights` maps them to weights
        assert w["queues"] == ["critical", "default", "low"]
        assert w["weights"] == WEIGHTS
    finally:
        p.send_signal(signal.SIGTERM)
        assert finished(p) == 0


def test_a_weighted_worker_with_threads_keeps_the_shares(make_farm):
    # Given 2,000 jobs on each queue, When a worker with 8 job threads drains them
    f = make_farm("sqlite")
    fill(f, PER_QUEUE)
    p = f.worker("--queue", "critical:6,default:3,low:1", "--concurrency", "8", "--stop-when-empty",
                 "--log-level", "warning")
    assert finished(p) == 0, p.stderr.read()
    # Then the shares hold too (a claim is the free threads plus a batch, sized by weight)
    window = while_all_non_empty(ran(f), PER_QUEUE)
    for name, n in Counter(window).items():
        expected = WEIGHTS[name] / sum(WEIGHTS.values())
        assert abs(n / len(window) - expected) <= 0.1 * expected, (name, runs(window))


def test_listen_hands_each_child_the_next_order_of_the_rotation(make_farm):
    # Given 4 jobs on a and 2 on b, When `listen --queue a:2,b:1` runs them one child each
    f = make_farm("sqlite")
    farm.dispatch_many([Record(str(f.out), "a") for _ in range(4)], queue="a")
    farm.dispatch_many([Record(str(f.out), "b") for _ in range(2)], queue="b")
    cp = f.farmctl("listen", "--queue", "a:2,b:1", "--stop-when-empty", "--log-level", "warning", timeout=120)
    assert cp.returncode == 0, cp.stderr
    # Then they ran in the rotation's order (each child would take a first if it were strict)
    assert ran(f) == ["a", "b", "a", "a", "b", "a"]
