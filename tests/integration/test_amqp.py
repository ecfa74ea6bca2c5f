"""What only RabbitMQ can do to a worker: heartbeats, dropped connections, broker restarts.

The driver contract and the lifecycle tests run on amqp too; these cover the rest.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter

import pika

import farm
from testjobs import Record


def vhost_of(f) -> str:
    return f.queue().params.virtual_host


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def tags(f) -> Counter:
    return Counter(line.split()[0] for line in f.lines())


def stop(p, timeout=30) -> int:
    p.send_signal(signal.SIGTERM)
    return p.wait(timeout)


def test_a_job_far_longer_than_the_heartbeat_keeps_its_connection_and_is_acked_once(make_farm):
    f = make_farm("amqp", heartbeat=2)
    farm.dispatch(Record(str(f.out), "long", seconds=6))
    p = f.worker("--sleep", "0.2")
    f.wait_for(lambda: f.lines(), timeout=20, what="the 6 s job")
    # (a connection the broker had dropped for missed heartbeats during the job fails the ack
    # just made, or the next poll 0.2 s later: the worker says "unavailable", reconnects and is
    # handed the requeued job again)
    time.sleep(2)
    assert stop(p) == 0
    err = p.stderr.read()
    assert "unavailable" not in err and "missed heartbeats" not in err.lower(), err
    assert f.lines(f.tmp / "out.txt.started") == [f.lines()[0]]      # started once, attempt 1
    assert f.lines()[0].split()[:2] == ["long", "1"]
    assert f.queue().counts()["default"]["ready"] == 0                # acked, not requeued


def test_sigkill_mid_job_has_the_message_redelivered_at_once_to_another_worker(make_farm):
    f = make_farm("amqp")
    farm.dispatch(Record(str(f.out), "victim", seconds=1.0))
    a = f.worker("--sleep", "0.1")
    f.wait_for(lambda: f.lines(f.tmp / "out.txt.started"), what="the job to start")
    b = f.worker("--sleep", "0.1")
    f.wait_for(lambda: len(f.store().workers()) == 2, what="the second worker")
    a.send_signal(signal.SIGKILL)
    a.wait(10)
    t = time.monotonic()
    f.wait_for(lambda: f.lines(), timeout=10, what="the redelivered job")
    assert time.monotonic() - t < 3.0, "redelivered when the connection died, not after a timeout"
    assert f.lines()[0].split()[:2] == ["victim", "2"]                # the killed start counted
    assert stop(b) == 0
    assert f.store().failed() == []


def test_dropped_connections_mid_run_make_the_worker_reconnect_and_lose_nothing(make_farm):
    f = make_farm("amqp")
    farm.dispatch_many([Record(str(f.out), f"a{i}", seconds=0.01) for i in range(300)])
    p = f.worker("--sleep", "0.1")
    f.wait_for(lambda: len(f.lines()) >= 50, what="the first jobs")
    rabbitmqctl("close_all_connections", "-p", vhost_of(f), "test drops every connection")
    # the producer's own connection went too: the next dispatch reconnects
    farm.dispatch_many([Record(str(f.out), f"b{i}") for i in range(100)])
    want = {f"a{i}" for i in range(300)} | {f"b{i}" for i in range(100)}
    f.wait_for(lambda: want <= set(tags(f)), timeout=60, what="every job after the reconnect")
    assert p.poll() is None, "the worker went on"
    assert stop(p) == 0
    assert "unavailable" in p.stderr.read()                          # it noticed, and said so
    # at-least-once: only a job finished as its connection died may have run twice
    assert sum(n - 1 for n in tags(f).values()) <= 100


def test_a_broker_restart_while_a_worker_waits_loses_no_queued_job(make_farm):
    f = make_farm("amqp")
    farm.dispatch_many([Record(str(f.out), f"before{i}") for i in range(20)], delay=60)   # not yet ready
    p = f.worker("--sleep", "0.1")
    f.wait_for(lambda: len(f.store().workers()) == 1, what="the worker")
    try:
        rabbitmqctl("stop_app")
        time.sleep(1)
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    farm.dispatch_many([Record(str(f.out), f"after{i}") for i in range(20)])
    f.wait_for(lambda: len(tags(f)) == 20, timeout=60, what="the jobs dispatched after the restart")
    assert p.poll() is None
    assert stop(p) == 0
    counts = f.queue().counts()["default"]
    assert counts["delayed"] == 20, "durable delay queue and persistent messages survived"


def test_a_timeout_past_the_consumer_timeout_is_refused_at_render_time(make_farm):
    f = make_farm("amqp")
    text = f.manifest.read_text() + "pipelines:\n  slow:\n    connection: main\n    timeout: 1790\n"
    f.manifest.write_text(text)
    cp = f.farmctl("render", "--check")
    assert cp.returncode == 2
    assert "consumer_timeout of 1800 s" in cp.stderr and "Traceback" not in cp.stderr
    f.manifest.write_text(text.replace("    heartbeat:", "    consumer_timeout: 7200\n    heartbeat:"))
    cp = f.farmctl("render", "--check")
    assert cp.returncode in (0, 1) and "consumer_timeout" not in cp.stderr    # valid: only out of date
    f.manifest.write_text(text.replace("    timeout: 1790\n", ""))
    cp = f.farmctl("work", "--timeout", "1790")          # a flag cannot get around it either
    assert cp.returncode == 2 and "consumer_timeout of 1800 s" in cp.stderr and "Traceback" not in cp.stderr


def test_a_pika_publish_from_another_program_is_run_and_garbage_is_failed(make_farm):
    f = make_farm("amqp")
    params = pika.URLParameters(f.queue().config.url)
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare("default", durable=True, arguments={"x-queue-version": 2})   # as jobfarm declares it
    ch.confirm_delivery()
    doc = {"v": 1, "id": "from-pika-1", "job": "testjobs:plain", "data": {"path": str(f.out), "word": "pika"}}
    ch.basic_publish("", "default", json.dumps(doc).encode(),
                     pika.BasicProperties(delivery_mode=2, content_type="application/json"))
    ch.basic_publish("", "default", b"\xff not json", pika.BasicProperties(delivery_mode=2, message_id="junk-1"))
    conn.close()
    p = f.worker("--stop-when-empty")
    assert p.wait(30) == 0
    assert f.lines() == ["plain pika"]
    (entry,) = f.store().failed()
    assert entry.id == "junk-1" and "PayloadError" in entry.exception
    assert f.queue().counts()["default"]["ready"] == 0          # failed, not requeued forever


def test_delay_buckets_round_up_by_at_most_five_percent():
    from farm.drivers.amqp import delay_bucket

    for seconds in (0.001, 0.05, 0.25, 1.5, 9.99, 10.0, 61.2, 119.9, 600.5, 3599, 3601, 86400.3):
        ms = delay_bucket(seconds)
        assert ms >= seconds * 1000 and (ms - seconds * 1000) <= max(100, seconds * 1000 * 0.05)
    assert len({delay_bucket(s / 10) for s in range(10, 1000)}) < 200


def test_a_strict_worker_asks_the_broker_instead_of_waiting_blind_for_a_drained_queue(make_farm):
    from farm.drivers.base import Outgoing

    # Given a worker on queues a and b in that order, prefetch one per queue: a has three jobs, b one
    f = make_farm("amqp")
    q = f.queue()
    q.push([Outgoing(id=f"a{i}", queue="a", body="{}", available_at=0) for i in range(3)]
           + [Outgoing(id="b0", queue="b", body="{}", available_at=0)])
    c = q._consumer_for(["a", "b"], 1)
    with c.lock:
        c.connected()
        c.consuming()
        deadline = time.monotonic() + 5
        while not (c.buffers["a"] and c.buffers["b"]) and time.monotonic() < deadline:
            c.pump(0.1)
        # When a's one buffered delivery is taken (two more wait on the broker, held back by
        # the prefetch of one) and acked
        (queue, first), = c.take(1, ["a", "b"], one_queue=True)
        assert queue == "a"
        c.ack(first)
        # Then the broker still has a's, so one is worth waiting for before b's
        assert c._refills("a") or c.buffers["a"]
        got = c.wait_for(1, time.monotonic() + 5, ["a", "b"])
        assert [qn for qn, _ in got] == ["a"]
        for _, d in got:
            c.ack(d)
        got = c.wait_for(1, time.monotonic() + 5, ["a", "b"])
        assert [qn for qn, _ in got] == ["a"]
        c.ack(got[0][1])
        # and once a is drained the broker says so: b's job is handed out without waiting
        assert not c._refills("a") and not c.buffers["a"]
        got = c.wait_for(1, time.monotonic() + 5, ["a", "b"])
        assert [qn for qn, _ in got] == ["b"]
        c.ack(got[0][1])
    q.close()
