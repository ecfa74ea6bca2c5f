"""Unique jobs and middleware (issue 15): real stores, real `farmctl work` processes.

Jobs live in tests/support/uniquejobs.py, which these farms add to `imports:`.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import farm
from farm.drivers.base import Outgoing
from conftest import BACKENDS, wait_until
from tcpproxy import Proxy, free_port
from uniquejobs import (Exclusive, HeldBack, Hog, Limited, LimitedOnce, OnlyOnce, OnlyOnceFailing, ShortUnique,
                        Stubborn, Throttled, ThrottledThenFine, UniqueUntilStart, Wrapped)


def unique_farm(make_farm, backend: str, **kw):
    """A farm whose workers also import uniquejobs."""
    f = make_farm(backend, **kw)
    f.manifest.write_text(f.manifest.read_text().replace("imports: [testjobs]", "imports: [testjobs, uniquejobs]", 1))
    f.app = farm.configure(f.manifest)
    return f


def spawn(f, log: Path, *args: str) -> subprocess.Popen:
    """A worker whose log goes to `log`."""
    with open(log, "ab") as err:
        p = subprocess.Popen([sys.executable, "-m", "farm", "work", *args], cwd=f.tmp, env=f.env(),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    f.procs.append(p)
    return p


def events(log: Path, name: str) -> list[str]:
    return [line for line in (log.read_text().splitlines() if log.exists() else []) if f" {name} " in line + " "]


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        assert p.wait(20) == 0


DISPATCHERS = """
import os, sys, time
import farm
from farm import app, unique
from uniquejobs import OnlyOnce
manifest, ready, out = sys.argv[1:4]
children = []
for n in range(8):                   # 8 processes, each with connections of its own
    pid = os.fork()
    if pid == 0:
        try:
            farm.configure(manifest)
            unique.store_for(None), app.queue(None)      # connected before the race starts
            open(f"{ready}.{n}", "w").close()
            while not os.path.exists(ready + ".go"):
                time.sleep(0.001)
            with open(f"{ready}.{n}.id", "w") as f:
                f.write(str(OnlyOnce(out, "same").dispatch()))
        finally:
            os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_eight_processes_dispatching_the_same_unique_job_at_once_get_exactly_one_id(make_farm, backend, tmp_path):
    # Given 8 processes, each connected and waiting for the same signal
    f = unique_farm(make_farm, backend)
    ready = tmp_path / "ready"
    p = subprocess.Popen([sys.executable, "-c", DISPATCHERS, str(f.manifest), str(ready), str(f.out)],
                         cwd=f.tmp, env=f.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    f.procs.append(p)
    f.wait_for(lambda: len(list(tmp_path.glob("ready.?"))) == 8, timeout=60, what="8 dispatchers ready")
    # When they all dispatch the same unique job at once
    (tmp_path / "ready.go").touch()
    _, err = p.communicate(timeout=60)
    # Then exactly one got an id, the others None, and one job is queued
    ids = [(tmp_path / f"ready.{n}.id").read_text() for n in range(8) if (tmp_path / f"ready.{n}.id").exists()]
    assert len(ids) == 8, err
    assert sum(i != "None" for i in ids) == 1, ids
    assert sum(c["ready"] for c in f.queue().counts().values()) == 1


@pytest.mark.parametrize("backend", ["sqlite", "redis", "amqp"])
def test_a_unique_lock_is_freed_when_its_job_is_done_or_has_finally_failed(make_farm, backend):
    # Given a unique job that will succeed and one that will fail for good, each dispatched twice
    f = unique_farm(make_farm, backend)
    first = OnlyOnce(str(f.out), "a").dispatch()
    assert first is not None
    assert OnlyOnce(str(f.out), "a").dispatch() is None          # a duplicate: nothing written
    assert OnlyOnceFailing(str(f.out), "b", fail=True).dispatch() is not None
    assert OnlyOnceFailing(str(f.out), "b", fail=True).dispatch() is None
    assert sum(c["ready"] for c in f.queue().counts().values()) == 2
    # When a worker runs them
    assert f.worker("--stop-when-empty").wait(30) == 0
    assert sorted(f.lines()) == ["a 1", "b 1"]
    # Then each can be dispatched again: done and finally failed both freed their locks
    again = OnlyOnce(str(f.out), "a").dispatch()
    assert again is not None and again != first
    assert OnlyOnceFailing(str(f.out), "b", fail=True).dispatch() is not None


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_a_unique_until_processing_lock_is_freed_when_the_job_starts(make_farm, backend):
    # Given a job unique until it starts, queued, and its duplicate refused
    f = unique_farm(make_farm, backend)
    assert UniqueUntilStart(str(f.out)).dispatch() is not None
    assert UniqueUntilStart(str(f.out)).dispatch() is None
    # When a worker starts it (it then waits for the test)
    w = f.worker("--stop-when-empty")
    f.wait_for(lambda: f.lines(), what="the job to start")
    # Then a copy is accepted while the first still runs
    assert UniqueUntilStart(str(f.out)).dispatch() is not None
    (f.tmp / "out.txt.go").touch()
    assert w.wait(30) == 0
    assert len(f.lines()) == 2


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_a_unique_lock_expires_after_unique_for_even_while_the_first_copy_is_queued(make_farm, backend):
    # Given a job unique for 1 s, queued, and no worker
    f = unique_farm(make_farm, backend)
    started = time.monotonic()
    assert ShortUnique().dispatch() is not None
    assert ShortUnique().dispatch() is None
    # When a second copy is dispatched until one is accepted
    f.wait_for(lambda: ShortUnique().dispatch(), timeout=10, what="the lock to expire")
    # Then that took unique_for, and both copies are queued
    assert time.monotonic() - started >= 0.95
    assert sum(c["ready"] for c in f.queue().counts().values()) == 2


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "redis"])
def test_without_overlapping_never_runs_two_jobs_holding_a_key_at_once_across_two_workers(make_farm, backend, tmp_path):
    # Given 4 jobs sharing one WithoutOverlapping key and two workers taking one job at a time
    f = unique_farm(make_farm, backend)
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    workers = [spawn(f, log, "--prefetch", "1") for log in logs]
    f.wait_for(lambda: all(events(log, "worker.start") for log in logs), what="two workers")
    farm.dispatch_many([Exclusive(str(f.out)) for _ in range(4)])
    # When they have run them all
    f.wait_for(lambda: len(f.lines()) == 4, timeout=30, what="4 jobs")
    stop(*workers)
    # Then no two ran at the same time (from the times the jobs wrote), none used an attempt
    # on being held back, and the workers did hold jobs back (the key was contended)
    runs = sorted(tuple(float(x) for x in line.split()[:2]) for line in f.lines())
    for (_, end), (start, _) in zip(runs, runs[1:]):
        assert start >= end, runs
    assert {line.split()[2] for line in f.lines()} == {"1"}
    assert sum(len(events(log, "job.held_back")) for log in logs) >= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_held_back_job_uses_no_attempt_and_waits_its_delay_without_spinning(make_farm, backend, tmp_path):
    # Given the key its WithoutOverlapping wants, held by someone else
    f = unique_farm(make_farm, backend)
    store = f.store()
    _, expires = store.incr("overlap:gate", 1, 60)
    job_id = HeldBack(str(f.out)).dispatch()
    log = tmp_path / "w.log"
    # When a worker is held back by it three times (release_after=0.3)
    began = time.monotonic()
    w = spawn(f, log)
    f.wait_for(lambda: len(events(log, "job.held_back")) >= 3, timeout=30, what="3 hold-backs")
    held, elapsed = len(events(log, "job.held_back")), time.monotonic() - began
    # Then it waited out each delay (no busy loop), and once the key is free the job runs on
    # its first attempt: the hold-backs counted neither as attempts nor as crashes
    assert held <= elapsed / 0.3 + 2, (held, elapsed)
    assert store.drop("overlap:gate", expires)
    f.wait_for(lambda: f.lines(), what="the job to run")
    stop(w)
    assert [line.split()[0] for line in f.lines()] == ["1"]
    assert events(log, "job.done") and not events(log, "job.failed")
    assert job_id is not None


@pytest.mark.parametrize("backend", ["mysql", "amqp"])
def test_rate_limited_counts_starts_across_two_workers_in_fixed_one_minute_windows(make_farm, backend, tmp_path):
    # Given 6 jobs of 0.5 s limited to 3 starts a minute and two workers taking one job at a
    # time (a job long enough that one worker cannot take them all before the other looks)
    f = unique_farm(make_farm, backend)
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    workers = [spawn(f, log, "--prefetch", "1", "--sleep", "0.2") for log in logs]
    f.wait_for(lambda: all(events(log, "worker.start") for log in logs), what="two workers")
    farm.dispatch_many([Limited(str(f.out), 0.5) for _ in range(6)])
    store = f.store()

    def took_part(log: Path) -> bool:
        return bool(events(log, "job.held_back") or events(log, "job.done"))

    # When every job has been tried (the limiter's count reaches 6) or a new minute let them all
    # run, and both workers have taken a job
    f.wait_for(lambda: (len(f.lines()) == 6 or (len(f.lines()) >= 3 and store.incr("rate:mailer", 0, 0)[0] >= 6))
               and all(took_part(log) for log in logs), timeout=70, what="6 tries by both workers")
    stop(*workers)
    # Then no minute saw more than 3 starts, both workers took part, and held-back jobs stay queued
    per_minute: dict[int, int] = {}
    for line in f.lines():
        minute = int(float(line.split()[0]) // 60)
        per_minute[minute] = per_minute.get(minute, 0) + 1
    assert max(per_minute.values()) <= 3, per_minute
    assert all(took_part(log) for log in logs)
    assert len(f.lines()) == 6 or sum(len(events(log, "job.held_back")) for log in logs) >= 3


def test_throttles_exceptions_holds_a_job_back_after_n_exceptions_until_the_window_ends(make_farm, tmp_path):
    # Given a job that always raises, throttled after 2 exceptions a minute
    f = unique_farm(make_farm, "sqlite")
    job_id = Throttled(str(f.out)).dispatch()
    log = tmp_path / "w.log"
    # When a worker has run it twice
    w = spawn(f, log)
    f.wait_for(lambda: events(log, "job.held_back"), what="a hold-back")
    stop(w)
    # Then its third attempt is held back (delayed for most of a minute), not run
    assert f.lines() == ["1", "2"]
    status = farm.job_status(job_id)
    assert status["state"] == "delayed" and status["attempts"] == 2, status
    delay = float(events(log, "job.held_back")[0].split("delay=")[1].split()[0])
    assert 50 < delay <= 60


def test_dispatch_sync_runs_a_jobs_own_middleware_around_handle(make_farm):
    # Given a job with a middleware of its own (a class with handle(job, next))
    f = unique_farm(make_farm, "sqlite")
    # When it is run with dispatch_sync
    result = farm.dispatch_sync(Wrapped(str(f.out)))
    # Then the middleware ran around handle() and handle()'s result came back
    assert result == "handled"
    assert f.lines() == ["before", "handle", "after"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql", "redis", "memory"])
def test_store_counters_count_up_expire_and_drop_only_for_their_holder(make_farm, backend):
    # Given a store
    if backend == "memory":
        from farm.locks import MemoryLocks
        store = MemoryLocks()
    else:
        store = unique_farm(make_farm, backend).store()
    # When a counter is incremented, Then it counts from 1 with one expiry
    one, expires = store.incr("c", 1, 30)
    assert (one, store.incr("c", 2, 99)) == (1, (3, expires))
    # a drop with another expiry (a later holder's lock) leaves it; its own drops it
    assert store.drop("c", expires + 1) is False
    assert store.drop("c", expires) is True
    assert store.incr("c", 1, 30)[0] == 1
    # and names that differ in case, accents or trailing spaces are different counters
    assert [store.incr(name, 1, 30)[0] for name in ("k:ABC", "k:abc", "k:abc ", "k:Ábc")] == [1, 1, 1, 1]
    # and an expired counter starts again from 0 with a new expiry
    _, short = store.incr("short", 1, 0.3)
    again, renewed = wait_until(lambda: (r := store.incr("short", 1, 30))[0] == 1 and r, 5, "expiry")
    assert renewed > short


def test_dispatch_many_takes_each_unique_jobs_lock_and_returns_none_for_a_duplicate(make_farm):
    # Given a unique job already queued
    f = unique_farm(make_farm, "sqlite")
    assert OnlyOnce(str(f.out), "a").dispatch() is not None
    # When dispatch_many is given it again, a new one twice and a plain job
    ids = farm.dispatch_many([OnlyOnce(str(f.out), "a"), OnlyOnce(str(f.out), "b"), OnlyOnce(str(f.out), "b"),
                              Wrapped(str(f.out))])
    # Then the duplicates got None and wrote nothing
    assert ids[0] is None and ids[1] is not None and ids[2] is None and ids[3] is not None
    assert sum(c["ready"] for c in f.queue().counts().values()) == 3


def test_without_overlapping_holds_across_the_job_threads_of_one_worker(make_farm, tmp_path):
    # Given 4 jobs sharing one key and a worker running 3 job threads
    f = unique_farm(make_farm, "mysql")
    log = tmp_path / "w.log"
    w = spawn(f, log, "--concurrency", "3")
    farm.dispatch_many([Exclusive(str(f.out), 0.2) for _ in range(4)])
    # When it has run them all
    f.wait_for(lambda: len(f.lines()) == 4, timeout=30, what="4 jobs")
    stop(w)
    # Then no two ran at once, and the threads were held back on attempts that did not count
    runs = sorted(tuple(float(x) for x in line.split()[:2]) for line in f.lines())
    for (_, end), (start, _) in zip(runs, runs[1:]):
        assert start >= end, runs
    assert {line.split()[2] for line in f.lines()} == {"1"}
    assert events(log, "job.held_back")


ASYNC_SCRIPT = """
import os, sys, time
import farm
from uniquejobs import Exclusive, Gated
out = sys.argv[1]
first = Gated(out).dispatch()
assert first is not None and Gated(out).dispatch() is None, "a duplicate was queued"
open(out + ".go", "w").close()
deadline = time.monotonic() + 20   # well inside unique_for (60 s): only the job's end frees it
while Gated(out).dispatch() is None:
    assert time.monotonic() < deadline, "the lock was not freed when the job was done"
    time.sleep(0.01)
farm.dispatch_many([Exclusive(out + ".x", 0.1) for _ in range(4)])
"""


def test_the_async_driver_keeps_unique_locks_and_middleware_state_in_its_own_process(tmp_path):
    # Given an async connection with 3 pool threads
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "farm.yaml").write_text(
        "imports: [testjobs, uniquejobs]\ndefault: dev\nconnections:\n  dev: {driver: async, workers: 3}\n")
    from test_async_driver import env
    # When a script dispatches a unique job twice, then 4 jobs sharing a WithoutOverlapping key
    out = tmp_path / "out.txt"
    cp = subprocess.run([sys.executable, "-c", ASYNC_SCRIPT, str(out)], cwd=tmp_path, env=env(tmp_path),
                        capture_output=True, text=True, timeout=60)
    # Then the duplicate was refused, the lock freed once done, and the 4 jobs never overlapped
    assert cp.returncode == 0, cp.stderr
    assert out.read_text().splitlines() == ["ran", "ran"]
    runs = sorted(tuple(float(x) for x in line.split()[:2]) for line in (tmp_path / "out.txt.x").read_text().splitlines())
    assert len(runs) == 4
    for (_, end), (start, _) in zip(runs, runs[1:]):
        assert start >= end, runs


def test_a_without_overlapping_lock_held_by_a_killed_worker_expires_after_the_jobs_timeout(make_farm, tmp_path):
    # Given a worker running a job that holds the "hog" key (timeout 1.5 s)
    f = unique_farm(make_farm, "sqlite")
    a = spawn(f, tmp_path / "a.log")
    Hog(str(f.out), "first", 30).dispatch()
    f.wait_for(lambda: f.lines(), what="the first job to start")
    # When that worker is killed (SIGKILL: no finally runs) and another job wants the key
    a.send_signal(signal.SIGKILL)
    a.wait(10)
    Hog(str(f.out), "second", 0).dispatch()
    b = spawn(f, tmp_path / "b.log")
    f.wait_for(lambda: len(f.lines()) == 2, timeout=15, what="the second job to start")
    stop(b)
    # Then the second started once the lock had expired: the job's timeout after the first began
    first, second = (float(line.split()[2]) for line in f.lines())
    assert 1.4 <= second - first <= 6, (first, second)
    assert events(tmp_path / "b.log", "job.held_back")


def test_a_throttled_job_that_succeeded_is_not_run_again_when_the_store_fails_to_clear_its_count(make_farm, tmp_path):
    # Given a throttled job that raised once, then succeeds while its store's counters go away
    f = unique_farm(make_farm, "sqlite")
    locks = f.queue().config.table + "_locks"
    job_id = ThrottledThenFine(str(f.out), str(tmp_path / "farm.db"), locks).dispatch()
    log = tmp_path / "w.log"
    # When a worker has run it until it is done or retried after that success
    w = spawn(f, log)
    f.wait_for(lambda: events(log, "job.done") or len(events(log, "job.retry")) >= 2, what="the job to settle")
    stop(w)
    # Then the success stands: done on its second attempt, never retried after it
    assert f.lines() == ["1", "2"]
    assert events(log, "job.done") and len(events(log, "job.retry")) == 1, log.read_text()
    assert job_id is not None


def test_a_job_whose_middleware_cannot_reach_the_store_is_held_back_without_using_an_attempt(make_farm, tmp_path):
    # Given an amqp worker whose store (PostgreSQL, through a relay) went away after it started
    f = unique_farm(make_farm, "amqp")
    relay = Proxy(free_port(), ("127.0.0.1", 5432))
    relay.start()
    text = f.manifest.read_text()
    start = text.index("url: sqlite:///")
    f.manifest.write_text(text[:start] + f"url: postgresql://postgres@127.0.0.1:{relay.port}/test"
                          + text[text.index("\n", start):])
    log = tmp_path / "w.log"
    w = spawn(f, log)
    f.wait_for(lambda: events(log, "worker.start"), what="the worker")
    relay.close()                   # every connection cut, new ones refused
    # When it takes a rate-limited job that has one try
    LimitedOnce(str(f.out)).dispatch()
    wait_until(lambda: events(log, "job.held_back") or events(log, "job.failed") or None, 30,
                         "the job to settle", explain=lambda: log.read_text()[-3000:])
    stop(w)
    # Then it was held back (its one try kept, the store's error logged), not failed or run
    held = events(log, "job.held_back")
    assert held and not events(log, "job.failed"), log.read_text()
    assert "cannot be reached" in held[0] and f.lines() == []


def test_a_without_overlapping_lock_outlives_a_job_that_ignores_its_timeout_until_the_watchdog_ends_it(make_farm, tmp_path):
    # Given a worker running a job that holds the "stubborn" key and ignores its 1 s timeout
    f = unique_farm(make_farm, "sqlite")
    a = spawn(f, tmp_path / "a.log")
    Stubborn(str(f.out), "first", 10).dispatch()
    f.wait_for(lambda: f.lines(), what="the first job to start")
    # When a second worker takes another job that wants the key
    Stubborn(str(f.out), "second", 0).dispatch()
    b = spawn(f, tmp_path / "b.log")
    f.wait_for(lambda: any(line.startswith("start second") for line in f.lines()), timeout=20,
               what="the second job to start")
    stop(b)
    assert a.wait(10) == 1          # the watchdog ended the first worker
    # Then the second started only after the first had stopped running
    first_alive = max(float(line.split()[2]) for line in f.lines() if line.split()[1] == "first")
    second = next(float(line.split()[2]) for line in f.lines() if line.startswith("start second"))
    assert second > first_alive, f.lines()
    assert events(tmp_path / "b.log", "job.held_back")


def test_dispatch_many_that_refuses_a_later_job_leaves_no_unique_lock_behind(make_farm):
    # Given a unique job followed by something that is not a job
    f = unique_farm(make_farm, "sqlite")
    # When dispatch_many refuses the batch
    with pytest.raises(farm.SerializationError):
        farm.dispatch_many([OnlyOnce(str(f.out), "k"), object()])
    # Then nothing was queued and the unique job can be dispatched at once
    assert sum(c["ready"] for c in f.queue().counts().values()) == 0
    assert OnlyOnce(str(f.out), "k").dispatch() is not None


def test_a_document_naming_a_middleware_counter_as_its_unique_lock_cannot_free_it(make_farm, tmp_path):
    # Given the "gate" overlap lock held, and a pushed document that names it as its unique lock
    f = unique_farm(make_farm, "sqlite")
    store = f.store()
    _, expires = store.incr("overlap:gate", 1, 60)
    jid = str(uuid.uuid4())
    body = json.dumps({"v": 1, "id": jid, "job": "testjobs:Noop", "data": {}, "queue": "default",
                       "attempts": 0, "unique": {"key": "overlap:gate", "expires": expires, "until": "processing"}})
    f.queue().push([Outgoing(id=jid, queue="default", body=body, available_at=time.time())])
    # When a worker has run it
    log = tmp_path / "w.log"
    assert spawn(f, log, "--stop-when-empty").wait(30) == 0
    assert events(log, "job.done")
    # Then the overlap lock is still held by its holder
    assert store.incr("overlap:gate", 0, 0) == (1, expires)


def test_a_unique_job_dispatched_after_commit_keeps_its_lock_only_if_the_transaction_commits(make_farm):
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    # Given unique jobs dispatched after_commit on a Connection and on a Session
    f = unique_farm(make_farm, "sqlite")
    engine = sa.create_engine(f.app.connection("main").url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            tx = conn.begin()
            assert farm.dispatch(OnlyOnce(str(f.out), "c"), after_commit=conn) is not None
            # When the transactions roll back
            tx.rollback()
        with Session(engine) as s:
            assert farm.dispatch(OnlyOnce(str(f.out), "s"), after_commit=s) is not None
            s.rollback()
            # Then the jobs were never queued and may be dispatched again at once
            assert OnlyOnce(str(f.out), "c").dispatch() is not None
            assert OnlyOnce(str(f.out), "s").dispatch() is not None
            # and one whose transaction commits keeps its lock: a copy is refused
            assert farm.dispatch(OnlyOnce(str(f.out), "t"), after_commit=s) is not None
            s.commit()
        with engine.connect() as conn:
            with conn.begin():
                assert farm.dispatch(OnlyOnce(str(f.out), "u"), after_commit=conn) is not None
            conn.rollback()         # a later rollback on the same connection frees nothing
    finally:
        engine.dispose()
    assert OnlyOnce(str(f.out), "t").dispatch() is None and OnlyOnce(str(f.out), "u").dispatch() is None
    assert sum(c["ready"] for c in f.queue().counts().values()) == 4


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_a_unique_job_dispatched_after_the_callers_own_write_takes_its_lock_in_that_transaction(make_farm, backend):
    import sqlalchemy as sa

    # Given an application transaction that has written a row of its own (on SQLite it now
    # holds the one write lock)
    f = unique_farm(make_farm, backend)
    f.queue()                           # the farm's connection opened before (as in a running app)
    engine = sa.create_engine(f.app.connection("main").url, poolclass=sa.pool.NullPool)
    table = "app_" + f.app.connection("main").table
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE {table} (x INTEGER)")
        with engine.connect() as conn:
            tx = conn.begin()
            conn.exec_driver_sql(f"INSERT INTO {table} (x) VALUES (1)")
            # When it dispatches a unique job, and a copy of it, after_commit
            started = time.monotonic()
            first = farm.dispatch(OnlyOnce(str(f.out), "w"), after_commit=conn)
            copy = farm.dispatch(OnlyOnce(str(f.out), "w"), after_commit=conn)
            # Then the lock was taken in that transaction at once (no wait on another
            # connection), the copy refused, and a rollback takes the lock back with the job
            assert time.monotonic() - started < 5
            assert first is not None and copy is None
            tx.rollback()
        assert OnlyOnce(str(f.out), "w").dispatch() is not None
        assert OnlyOnce(str(f.out), "w").dispatch() is None
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        engine.dispose()
