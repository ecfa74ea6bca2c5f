"""Real `farmctl work` processes, real signals, real servers.

Times are taken from what the worker records (a job's start line, the `worker.start` log
line), never from before `Popen`, so interpreter start-up is not measured. A bound that is
not the contract's own gets three times what an idle machine needs (two shared cores).
"""
from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from collections import Counter

import pytest

import farm
from conftest import BACKENDS, LEASE_BACKENDS, pg_conninfo
from testjobs import Flaky, GivesUp, Hog, Record, Releaser, Stuck, Swallower, Timed, TimedFlaky

EPS = 0.05          # a clock read a moment before or after the worker's own


def finished(p, timeout=30):
    try:
        return p.wait(timeout)
    except Exception:
        p.kill()
        raise AssertionError("the worker did not exit in time:\n" + (p.stderr.read() if p.stderr else ""))


def logged(err: str, event: str) -> dict:
    """The first `event` in a worker's `--log-format json` output."""
    for line in err.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("event") == event:
            return doc
    raise AssertionError(f"no {event} in the worker's log:\n{err}")


def times(lines: list[str]) -> list[float]:
    """The time each `Timed` / `TimedFlaky` line ends with."""
    return [float(line.split()[-1]) for line in lines]


def beating(f, n: int = 1, timeout: float = 20) -> list[dict]:
    """Wait until `n` workers have sent a heartbeat (the first comes within a tick of start)."""
    return f.wait_for(lambda: len(f.store().workers()) >= n and f.store().workers(), timeout=timeout,
                      what=f"{n} worker heartbeat(s)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_mid_job_lets_the_job_finish_and_exits_0(make_farm, backend):
    # Given a worker running a slow job, another job waiting
    f = make_farm(backend)
    farm.dispatch(Record(str(f.out), "slow", seconds=1.5))
    farm.dispatch(Record(str(f.out), "next"))
    p = f.worker("--sleep", "0.2")
    f.wait_for(lambda: f.lines(f.tmp / "out.txt.started"), what="the job to start")
    # When it gets SIGTERM mid-job
    p.send_signal(signal.SIGTERM)
    # Then it finishes that job, takes no other and exits 0
    assert finished(p) == 0
    assert [line.split()[0] for line in f.lines()] == ["slow"]       # finished, and took nothing new
    err = p.stderr.read()
    assert "worker.stop reason=signal signal=SIGTERM" in err
    # the job not started is still there for the next worker
    assert f.queue().counts()["default"]["ready"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_mid_job_loses_nothing_the_job_runs_again_after_retry_after(make_farm, backend):
    # Given a worker killed with SIGKILL while its job runs (retry_after 2 s)
    f = make_farm(backend, retry_after=2)
    started = f.tmp / "out.txt.started"
    jid = farm.dispatch(Timed(str(f.out), "victim", seconds=1.0))
    p = f.worker("--sleep", "0.2")
    f.wait_for(lambda: f.lines(started), what="the job to start")
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    killed_at = time.time()
    assert f.lines() == []
    # When another worker comes
    p2 = f.worker("--sleep", "0.2", "--log-format", "json")
    f.wait_for(lambda: f.lines(), timeout=20, what="the job to run again")
    p2.send_signal(signal.SIGTERM)
    assert finished(p2) == 0
    # Then it runs the job as its second start: on a database once the dead worker's
    # reservation lapsed (renewed every retry_after / 3, checked every 0.25 s; redis likewise),
    # on RabbitMQ at once
    assert f.lines()[0].split()[:2] == ["victim", "2"]
    (rerun,) = times(f.lines(started)[1:])
    if backend in LEASE_BACKENDS:
        assert rerun - killed_at >= 2 - (2 / 3 + 0.25) - EPS, "handed out again before its reservation lapsed"
    ready = max(killed_at + (2 if backend in LEASE_BACKENDS else 0), logged(p2.stderr.read(), "worker.start")["time"])
    assert rerun - ready < 3.0
    assert f.store().failed(ids=[jid]) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_jobs_finished_before_a_sigkill_are_acked_and_never_run_again(make_farm, backend):
    # Given a worker that has finished 50 quick jobs (acks pipelined or buffered) and started a slow one
    f = make_farm(backend, retry_after=2)
    for i in range(50):
        farm.dispatch(Record(str(f.out), f"quick{i}"))
    farm.dispatch(Record(str(f.out), "slow", seconds=30))
    p = f.worker("--sleep", "0.2")
    f.wait_for(lambda: f.lines(f.tmp / "out.txt.started"), what="the slow job to start")
    # When it is killed mid-job
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    # Then a new worker runs the slow job again, and none of the finished ones
    p2 = f.worker("--sleep", "0.2")
    f.wait_for(lambda: len(f.lines(f.tmp / "out.txt.started")) >= 2, timeout=20, what="the slow job again")
    p2.send_signal(signal.SIGKILL)
    p2.wait(10)
    tags = Counter(line.split()[0] for line in f.lines())
    assert len(tags) == 50 and set(tags.values()) == {1}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_job_longer_than_retry_after_is_not_run_twice_by_two_workers(make_farm, backend):
    # Given two idle workers (retry_after 1 s), both beating
    f = make_farm(backend, retry_after=1)
    a = f.worker("--sleep", "0.1")
    b = f.worker("--sleep", "0.1")
    beating(f, 2)
    # When a job of 3.5 retry_afters runs on one of them while the other polls
    farm.dispatch(Record(str(f.out), "long", seconds=3.5))
    f.wait_for(lambda: f.lines(), timeout=20, what="the job to finish")
    # Then, once both have stopped (nothing can run after that), it started and ran once
    for p in (a, b):
        p.send_signal(signal.SIGTERM)
        assert finished(p) == 0
    assert [line.split()[0] for line in f.lines(f.tmp / "out.txt.started")] == ["long"]
    assert [line.split()[0] for line in f.lines()] == ["long"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_workers_and_a_producer_run_2000_jobs_exactly_once(make_farm, backend):
    # Given two workers, both beating
    f = make_farm(backend)
    workers = [f.worker("--sleep", "0.1", "--log-level", "warning") for _ in range(2)]
    beating(f, 2)
    sent: list[str] = []
    errors: list[BaseException] = []

    def produce():
        try:
            for i in range(0, 2000, 100):
                if i % 200:
                    sent.extend(farm.dispatch_many([Record(str(f.out), f"j{n}") for n in range(i, i + 100)]))
                else:
                    sent.extend(farm.dispatch(Record(str(f.out), f"j{n}")) for n in range(i, i + 100))
        except BaseException as e:
            errors.append(e)

    # When a producer sends 2000 jobs, one by one and in bulk, while they work
    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(120)
    # Then the producer finished and every id it got back is a distinct job
    assert not producer.is_alive(), "the producer did not finish in 120 s"
    assert errors == []
    assert len(sent) == 2000 and len(set(sent)) == 2000
    # and, once the workers have stopped, each job ran exactly once, on both workers
    f.wait_for(lambda: len(f.lines()) >= 2000, timeout=120, what="2000 jobs")
    for p in workers:
        p.send_signal(signal.SIGTERM)
        assert finished(p) == 0
    tags = Counter(line.split()[0] for line in f.lines())
    assert len(tags) == 2000 and set(tags.values()) == {1}
    pids = {line.split()[2] for line in f.lines()}
    assert len(pids) == 2, "both workers took part"


@pytest.mark.parametrize("backend", ["sqlite", "amqp", "redis"])
def test_a_second_sigterm_gives_the_running_job_back_and_exits_1(make_farm, backend):
    # Given a worker running a long job that got one SIGTERM
    f = make_farm(backend)
    farm.dispatch(Timed(str(f.out), "long", seconds=30))
    p = f.worker("--sleep", "0.2")
    f.wait_for(lambda: f.lines(f.tmp / "out.txt.started"), what="the job to start")
    p.send_signal(signal.SIGTERM)
    # Two signals sent back to back can arrive as one, and nothing the worker shows says it
    # has handled the first: give it a moment (three times what an idle machine needs)
    time.sleep(0.6)
    # When a second SIGTERM comes
    t = time.monotonic()
    p.send_signal(signal.SIGTERM)
    # Then it exits 1 within a few seconds, the job given back unfinished and ready at once
    assert finished(p, 10) == 1
    assert time.monotonic() - t < 5
    assert "reason=abandon" in p.stderr.read()
    assert f.lines() == []
    (r,) = f.queue().reserve(["default"], 1, 0)
    assert r.attempts == 1                   # the abandoned start used no attempt


def test_a_job_stuck_where_sigalrm_cannot_reach_is_settled_by_the_watchdog(make_farm):
    # Given a job that blocks SIGALRM and sleeps past its timeout of 1 s
    f = make_farm("sqlite")
    jid = farm.dispatch(Stuck(str(f.out), 30), timeout=1)
    p = f.worker("--sleep", "0.1")
    f.wait_for(lambda: f.lines(), what="the job to start")
    t = time.monotonic()
    # Then the watchdog fails it and ends the worker (the process manager starts a fresh one)
    # within two seconds of its limit, counted from when the test saw it start
    assert finished(p, 15) == 1
    assert time.monotonic() - t < 1 + 2, "stopped within two seconds of its limit"
    assert "worker.stuck" in p.stderr.read()
    (entry,) = f.store().failed(ids=[jid])
    assert entry.exception.startswith("JobTimeout")


def test_a_job_past_its_timeout_is_stopped_within_two_seconds_and_retried(make_farm):
    # Given a job of 30 s with a timeout of 1 s and two tries, no backoff
    f = make_farm("sqlite")
    farm.dispatch(Timed(str(f.out), "slow", seconds=30), timeout=1, tries=2, backoff=0)
    # When a worker runs it
    p = f.worker("--sleep", "0.1")
    failed = f.wait_for(lambda: f.lines(f.tmp / "out.txt.failed"), timeout=20, what="the job to fail")
    p.send_signal(signal.SIGTERM)
    assert finished(p) == 0
    # Then each attempt ran to its timeout and was stopped within two seconds of it: the
    # first retried at once, the second failed with JobTimeout
    starts = times(f.lines(f.tmp / "out.txt.started"))
    assert len(starts) == 2 and f.lines() == []
    assert failed[0].split()[:2] == ["slow", "JobTimeout"]
    (failed_at,) = times(failed)
    for began, ended in ((starts[0], starts[1]), (starts[1], failed_at)):
        assert 1 - EPS <= ended - began < 1 + 2
    assert "job.retry" in p.stderr.read()


def test_a_job_that_swallows_exceptions_still_times_out(make_farm):
    f = make_farm("sqlite")
    jid = farm.dispatch(Swallower(str(f.out), 20), timeout=1)
    p = f.worker("--sleep", "0.1", "--stop-when-empty")
    assert finished(p, 15) == 0
    assert f.lines() == ["start 1"]
    (entry,) = f.store().failed(ids=[jid])
    assert entry.exception.startswith("JobTimeout")


@pytest.mark.parametrize("backend", ["sqlite", "amqp", "redis"])
def test_a_flaky_job_is_retried_with_backoff_then_fails_once_with_its_traceback(make_farm, backend):
    # Given a job that always raises, with three tries and a backoff of 0.4 then 0.8 s
    f = make_farm(backend)
    jid = farm.dispatch(TimedFlaky(str(f.out)), backoff=[0.4, 0.8])
    # When a worker runs it
    p = f.worker("--sleep", "0.05")
    f.wait_for(lambda: any(x.startswith("failed ValueError") for x in f.lines()), timeout=20,
               what="the failed() hook")
    p.send_signal(signal.SIGTERM)
    assert finished(p) == 0
    # Then each retry starts no sooner than its backoff after the attempt before
    assert [x.rsplit(" ", 1)[0] for x in f.lines()] == ["attempt 1", "attempt 2", "attempt 3", "failed ValueError"]
    t1, t2, t3, _ = times(f.lines())
    assert t2 - t1 >= 0.4 - EPS and t3 - t2 >= 0.8 - EPS
    # and it fails once, with the last exception and its traceback
    (entry,) = f.store().failed(ids=[jid])
    assert entry.exception.startswith("ValueError: boom on attempt 3")
    assert "Traceback" in entry.exception and "testjobs.py" in entry.exception
    doc = json.loads(entry.body)
    assert doc["attempts"] == 3 and doc["id"] == jid


@pytest.mark.parametrize("backend", ["sqlite", "amqp", "redis"])
def test_a_flaky_job_that_recovers_is_not_failed(make_farm, backend):
    f = make_farm(backend)
    jid = farm.dispatch(Flaky(str(f.out), succeed_on=2), backoff=0)
    p = f.worker("--sleep", "0.05", "--stop-when-empty")
    assert finished(p) == 0
    assert f.lines() == ["attempt 1", "attempt 2"]
    assert f.store().failed(ids=[jid]) == []


@pytest.mark.parametrize("backend", ["sqlite", "amqp", "redis"])
def test_release_uses_an_attempt_and_fail_skips_the_remaining_tries(make_farm, backend):
    f = make_farm(backend)
    rel = farm.dispatch(Releaser(str(f.tmp / "rel.txt")))
    gu = farm.dispatch(GivesUp(str(f.tmp / "gu.txt")))
    p = f.worker("--sleep", "0.05", "--stop-when-empty")
    assert finished(p) == 0
    assert f.lines(f.tmp / "rel.txt") == ["attempt 1", "attempt 2"]
    assert f.lines(f.tmp / "gu.txt") == ["attempt 1", "failed"]
    store = f.store()
    assert store.failed(ids=[rel])[0].exception.startswith("MaxAttemptsExceeded")
    assert "no point retrying" in store.failed(ids=[gu])[0].exception


@pytest.mark.parametrize("backend", ["sqlite", "amqp", "redis"])
def test_bad_payloads_are_failed_with_their_reason_and_the_worker_goes_on(make_farm, backend):
    f = make_farm(backend)
    from farm.drivers.base import Outgoing

    q = f.queue()
    bad = [("not-json", "{nope"), ("not-allowed", json.dumps({"v": 1, "id": "not-allowed", "job": "os:system",
                                                               "data": {"command": "true"}}))]
    q.push([Outgoing(id=i, queue="default", body=b, available_at=0) for i, b in bad])
    farm.dispatch(Record(str(f.out), "good"))
    p = f.worker("--sleep", "0.05", "--stop-when-empty")
    assert finished(p) == 0
    assert [x.split()[0] for x in f.lines()] == ["good"]
    reasons = {e.id: e.exception for e in f.store().failed()}
    if backend == "redis":      # a Redis list holds documents only: one with no id is known by its hash
        h = hashlib.sha1(b"{nope").hexdigest()
        reasons["not-json"] = reasons.pop(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}")
    assert "not JSON" in reasons["not-json"]
    assert "not in a module listed under imports" in reasons["not-allowed"]


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_queues_are_worked_in_priority_order(make_farm, backend):
    f = make_farm(backend)
    for i in range(3):
        farm.dispatch(Record(str(f.out), f"low{i}"), queue="low")
    for i in range(3):
        farm.dispatch(Record(str(f.out), f"high{i}"), queue="high")
    p = f.worker("--queue", "high,low", "--stop-when-empty")
    assert finished(p) == 0
    assert [x.split()[0] for x in f.lines()] == ["high0", "high1", "high2", "low0", "low1", "low2"]


def test_of_the_jobs_a_worker_holds_on_rabbitmq_the_high_ones_start_first(make_farm):
    # RabbitMQ pushes each queue's messages on a channel of its own, so priority holds among
    # the messages a worker holds (docs/amqp.md); one the broker has not yet sent can be
    # overtaken (measured: a loaded machine's low0 ran before high2 with a window of one).
    # Given a worker on `high,low` whose window has grown (30 warm-up jobs), running a gated job
    f = make_farm("amqp")
    warm, gate, started = f.tmp / "warm.txt", f.tmp / "gate", f.tmp / "out.txt.started"
    p = f.worker("--queue", "high,low", "--sleep", "0.05")
    farm.dispatch_many([Record(str(warm), f"w{i}") for i in range(30)], queue="high")
    f.wait_for(lambda: len(f.lines(warm)) == 30, what="the warm-up jobs")
    farm.dispatch(Timed(str(f.out), "gated", gate=str(gate)), queue="high")
    f.wait_for(lambda: f.lines(started), what="the gated job to start")
    # and three low jobs then three high ones published meanwhile, all delivered to it
    for i in range(3):
        farm.dispatch(Record(str(f.out), f"low{i}"), queue="low")
    for i in range(3):
        farm.dispatch(Record(str(f.out), f"high{i}"), queue="high")
    q = f.queue()
    f.wait_for(lambda: all(q.counts().get(n, {}).get("ready") == 0 for n in ("high", "low")),
               what="the broker to hand the six to the worker")
    # When the gate opens
    gate.touch()
    f.wait_for(lambda: len(f.lines()) == 7, what="the seven jobs")
    p.send_signal(signal.SIGTERM)
    assert finished(p) == 0
    # Then the high ones ran first, in order, then the low ones
    assert [x.split()[0] for x in f.lines()] == ["gated", "high0", "high1", "high2", "low0", "low1", "low2"]


@pytest.mark.parametrize("backend", ["sqlite", "amqp", "redis"])
def test_a_delayed_job_runs_after_its_delay(make_farm, backend):
    # Given an idle worker that has started (its heartbeat is in)
    f = make_farm(backend)
    p = f.worker("--sleep", "3")
    beating(f)
    # When a job is dispatched with a delay of 1.5 s
    t = time.time()
    farm.dispatch(Timed(str(f.out), "later"), delay=1.5)
    f.wait_for(lambda: f.lines(), timeout=15, what="the delayed job")
    p.send_signal(signal.SIGTERM)
    assert finished(p) == 0
    # Then it starts after its delay, and not long after
    (began,) = times(f.lines(f.tmp / "out.txt.started"))
    assert 1.5 - EPS <= began - t < 1.5 + 1.5


@pytest.mark.parametrize("flag, value, reason", [("--max-jobs", "3", "max-jobs"), ("--once", None, "once")])
def test_limits_end_the_worker_gracefully(make_farm, flag, value, reason):
    f = make_farm("sqlite")
    for i in range(5):
        farm.dispatch(Record(str(f.out), f"j{i}"))
    p = f.worker(*([flag] + ([value] if value else [])))
    assert finished(p) == 0
    assert len(f.lines()) == (3 if reason == "max-jobs" else 1)
    assert f"reason={reason}" in p.stderr.read()


def test_max_time_ends_an_idle_worker_once_its_time_is_up(make_farm):
    # Given an idle worker with --max-time 1
    f = make_farm("sqlite")
    p = f.worker("--max-time", "1", "--sleep", "0.1", "--log-format", "json")
    # Then it exits 0 for that reason, not before a second after it started
    assert finished(p) == 0
    exited = time.time()
    err = p.stderr.read()
    assert logged(err, "worker.stop")["reason"] == "max-time"
    assert exited - logged(err, "worker.start")["time"] >= 1 - EPS


def test_memory_past_its_limit_ends_the_worker_after_the_job_at_hand(make_farm):
    # Given a job that takes the worker's RSS past --memory 100 (and keeps it there long
    # enough for the heart's once-a-second reading), and a second job behind it
    f = make_farm("sqlite")
    farm.dispatch(Hog(str(f.out), "hog", mb=150, seconds=3))
    farm.dispatch(Record(str(f.out), "next"))
    # When a worker runs them
    p = f.worker("--memory", "100", "--sleep", "0.1")
    # Then it finishes that job, exits 0 for memory, and leaves the second one queued
    assert finished(p) == 0 and "reason=memory" in p.stderr.read()
    assert [x.split()[0] for x in f.lines()] == ["hog"]
    assert f.queue().counts()["default"]["ready"] == 1


def test_a_recycling_exit_waits_out_the_first_second(make_farm):
    # Given a worker that is over its memory limit from the start
    f = make_farm("sqlite")
    p = f.worker("--max-jobs", "1", "--memory", "1", "--log-format", "json")
    # Then it exits 0 (memory), but not sooner than a second after its start was logged
    assert finished(p) == 0
    exited = time.time()
    err = p.stderr.read()
    assert logged(err, "worker.stop")["reason"] == "memory"
    assert exited - logged(err, "worker.start")["time"] >= 1 - EPS


def test_sigusr2_pauses_and_sigcont_resumes(make_farm):
    # Given a worker paused with SIGUSR2, as its heartbeat says
    f = make_farm("sqlite")
    p = f.worker("--sleep", "0.1")
    beating(f)
    p.send_signal(signal.SIGUSR2)
    f.wait_for(lambda: [w for w in f.store().workers() if w["state"] == "paused"], timeout=20,
               what="a heartbeat saying paused")
    # When a job is dispatched
    dispatched = time.time()
    farm.dispatch(Record(str(f.out), "while-paused"))
    # Then a heartbeat after it still says paused, and the job is neither run nor taken
    f.wait_for(lambda: [w for w in f.store().workers() if w["heartbeat"] > dispatched], timeout=20,
               what="a heartbeat after the dispatch")
    assert [w["state"] for w in f.store().workers()] == ["paused"]
    assert f.lines() == [] and f.queue().counts()["default"]["ready"] == 1
    # and after SIGCONT it runs the job
    p.send_signal(signal.SIGCONT)
    f.wait_for(lambda: f.lines(), timeout=15, what="the job after resume")
    p.send_signal(signal.SIGTERM)
    assert finished(p) == 0


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_the_restart_stamp_ends_workers_after_their_job(make_farm, backend):
    # Given a worker running a job that goes on until the test opens its gate, another job behind it
    f = make_farm(backend)
    gate = f.tmp / "gate"
    farm.dispatch(Timed(str(f.out), "running", gate=str(gate)))
    farm.dispatch(Timed(str(f.out), "next"))
    p = f.worker("--sleep", "0.1")
    f.wait_for(lambda: f.lines(f.tmp / "out.txt.started"), what="the job to start")
    # When `farmctl restart` stamps the store while the job runs
    f.farmctl("restart", check=True)
    # (the heart reads the stamp every second and shows nothing when it has: the job goes on
    # for three of those before it may end)
    time.sleep(3 * 1.0)
    gate.touch()
    # Then the worker finishes that job, takes no other, and exits 0 for the restart
    assert finished(p, 15) == 0
    assert "reason=restart" in p.stderr.read()
    assert [x.split()[0] for x in f.lines()] == ["running"]
    assert f.queue().counts()["default"]["ready"] == 1


@pytest.mark.parametrize("args, message", [
    (["--max-jobs", "-1"], "--max-jobs"),
    (["--connection", "nope"], "unknown connection 'nope'"),
    (["--pipeline", "nope"], "unknown pipeline 'nope'"),
    (["--backoff", "x,y"], "--backoff"),
])
def test_bad_flags_are_one_line_and_exit_2(make_farm, args, message):
    f = make_farm("sqlite")
    cp = f.farmctl("work", *args)
    assert cp.returncode == 2
    assert message in cp.stderr and "Traceback" not in cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1


def test_a_broken_manifest_lists_its_problems_and_exits_2(make_farm):
    f = make_farm("sqlite")
    f.manifest.write_text("connections:\n  main: {driver: nope}\npipelines:\n  w: {numprocs: 0}\n")
    cp = f.farmctl("work")
    assert cp.returncode == 2 and "Traceback" not in cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert any(":2: connections.main.driver: unknown driver 'nope'" in x for x in lines)
    assert any(":4: pipelines.w.numprocs: expected a positive integer, got 0" in x for x in lines)
    cp = f.farmctl("--config", str(f.tmp / "missing.yaml"), "status")
    assert cp.returncode == 2 and "cannot read the manifest" in cp.stderr


def test_push_stores_a_raw_job_and_refuses_a_malformed_one(make_farm):
    f = make_farm("sqlite")
    doc = {"v": 1, "id": "raw-1", "job": "testjobs:plain", "data": {"path": str(f.out), "word": "hi"}}
    cp = f.farmctl("push", "--queue", "raw", json.dumps(doc), check=True)
    assert cp.stdout.strip() == "raw-1"
    bad = f.farmctl("push", '{"v": 1}')
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    p = f.worker("--queue", "raw", "--stop-when-empty")
    assert finished(p) == 0
    assert f.lines() == ["plain hi"]


def test_a_worker_survives_its_database_connections_being_killed_and_loses_nothing(make_farm):
    import psycopg

    f = make_farm("postgresql")
    p = f.worker("--sleep", "0.1", "--log-level", "warning")
    for i in range(100):
        farm.dispatch(Record(str(f.out), f"a{i}"))
    f.wait_for(lambda: len(f.lines()) >= 100, what="the first hundred")
    with psycopg.connect(pg_conninfo(), autocommit=True) as admin:
        killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE application_name LIKE %s", (f"farm {p.pid} %",)).fetchall()
    assert killed, "the worker's connections were found"
    for i in range(100):
        farm.dispatch(Record(str(f.out), f"b{i}"))
    f.wait_for(lambda: len(f.lines()) >= 200, timeout=60, what="the second hundred after the reconnect")
    p.send_signal(signal.SIGTERM)
    assert finished(p) == 0
    tags = Counter(line.split()[0] for line in f.lines())
    assert len(tags) == 200 and set(tags.values()) == {1}
    assert "worker.unavailable" in p.stderr.read()


def test_dispatch_raises_driver_unavailable_when_the_database_is_gone(make_farm, tmp_path):
    from farm import app

    # Given a manifest whose database is gone (port 1 on this host: refused at once, on purpose
    # not FARM_TEST_PG, which names a server that is there)
    f = make_farm("sqlite")
    f.manifest.write_text("imports: [testjobs]\nconnections:\n  main:\n    driver: database\n"
                          "    url: postgresql+psycopg://postgres@127.0.0.1:1/test\n")
    app.configure(f.manifest)
    with pytest.raises(farm.DriverUnavailable):
        farm.dispatch(Record(str(f.out), "x"))
    cp = f.farmctl("status")
    assert cp.returncode == 1 and "Traceback" not in cp.stderr and len(cp.stderr.strip().splitlines()) == 1


def test_tries_come_from_dispatch_then_the_class_then_the_worker_flag(make_farm):
    from testjobs import AlwaysFails

    f = make_farm("sqlite")
    farm.dispatch(AlwaysFails(str(f.tmp / "flag.txt")))                       # the worker's --tries 2
    farm.dispatch(AlwaysFails(str(f.tmp / "dispatch.txt")), tries=3)          # dispatch beats the flag
    farm.dispatch(Flaky(str(f.tmp / "class.txt")), backoff=0)                 # class tries=3 beats the flag
    p = f.worker("--tries", "2", "--backoff", "0", "--sleep", "0.05", "--stop-when-empty")
    assert finished(p) == 0
    assert len(f.lines(f.tmp / "flag.txt")) == 2
    assert len(f.lines(f.tmp / "dispatch.txt")) == 3
    assert [x for x in f.lines(f.tmp / "class.txt") if x.startswith("attempt")] == \
        ["attempt 1", "attempt 2", "attempt 3"]


@pytest.mark.parametrize("backend", ["sqlite", "amqp", "redis"])
def test_claimed_jobs_not_started_are_handed_back_at_once_on_a_graceful_stop(make_farm, backend):
    f = make_farm(backend)
    for i in range(30):                       # fast jobs teach the worker to claim in batches
        farm.dispatch(Record(str(f.out), f"warm{i}"))
    p = f.worker("--sleep", "0.05")
    f.wait_for(lambda: len(f.lines()) >= 30, what="the warm-up jobs")
    farm.dispatch_many([Record(str(f.out), "slow", seconds=1.5)] + [Record(str(f.out), f"after{i}") for i in range(20)])
    f.wait_for(lambda: f.lines(f.tmp / "out.txt.started"), what="the slow job to start")
    counts = f.queue().counts()["default"]
    if backend == "amqp":                     # prefetched: unacked, which AMQP does not count
        assert counts["ready"] < 20 and counts["reserved"] is None, "the worker prefetched a batch"
    else:
        assert counts["reserved"] > 1, "the worker claimed a batch"
    p.send_signal(signal.SIGTERM)
    assert finished(p) == 0
    counts = f.queue().counts()["default"]
    assert counts["reserved"] in (0, None) and counts["ready"] + len(f.lines()) - 31 == 20
    (r, *_) = f.queue().reserve(["default"], 1, 0)
    assert r.attempts == 1                    # handed back unstarted: no attempt used


def test_a_short_queue_of_slow_jobs_is_shared_by_two_workers(make_farm):
    f = make_farm("sqlite")
    a, b = f.worker("--sleep", "0.05"), f.worker("--sleep", "0.05")
    f.wait_for(lambda: len(f.store().workers()) == 2, what="both workers to beat")
    farm.dispatch_many([Record(str(f.out), f"s{i}", seconds=0.4) for i in range(6)])
    f.wait_for(lambda: len(f.lines()) >= 6, timeout=20, what="six slow jobs")
    for p in (a, b):
        p.send_signal(signal.SIGTERM)
        assert finished(p) == 0
    assert len({line.split()[2] for line in f.lines()}) == 2
