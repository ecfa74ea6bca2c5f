"""Issue "Hardening", AMQP part: real workers against the real RabbitMQ.

A closed channel or connection (or a deleted queue) is noticed and deliveries held from
before it never run;
prefetch follows how long jobs take; a paused worker stops consuming; a job that kills its
worker is failed after a few deaths; dispatch raises only jobfarm's errors; a body that is not
UTF-8 is failed with its reason.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter

import pika
import pytest

import farm
from testjobs import ClosesItsChannel, KillsItsWorker, Record


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def broker(f) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(f.queue().config.url))


def ready_and_consumers(f, queue: str = "default") -> tuple[int, int]:
    """The broker's own count of ready messages and consumers (a passive declare)."""
    conn = broker(f)
    try:
        m = conn.channel().queue_declare(queue, durable=True, passive=True).method
        return m.message_count, m.consumer_count
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code == 404:
            return 0, 0
        raise
    finally:
        if conn.is_open:
            conn.close()


def runs(f) -> Counter:
    return Counter(line.split()[0] for line in f.lines())


def stop(p, timeout: float = 30) -> tuple[int, str]:
    p.send_signal(signal.SIGTERM)
    code = p.wait(timeout)
    return code, p.stderr.read()


def hold_a_batch(f, p, jobs) -> None:
    """Have worker `p` claim `jobs` as one batch: warm it up on quick jobs (its batch grows),
    pause it, dispatch, resume: it finds them all waiting and claims them together."""
    warm = f.tmp / "warm.txt"
    farm.dispatch_many([Record(str(warm), f"warm{i}") for i in range(30)])
    f.wait_for(lambda: len(f.lines(warm)) == 30, what="the warm-up jobs")
    p.send_signal(signal.SIGUSR2)
    # the loop looks at the pause flag at least once a second; once it has, it cancels its consumer
    f.wait_for(lambda: ready_and_consumers(f)[1] == 0, timeout=10, what="the paused worker to cancel its consumer")
    farm.dispatch_many(jobs)
    p.send_signal(signal.SIGCONT)


def test_hardening_a_channel_the_broker_closes_is_noticed_and_the_jobs_held_with_it_never_run_stale(make_farm):
    # Given a worker holding a batch whose first job has the broker close the consuming channel
    # (PRECONDITION_FAILED, as consumer_timeout would) while the connection stays open
    f = make_farm("amqp")
    p = f.worker("--sleep", "0.1")
    held = [Record(str(f.out), f"held{i}") for i in range(10)]
    hold_a_batch(f, p, [ClosesItsChannel(str(f.out), "closer")] + held)
    # When the worker goes on
    want = {f"held{i}" for i in range(10)} | {"closer"}
    f.wait_for(lambda: want <= set(runs(f)) and runs(f)["closer"] == 2, timeout=30,
               what="every job, after the worker reconnected")
    time.sleep(1.0)                     # a stale run would show up by now
    # Then it noticed and reconnected; the held jobs ran once each (the broker's requeued
    # copies), never from the dead channel; the closer's ack was lost with its channel, so the
    # broker handed it out again (at-least-once)
    assert p.poll() is None
    code, err = stop(p)
    assert code == 0
    assert "PRECONDITION_FAILED" in err and "job.stale" in err, err
    assert {tag: n for tag, n in runs(f).items() if tag.startswith("held")} == {f"held{i}": 1 for i in range(10)}
    assert ready_and_consumers(f) == (0, 0)
    assert f.store().failed() == []


def test_hardening_jobs_held_when_the_connection_drops_are_dropped_not_run(make_farm):
    # Given a worker running the first job of a batch it holds
    f = make_farm("amqp")
    p = f.worker("--sleep", "0.1")
    held = [Record(str(f.out), f"held{i}") for i in range(10)]
    hold_a_batch(f, p, [Record(str(f.out), "long", seconds=1.5)] + held)
    f.wait_for(lambda: f.lines(f.tmp / "out.txt.started"), what="the long job to start")
    # When the broker closes its connections
    rabbitmqctl("close_all_connections", "-p", f.queue().params.virtual_host, "test: connection case")
    want = {f"held{i}" for i in range(10)} | {"long"}
    f.wait_for(lambda: want <= set(runs(f)) and runs(f)["long"] == 2, timeout=30, what="every job")
    time.sleep(1.0)
    # Then the held jobs ran once each; only the job running as the connection died ran again
    code, err = stop(p)
    assert code == 0 and "job.stale" in err, err
    assert {tag: n for tag, n in runs(f).items() if tag.startswith("held")} == {f"held{i}": 1 for i in range(10)}


def test_hardening_a_queue_deleted_under_a_consuming_worker_is_declared_and_consumed_again(make_farm):
    # Given a consuming worker
    f = make_farm("amqp")
    p = f.worker("--sleep", "0.1")
    f.wait_for(lambda: ready_and_consumers(f)[1] == 1, what="the worker to consume")
    # When its queue is deleted (the broker cancels the consumer; the connection stays open)
    conn = broker(f)
    conn.channel().queue_delete("default")
    conn.close()
    # Then the worker notices, declares it again and consumes it
    f.wait_for(lambda: ready_and_consumers(f)[1] == 1, timeout=10, what="the worker to consume again")
    farm.dispatch(Record(str(f.out), "after-delete"))
    f.wait_for(lambda: f.lines(), what="the job dispatched after")
    code, err = stop(p)
    assert code == 0 and "ConsumerCancelled" in err, err


def test_hardening_two_workers_share_a_handful_of_long_jobs(make_farm):
    # Given four jobs of 1.5 s each waiting
    f = make_farm("amqp")
    farm.dispatch_many([Record(str(f.out), f"long{i}", seconds=1.5) for i in range(4)])
    # When two workers start together
    a, b = f.worker("--sleep", "0.1"), f.worker("--sleep", "0.1")
    f.wait_for(lambda: len(f.lines()) == 4, timeout=30, what="the four long jobs")
    # Then both ran some: a worker prefetches one long job, not all of them
    by_pid = Counter(line.split()[2] for line in f.lines())
    assert set(by_pid) == {str(a.pid), str(b.pid)}, by_pid
    assert stop(a)[0] == 0 and stop(b)[0] == 0
    assert sorted(runs(f)) == [f"long{i}" for i in range(4)] and set(runs(f).values()) == {1}


def test_hardening_a_lower_batch_hands_back_what_the_consumer_prefetched_beyond_it(make_farm):
    # Given a consumer that prefetched a batch of 10 (one taken, five more buffered)
    f = make_farm("amqp")
    q = f.queue()
    q.push([_outgoing()])
    (first,) = q.reserve(["default"], 10, 2.0)
    q.push([_outgoing() for _ in range(5)])
    f.wait_for(lambda: len(q._consumer.buffers["default"]) == 5, what="the five to be prefetched")
    q.ack(first)
    # When the worker asks for one job at a time
    (one,) = q.reserve(["default"], 1, 1.0)
    # Then the four it does not take are ready for others, unstarted (no attempt used)
    assert ready_and_consumers(f)[0] == 4
    assert one.attempts == 1
    q.ack(one)
    q.close()


def test_hardening_a_prefetched_job_waits_no_longer_than_half_the_consumer_timeout(make_farm):
    # Given a consumer whose buffered deliveries may wait 0.5 s, busy with a job it holds
    f = make_farm("amqp")
    q = f.queue()
    q.buffer_wait = 0.5
    q.push([_outgoing()])
    (running,) = q.reserve(["default"], 10, 2.0)
    # When more jobs arrive and wait in its buffer while the job runs
    q.push([_outgoing() for _ in range(3)])
    # Then they go back to the queue, ready for others, before the broker's consumer_timeout
    f.wait_for(lambda: ready_and_consumers(f)[0] == 3, timeout=5, what="the buffered jobs handed back")
    q.ack(running)
    got: list = []
    f.wait_for(lambda: got.extend(q.reserve(["default"], 10, 0.5)) or len(got) >= 3, timeout=15,
               what="the three jobs handed back")           # they may come in more than one batch
    assert [r.attempts for r in got] == [1, 1, 1]
    q.close()


def test_hardening_a_paused_worker_stops_consuming_and_sigcont_resumes(make_farm):
    # Given a consuming worker
    f = make_farm("amqp")
    a = f.worker("--sleep", "0.1")
    f.wait_for(lambda: ready_and_consumers(f)[1] == 1, what="the worker to consume")
    # When it is paused
    a.send_signal(signal.SIGUSR2)
    f.wait_for(lambda: ready_and_consumers(f)[1] == 0, timeout=5, what="the paused worker to cancel its consumer")
    farm.dispatch(Record(str(f.out), "while-paused"))
    time.sleep(1.0)
    # Then a job dispatched meanwhile stays ready, and another worker takes it
    assert ready_and_consumers(f) == (1, 0)
    b = f.worker("--sleep", "0.1")
    f.wait_for(lambda: f.lines(), what="the second worker to take the job")
    assert f.lines() == [f"while-paused 1 {b.pid}"]
    assert stop(b)[0] == 0
    # And SIGCONT has the first one consume again
    a.send_signal(signal.SIGCONT)
    f.wait_for(lambda: ready_and_consumers(f)[1] == 1, timeout=5, what="the resumed worker to consume")
    farm.dispatch(Record(str(f.out), "after-resume"))
    f.wait_for(lambda: len(f.lines()) == 2, what="the resumed worker to run a job")
    assert f.lines()[1] == f"after-resume 1 {a.pid}"
    assert stop(a)[0] == 0


def test_hardening_a_job_that_kills_its_worker_every_time_is_failed_after_a_few_deaths(make_farm):
    # Given a job that SIGKILLs whatever worker runs it
    f = make_farm("amqp")
    jid = farm.dispatch(KillsItsWorker(str(f.out)))
    # When workers keep being started for it, as supervisord would
    deaths = 0
    for _ in range(8):
        p = f.worker("--stop-when-empty")
        code = p.wait(30)
        if code != -signal.SIGKILL:
            assert code == 0, p.stderr.read()
            break
        deaths += 1
    # Then after a few deaths it is failed, saying why, and no longer handed out
    assert 1 <= deaths <= 4, f"{deaths} workers died"
    (entry,) = f.store().failed()
    assert entry.id == jid and "died" in entry.exception.splitlines()[0], entry.exception
    assert ready_and_consumers(f) == (0, 0)
    assert not any(f.store().stamps("amqp-deaths:").values())     # its count is forgotten with it


def test_hardening_dispatch_raises_a_farm_error_not_a_pika_one_when_the_broker_refuses(make_farm):
    # Given a queue the broker will not let jobfarm use (another connection holds it exclusively)
    f = make_farm("amqp")
    other = broker(f)
    other.channel().queue_declare("default", exclusive=True)
    try:
        # When a job is dispatched to it, in this process and through farmctl
        with pytest.raises(farm.FarmError) as raised:
            farm.dispatch(Record(str(f.out), "refused"))
        doc = {"v": 1, "id": "refused-1", "job": "testjobs:plain", "data": {"path": str(f.out), "word": "x"}}
        cp = f.farmctl("push", json.dumps(doc))
    finally:
        other.close()
    # Then it is jobfarm's error, saying what the broker said, with no traceback
    assert "RESOURCE_LOCKED" in str(raised.value), raised.value
    assert cp.returncode == 1 and "RESOURCE_LOCKED" in cp.stderr and "Traceback" not in cp.stderr, cp.stderr
    # and a missing queue still counts as empty
    assert f.queue().clear("no-such-queue") == 0
    assert f.queue()._message_count("no-such-queue") == 0
    farm.dispatch(Record(str(f.out), "accepted"))           # the queue is free again: published
    assert ready_and_consumers(f)[0] == 1


def test_hardening_a_body_that_is_not_utf8_is_failed_with_its_reason_and_the_worker_goes_on(make_farm):
    # Given raw bytes that are not UTF-8 on the queue, then a good job
    f = make_farm("amqp")
    conn = broker(f)
    ch = conn.channel()
    ch.queue_declare("default", durable=True, arguments={"x-queue-version": 2})
    ch.confirm_delivery()
    ch.basic_publish("", "default", b"\xff\xfe{", pika.BasicProperties(delivery_mode=2, message_id="bytes-1"))
    conn.close()
    farm.dispatch(Record(str(f.out), "after"))
    # When a worker drains the queue
    cp = f.farmctl("work", "--stop-when-empty")
    # Then the bytes are one failed entry whose reason is one line saying why, with the bytes
    # kept as they came (escaped), and the next job ran
    assert cp.returncode == 0, cp.stderr
    (entry,) = f.store().failed()
    first, *rest = entry.exception.splitlines()
    assert entry.id == "bytes-1" and first.startswith("PayloadError") and "decode" in first and rest == []
    assert entry.body == "\\xff\\xfe{"
    assert runs(f) == {"after": 1}
    assert ready_and_consumers(f) == (0, 0)


def _outgoing():
    import uuid

    from farm.drivers.base import Outgoing

    jid = str(uuid.uuid4())
    body = json.dumps({"v": 1, "id": jid, "job": "testjobs:Noop", "data": {}, "queue": "default", "attempts": 0})
    return Outgoing(id=jid, queue="default", body=body, available_at=time.time())
