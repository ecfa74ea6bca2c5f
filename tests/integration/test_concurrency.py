"""`farmctl work --concurrency N`: real worker processes running jobs on threads, real servers.

Jobs that must be held running use `Timed(..., gate=PATH)`: they wait until the file exists,
so a test decides when they end instead of guessing how long a loaded machine needs.
"""
from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

import farm
from conftest import BACKENDS
from testjobs import BlockedRead, Flaky, GivesUp, Hog, Record, Releaser, Sleeper, Spawner, Timed

from test_worker_lifecycle import beating, finished, logged


def started(f) -> list[str]:
    return f.lines(f.tmp / "out.txt.started")


def tags(lines: list[str]) -> list[str]:
    return [line.split()[0] for line in lines]


def counts(f, queue: str = "default") -> dict:
    return f.queue().counts().get(queue, {"ready": 0, "reserved": 0, "delayed": 0})


@pytest.mark.parametrize("backend", BACKENDS)
def test_sixteen_threads_run_2000_jobs_each_exactly_once(make_farm, backend):
    # Given 2,000 queued jobs
    f = make_farm(backend)
    farm.dispatch_many([Record(str(f.out), f"j{i}") for i in range(2000)])
    # When one worker with 16 threads drains them
    p = f.worker("--concurrency", "16", "--stop-when-empty", "--log-level", "warning")
    # Then every job ran exactly once, and nothing is left reserved
    assert finished(p, timeout=120) == 0, p.stderr.read()
    ran = Counter(tags(f.lines()))
    assert len(ran) == 2000 and set(ran.values()) == {1}, [t for t, n in ran.items() if n > 1][:5]
    left = counts(f)
    assert left["ready"] == 0 and not left["reserved"]      # amqp cannot count reserved: None


@pytest.mark.parametrize("backend", BACKENDS)
def test_jobs_dispatching_from_eight_threads_at_once_queue_each_child_once(make_farm, backend):
    # Given 300 jobs that each dispatch a child job from inside handle()
    f = make_farm(backend)
    farm.dispatch_many([Spawner(str(f.out), f"c{i}") for i in range(300)])
    # When 8 threads run them (each dispatching through the worker's own connection object)
    p = f.worker("--concurrency", "8", "--stop-when-empty", "--log-level", "warning")
    assert finished(p, timeout=120) == 0, p.stderr.read()
    # Then every child was queued once: a plain worker runs exactly 300 of them
    q = f.worker("--stop-when-empty", "--log-level", "warning")
    assert finished(q, timeout=120) == 0, q.stderr.read()
    assert Counter(tags(f.lines())) == Counter(f"c{i}" for i in range(300))


@pytest.mark.parametrize("backend", ["sqlite", "amqp"])
def test_a_pipeline_with_concurrency_4_runs_four_jobs_at_once_and_no_more(make_farm, backend):
    # Given a pipeline with concurrency: 4 and 6 jobs that run until a gate opens
    f = make_farm(backend, extra="pipelines:\n  io:\n    queues: [default]\n    concurrency: 4\n")
    gate = f.tmp / "gate"
    for i in range(6):
        farm.dispatch(Timed(str(f.out), f"t{i}", gate=str(gate)))
    p = f.worker("--pipeline", "io", "--stop-when-empty", "--log-format", "json")
    # When four have started
    f.wait_for(lambda: len(started(f)) >= 4, what="four jobs running")
    time.sleep(0.5)
    # Then they run at once, in one process, and a fifth waits for a free thread
    assert len(started(f)) == 4
    assert len({line.split()[2] for line in started(f)}) == 1
    worker = beating(f)[0]
    assert worker["state"] == "busy" and worker["jobs"] == 4
    # and once the gate opens every job finishes, each once
    gate.touch()
    assert finished(p) == 0
    assert sorted(tags(f.lines())) == [f"t{i}" for i in range(6)]
    assert logged(p.stderr.read(), "worker.start")["concurrency"] == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_lets_every_running_job_finish_and_hands_back_the_rest(make_farm, backend):
    # Given a worker with 3 threads busy and 3 more jobs queued
    f = make_farm(backend)
    gate = f.tmp / "gate"
    for i in range(6):
        farm.dispatch(Timed(str(f.out), f"t{i}", gate=str(gate)))
    p = f.worker("--concurrency", "3", "--sleep", "0.2")
    f.wait_for(lambda: len(started(f)) >= 3, what="three jobs running")
    # When it gets SIGTERM
    p.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    # Then it waits for the running jobs (interrupting none) and starts no other
    assert p.poll() is None
    gate.touch()
    assert finished(p) == 0
    assert sorted(tags(f.lines())) == sorted(tags(started(f))) and len(started(f)) == 3
    assert "worker.stop reason=signal signal=SIGTERM" in p.stderr.read()
    # the three not started are there for the next worker
    f.wait_for(lambda: counts(f)["ready"] == 3, what="three jobs ready again")
    assert not counts(f)["reserved"]


@pytest.mark.parametrize("backend,blocked", [("sqlite", False), ("postgresql", False), ("redis", False),
                                             ("sqlite", True)], ids=["sqlite", "postgresql", "redis", "sqlite-in-C"])
def test_a_second_sigterm_stops_the_running_jobs_and_gives_them_back_at_once(make_farm, backend, blocked):
    # Given a worker whose 12 threads run jobs that do not end by themselves soon: waiting in
    # Python for a gate, or (in-C) sleeping 3 s in time.sleep, where Abandon cannot reach them
    f = make_farm(backend)
    gate = f.tmp / "gate"
    for i in range(14):
        farm.dispatch(Timed(str(f.out), f"t{i}", seconds=3) if blocked else Timed(str(f.out), f"t{i}", gate=str(gate)))
    p = f.worker("--concurrency", "12")
    f.wait_for(lambda: len(started(f)) >= 12, what="twelve jobs running")
    # When it gets SIGTERM twice
    p.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    gate.touch()                # a job Abandon has not stopped would now finish, after its give-back
    # Then it exits 1 at once; the jobs it gave back did not finish in it, so each job runs once
    assert finished(p, timeout=10) == 1
    assert time.monotonic() - t0 < 3
    assert "running jobs given back" in p.stderr.read()
    time.sleep(0.2)             # the process is gone: none of its threads can write a line now
    ended = len(f.lines())
    f.wait_for(lambda: counts(f)["ready"] == 14 - ended, what="the jobs given back ready again")
    q = f.worker("--concurrency", "14", "--stop-when-empty")
    assert finished(q) == 0
    assert Counter(tags(f.lines())) == Counter(f"t{i}" for i in range(14))
    assert [line.split()[1] for line in f.lines()] == ["1"] * 14       # given back: no attempt used


def test_a_graceful_stop_on_rabbitmq_stops_consuming_while_jobs_finish(make_farm):
    # Given a threaded worker on RabbitMQ running a long job and a short one, 5 more queued
    f = make_farm("amqp")
    gate = f.tmp / "gate"
    farm.dispatch(Timed(str(f.out), "long", gate=str(gate)))
    for i in range(6):
        farm.dispatch(Timed(str(f.out), f"s{i}", seconds=1.0))
    p = f.worker("--concurrency", "2")
    f.wait_for(lambda: len(started(f)) == 2, what="two jobs running")
    # When it gets SIGTERM, and the short job then ends and is acked
    p.send_signal(signal.SIGTERM)
    f.wait_for(lambda: len(f.lines()) == 1, what="the short job to end")
    # Then the worker takes no delivery in its place: the other 5 stay with the broker for
    # other workers, while the long job runs on
    f.wait_for(lambda: counts(f)["ready"] == 5, timeout=10, what="five jobs ready with the broker")
    time.sleep(0.5)
    assert counts(f)["ready"] == 5 and p.poll() is None
    gate.touch()
    assert finished(p) == 0
    assert sorted(tags(f.lines())) == ["long", "s0"] or len(f.lines()) == 2


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_a_job_settled_before_the_one_claimed_before_it_gets_its_next_start_written(make_farm, backend):
    # Given two jobs claimed in one batch and both started, as a threaded worker does
    f = make_farm(backend)
    farm.dispatch(Record(str(f.out), "a"))
    farm.dispatch(Record(str(f.out), "b"))
    q = f.queue()
    a, b = q.reserve(["default"], 2, 0)
    assert q.starting(a) and q.starting(b)
    # When the second ends first (released), then the first is acked
    q.release(b, 0, b.body)
    q.ack(a)
    # Then the ack did not take the released job for started: its next start is written, and a
    # give-back takes exactly that one back
    (b2,) = q.reserve(["default"], 1, 0)
    assert b2.id == b.id and b2.attempts == 2
    assert q.starting(b2)
    q.give_back([b2])
    (b3,) = q.reserve(["default"], 1, 0)
    assert b3.attempts == 2, "the second start was never written, or taken back twice"
    q.give_back([b3])


def test_a_job_past_its_timeout_in_python_code_is_timed_out_and_the_worker_goes_on(make_farm):
    # Given a job spinning in Python for 20 s with a 1 s timeout and two tries, beside quick jobs
    f = make_farm("sqlite")
    spin = f.tmp / "spin.txt"
    jid = farm.dispatch(Sleeper(str(spin), 20, spin=True), timeout=1, tries=2)
    for i in range(10):
        farm.dispatch(Record(str(f.out), f"r{i}", seconds=0.1))
    # When a worker with 2 threads runs them
    t0 = time.monotonic()
    p = f.worker("--concurrency", "2", "--stop-when-empty")
    # Then each attempt is stopped at its timeout, the job fails for good with JobTimeout (never
    # acked as done), its failed() hook runs, and the worker goes on and exits 0
    assert finished(p, timeout=60) == 0
    assert time.monotonic() - t0 < 15
    err = p.stderr.read()
    assert "worker.stuck" not in err
    assert f.lines(spin)[0].startswith("start 1") and f.lines(spin)[1].startswith("start 2")
    assert f.lines(spin)[2:] == ["failed JobTimeout"]              # no "end": it never finished
    entry = f.store().failed([jid])[0]
    assert entry.exception.startswith("JobTimeout: the job ran past its timeout of 1s")
    assert len(f.lines()) == 10


def test_a_job_blocked_in_a_socket_read_is_timed_out_and_the_worker_recycles(make_farm):
    # Given a job blocked in recv() with no timeout (Python cannot interrupt it), beside quick jobs
    f = make_farm("sqlite")
    blocked = f.tmp / "blocked.txt"
    jid = farm.dispatch(BlockedRead(str(blocked)), timeout=1, tries=1)
    for i in range(6):
        farm.dispatch(Record(str(f.out), f"r{i}", seconds=0.2))
    # When a worker with 2 threads runs them
    p = f.worker("--concurrency", "2", "--stop-when-empty")
    # Then a second past its timeout the job is failed as timed out, the worker takes no more
    # jobs, lets the running ones end, and exits 1 for the process manager to replace it
    assert finished(p, timeout=30) == 1
    err = p.stderr.read()
    assert "worker.stuck" in err and "worker.stop reason=stuck" in err
    entry = f.store().failed([jid])[0]
    assert entry.exception.startswith("JobTimeout")
    assert f.lines(blocked)[1:] == []                               # it never got past recv()
    done, ready = len(f.lines()), counts(f)["ready"]
    assert done + ready == 6 and counts(f)["reserved"] == 0
    # and the next worker runs the rest
    q = f.worker("--concurrency", "2", "--stop-when-empty")
    assert finished(q) == 0
    assert sorted(tags(f.lines())) == [f"r{i}" for i in range(6)]


def test_retries_release_and_fail_are_the_same_with_threads(make_farm):
    # Given jobs that raise, release themselves and fail themselves
    f = make_farm("sqlite")
    flaky, rel, gives = (f.tmp / n for n in ("flaky.txt", "rel.txt", "gives.txt"))
    farm.dispatch(Flaky(str(flaky)))                      # tries = 3
    farm.dispatch(Releaser(str(rel)))                     # tries = 2
    farm.dispatch(GivesUp(str(gives)))                    # fails itself
    # When a threaded worker runs them
    p = f.worker("--concurrency", "3", "--stop-when-empty")
    assert finished(p) == 0
    # Then each ends as it does with one job at a time
    assert f.lines(flaky) == ["attempt 1", "attempt 2", "attempt 3", "failed ValueError"]
    assert f.lines(rel) == ["attempt 1", "attempt 2"]
    assert f.lines(gives) == ["attempt 1", "failed"]
    assert len(f.store().failed()) == 3


def test_max_jobs_counts_jobs_across_threads(make_farm):
    f = make_farm("sqlite")
    for i in range(30):
        farm.dispatch(Record(str(f.out), f"r{i}", seconds=0.05))
    p = f.worker("--concurrency", "4", "--max-jobs", "10")
    assert finished(p) == 0
    assert len(f.lines()) == 10
    assert "reason=max-jobs" in p.stderr.read()
    assert (counts(f)["ready"], counts(f)["reserved"]) == (20, 0)


def test_max_time_stops_claiming_and_lets_running_jobs_end(make_farm):
    # Given 40 jobs of 0.3 s and a worker with 4 threads that may run for 1 s
    f = make_farm("sqlite")
    for i in range(40):
        farm.dispatch(Timed(str(f.out), f"t{i}", seconds=0.3))
    p = f.worker("--concurrency", "4", "--max-time", "1")
    # Then it exits 0 for the limit, after every job it started has ended
    assert finished(p) == 0
    assert "reason=max-time" in p.stderr.read()
    assert sorted(tags(started(f))) == sorted(tags(f.lines())) and f.lines()
    assert counts(f)["reserved"] == 0 and counts(f)["ready"] == 40 - len(f.lines())


def test_memory_is_the_whole_process_and_running_jobs_end_first(make_farm):
    # Given jobs that each keep 15 MB, and a worker with 4 threads allowed 80 MB
    f = make_farm("sqlite")
    for i in range(16):
        farm.dispatch(Hog(str(f.out), f"h{i}", mb=15, seconds=0.5))
    p = f.worker("--concurrency", "4", "--memory", "80")
    # Then the threads' memory counts: it stops claiming past 80 MB, its running jobs end,
    # and it exits 0 for the process manager to start a fresh one
    assert finished(p) == 0
    assert "reason=memory" in p.stderr.read()
    done = len(f.lines())
    assert 0 < done < 16
    assert counts(f)["reserved"] == 0 and counts(f)["ready"] == 16 - done


def test_pause_stops_new_starts_and_resume_goes_on(make_farm):
    # Given a threaded worker eating 0.2 s jobs
    f = make_farm("sqlite")
    for i in range(40):
        farm.dispatch(Timed(str(f.out), f"t{i}", seconds=0.2))
    p = f.worker("--concurrency", "4")
    f.wait_for(lambda: len(f.lines()) >= 4, what="some jobs done")
    # When it is paused (SIGUSR2), as its heartbeat says at once, the running jobs end and no
    # other starts
    p.send_signal(signal.SIGUSR2)
    f.wait_for(lambda: [w for w in f.store().workers() if w["state"] == "paused"], timeout=2,
               what="a heartbeat saying paused")
    f.wait_for(lambda: len(started(f)) == len(f.lines()), what="the running jobs to end")
    n = len(started(f))
    time.sleep(1.0)
    assert len(started(f)) == n < 40
    assert not counts(f)["reserved"]
    # and resumed (SIGCONT), it finishes the rest
    p.send_signal(signal.SIGCONT)
    f.wait_for(lambda: len(f.lines()) == 40, what="every job done")
    p.send_signal(signal.SIGTERM)
    assert finished(p) == 0
    assert Counter(tags(f.lines())) == Counter(f"t{i}" for i in range(40))


def test_reservations_of_all_running_jobs_are_renewed(make_farm):
    # Given retry_after 1 s and jobs that run 3 s on 4 threads, and a second worker waiting
    f = make_farm("sqlite", retry_after=1)
    for i in range(4):
        farm.dispatch(Timed(str(f.out), f"t{i}", seconds=3))
    p = f.worker("--concurrency", "4", "--stop-when-empty")
    f.wait_for(lambda: len(started(f)) == 4, what="four jobs running")
    other = f.worker("--sleep", "0.1", "--stop-when-empty")
    # Then no reservation lapses while they run: the other worker finds nothing, each runs once
    assert finished(other) == 0
    assert finished(p) == 0
    assert sorted(tags(started(f))) == [f"t{i}" for i in range(4)]


def test_higher_queues_start_first_with_threads(make_farm):
    # Given 12 jobs on `low` dispatched before 12 on `high`
    f = make_farm("sqlite")
    for i in range(12):
        farm.dispatch(Timed(str(f.out), f"low{i}", seconds=0.05), queue="low")
    for i in range(12):
        farm.dispatch(Timed(str(f.out), f"high{i}", seconds=0.05), queue="high")
    # When a worker with 4 threads takes from high,low
    p = f.worker("--concurrency", "4", "--queue", "high,low", "--stop-when-empty")
    assert finished(p) == 0
    # Then every high job started before any low one
    order = tags(started(f))
    assert [t[:3] == "hig" for t in order] == [True] * 12 + [False] * 12, order


def test_restart_stamp_recycles_a_threaded_worker_after_its_jobs(make_farm):
    f = make_farm("sqlite")
    gate = f.tmp / "gate"
    for i in range(4):
        farm.dispatch(Timed(str(f.out), f"t{i}", gate=str(gate)))
    p = f.worker("--concurrency", "2")
    f.wait_for(lambda: len(started(f)) == 2, what="two jobs running")
    f.farmctl("restart", check=True)
    time.sleep(1.5)                     # the heart reads the stamp within a second
    assert p.poll() is None             # the running jobs are not cut short
    gate.touch()
    assert finished(p) == 0
    assert "reason=restart" in p.stderr.read()
    assert len(f.lines()) == 2 and counts(f)["ready"] == 2


def test_bad_concurrency_is_refused_with_one_line(make_farm):
    f = make_farm("sqlite")
    cp = f.farmctl("work", "--concurrency", "0")
    assert cp.returncode == 2 and "--concurrency" in cp.stderr and "Traceback" not in cp.stderr
    f.manifest.write_text(f.manifest.read_text() + "pipelines:\n  io:\n    concurrency: 0\n")
    cp = f.farmctl("render")
    assert cp.returncode == 2 and "pipelines.io.concurrency" in cp.stderr
    assert "Traceback" not in cp.stderr
