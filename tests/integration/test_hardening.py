"""Regression tests of the hardening issue (#12), through real worker processes and servers."""
from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
import uuid

import pytest

import farm
from conftest import DB_BACKENDS, PG_URL
from farm.drivers.base import Outgoing
from tcpproxy import Proxy, free_port
from testjobs import Record, SlowFailedHook, Sleeper


def _raw_push(f, bodies: list[str], queue: str = "default") -> None:
    """Store documents as another program would, past `push`'s checks."""
    now = time.time()
    f.queue().push([Outgoing(id=str(uuid.uuid4()), queue=queue, body=b, available_at=now) for b in bodies])


def _doc(**over) -> dict:
    doc = {"v": 1, "id": str(uuid.uuid4()), "job": "testjobs:Record", "data": {"path": "/dev/null", "tag": "x"}}
    doc.update(over)
    return doc


@pytest.mark.parametrize("backend", ["sqlite", "amqp"])
def test_issue_12_a_pushed_job_naming_os_system_through_an_allowed_module_never_runs(make_farm, backend):
    f = make_farm(backend)
    marker = f.tmp / "pwned"
    for name in ("testjobs:farm.app.os.system", "testjobs:os.system"):
        doc = _doc(job=name, data={"command": f"touch {marker}"})
        f.farmctl("push", json.dumps(doc), check=True)
    cp = f.farmctl("work", "--stop-when-empty", timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert not marker.exists()
    failed = f.store().failed()
    assert len(failed) == 2
    assert all("defines no job" in e.exception.splitlines()[0] for e in failed)


@pytest.mark.parametrize("backend", DB_BACKENDS + ["amqp"])
def test_issue_12_malformed_documents_are_failed_one_line_each_and_the_worker_goes_on(make_farm, backend):
    f = make_farm(backend)
    bad = [
        json.dumps(_doc(data={"path": "/dev/null", "tag": {"$decimal": "abc"}})),
        json.dumps(_doc(data={"path": "/dev/null", "tag": {"$bytes": "!!"}})),
        json.dumps(_doc(data={"path": "/dev/null", "tag": "x", "_farm_outcome": ["fail", "x"]})),
        json.dumps(_doc(data={"path": "/dev/null", "tag": "x", "queue": "elsewhere"})),
        json.dumps(_doc(timeout="soon")),
        json.dumps(_doc(backoff=["a"])),
        json.dumps(_doc(tries=-1)),
        json.dumps(_doc(timeout=1e300)),
        '{"v": 1, "id": "deep", "job": "testjobs:Record", "data": {"x": ' + "[" * 50_000 + "]" * 50_000 + "}}",
        "not json at all",
        "[1, 2]",
    ]
    _raw_push(f, bad)
    farm.dispatch(Record(str(f.out), "after"))
    cp = f.farmctl("work", "--stop-when-empty", timeout=120)
    assert cp.returncode == 0, cp.stderr[-2000:]
    assert "Traceback" not in cp.stderr
    assert [x.split()[0] for x in f.lines()] == ["after"]
    failed = f.store().failed()
    assert len(failed) == len(bad)
    assert all(e.exception.startswith("PayloadError: ") for e in failed), [e.exception[:80] for e in failed]
    counts = f.queue().counts().get("default", {})
    assert counts.get("ready", 0) == 0 and not counts.get("reserved")


def test_issue_12_a_second_term_during_the_failed_hook_lets_the_finished_job_settle(make_farm):
    f = make_farm("sqlite")
    jid = farm.dispatch(SlowFailedHook(str(f.out), 1.5))
    p = f.worker("--sleep", "0.2")
    f.wait_for(lambda: "failed-start" in f.lines(), what="the failed() hook to start")
    p.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 1
    assert f.lines()[1:] == ["failed-start", "failed-end"]        # the hook ran to its end, once
    assert [e.id for e in f.store().failed()] == [jid]
    assert f.queue().counts().get("default", {}).get("ready", 0) == 0


def test_issue_12_sigquit_lets_the_running_job_finish_and_exits_0(make_farm):
    f = make_farm("sqlite")
    farm.dispatch(Sleeper(str(f.out), 1.0))
    p = f.worker("--sleep", "0.2")
    f.wait_for(lambda: any(x.startswith("start") for x in f.lines()), what="the job to start")
    p.send_signal(signal.SIGQUIT)
    assert p.wait(30) == 0
    assert [x.split()[0] for x in f.lines()] == ["start", "end"]
    assert "reason=signal signal=SIGQUIT" in p.stderr.read()


@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_issue_12_renew_pushes_on_only_the_reservations_the_worker_still_holds(make_farm, backend):
    f = make_farm(backend, retry_after=30)
    q = f.queue()
    farm.dispatch(Record("/dev/null", "a"))
    farm.dispatch(Record("/dev/null", "b"))
    held = q.reserve(["default"], 2, 0)
    assert len(held) == 2
    time.sleep(0.05)
    q.retry_after = 300
    q.renew(held[:1])               # the second is no longer tracked (e.g. its ack was lost)
    with q._cursor() as cur:
        cur.execute(q.sql._q(f"SELECT id, available_at FROM {q.config.table} ORDER BY id"))
        until = dict(cur.fetchall())
    assert until[held[0].handle] > time.time() + 200
    assert until[held[1].handle] < time.time() + 31


def test_issue_12_the_heart_threads_connection_errors_never_drop_the_main_threads(make_farm):
    f = make_farm("postgresql")
    q = f.queue()

    def backend_pid() -> int:
        with q._cursor("fast") as cur:
            cur.execute("SELECT pg_backend_pid()")
            return cur.fetchone()[0]

    before = backend_pid()
    t = threading.Thread(target=lambda: (q.counts(), q._drop()))   # as the heart does on an error
    t.start()
    t.join()
    assert backend_pid() == before


def test_issue_12_a_worker_started_before_its_database_waits_for_it_and_then_works(make_farm, tmp_path):
    from sqlalchemy.engine import make_url

    make_farm("postgresql")                    # checks the server is there (fails under CI if not)
    real = make_url(PG_URL)
    port = free_port()
    proxy = Proxy(port, (real.host or "127.0.0.1", real.port or 5432))
    conf = tmp_path / "late" / "conf"
    conf.mkdir(parents=True)
    table = "late" + uuid.uuid4().hex[:8]
    (conf / "farm.yaml").write_text(
        "imports: [testjobs]\ndefault: main\nconnections:\n  main:\n    driver: database\n"
        f"    url: {real.set(port=port).render_as_string(hide_password=False)}\n"
        f"    table: {table}\n    failed_table: f{table}\n")
    f = make_farm("sqlite")
    env = f.env()
    env["FARM_CONFIG"] = str(conf / "farm.yaml")
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "farm", "work", "--sleep", "0.2"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    f.procs.append(p)
    try:
        time.sleep(2.0)                        # the database is 'down' for two seconds of backoff
        assert p.poll() is None, p.stderr.read()
        proxy.start()
        farm.configure(conf / "farm.yaml")
        out = tmp_path / "late.txt"
        farm.dispatch(Record(str(out), "up"))
        f.wait_for(lambda: out.exists() and out.read_text().startswith("up "), timeout=30, what="the job to run")
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
        stderr = p.stderr.read()
        assert stderr.count("worker.unavailable") == 1, stderr
    finally:
        farm.app._close_all()
        proxy.close()


def test_issue_12_dispatch_raises_only_farm_errors_when_the_database_refuses(make_farm):
    f = make_farm("sqlite")
    farm.dispatch(Record("/dev/null", "first"))
    table = f.queue().config.table
    db = sqlite3.connect(str(f.tmp / "farm.db"))
    db.execute(f"DROP TABLE {table}")
    db.commit()
    db.close()
    with pytest.raises(farm.FarmError):
        farm.dispatch(Record("/dev/null", "second"))


def test_issue_12_a_clean_exit_leaves_no_acked_job_behind_on_postgresql(make_farm):
    """Acks are pipelined on PostgreSQL: the worker reads every reply before it exits."""
    f = make_farm("postgresql")
    farm.dispatch_many([Record(str(f.out), str(i)) for i in range(300)])
    cp = f.farmctl("work", "--max-jobs", "300", "--sleep", "0.1", timeout=120)
    assert cp.returncode == 0, cp.stderr[-2000:]
    assert len(f.lines()) == 300
    with f.queue()._cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {f.queue().config.table}")
        assert cur.fetchone()[0] == 0


def test_issue_12_a_row_that_is_not_utf8_is_failed_and_its_batch_still_runs_on_sqlite(make_farm):
    f = make_farm("sqlite")
    farm.dispatch_many([Record(str(f.out), str(i)) for i in range(3)])
    table = f.queue().config.table
    db = sqlite3.connect(str(f.tmp / "farm.db"))
    db.execute(f"INSERT INTO {table} (uuid, queue, payload, attempts, available_at, created_at) "
               "VALUES ('not-utf8', 'default', CAST(x'ff7b22' AS TEXT), 0, 0, 0)")
    db.commit()
    db.close()
    cp = f.farmctl("work", "--stop-when-empty", timeout=60)
    assert cp.returncode == 0, cp.stderr[-2000:]
    assert sorted(x.split()[0] for x in f.lines()) == ["0", "1", "2"]
    (entry,) = f.store().failed()
    assert entry.id == "not-utf8" and entry.exception.startswith("PayloadError: ")


def test_issue_12_a_job_raising_a_base_exception_is_failed_and_the_worker_goes_on(make_farm):
    from testjobs import RaisesBaseException

    f = make_farm("sqlite")
    jid = farm.dispatch(RaisesBaseException(str(f.out)))
    farm.dispatch(Record(str(f.out), "next"))
    cp = f.farmctl("work", "--stop-when-empty", timeout=60)
    assert cp.returncode == 0, cp.stderr[-2000:]
    assert [x.split()[0] for x in f.lines()] == ["attempt", "failed", "next"]
    assert [e.id for e in f.store().failed()] == [jid]
    assert f.store().failed()[0].exception.startswith("CancelledError: cancelled inside the job")


@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_issue_12_dispatch_refuses_what_the_database_cannot_store_with_a_farm_error(make_farm, backend):
    make_farm(backend)
    for bad in ("x" * 300, "q\udcff"):
        with pytest.raises(farm.FarmError):
            farm.dispatch(Record("/dev/null", "t"), queue=bad)


@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_issue_12_a_worker_whose_reservation_was_taken_does_not_fail_the_job_nor_call_its_hook(make_farm, backend):
    from farm import payload
    from farm.drivers.database import DatabaseQueue
    from farm.log import Log
    from farm.worker.lifecycle import Lifecycle
    from farm.worker.options import WorkerOptions
    from farm.worker.retry import Decision
    from farm.worker.runner import Runner
    from testjobs import GivesUp

    # Given a job whose first worker's reservation lapsed and a second worker now holds
    f = make_farm(backend, retry_after=1)
    farm.dispatch(GivesUp(str(f.out)))
    first = DatabaseQueue(f.app.connection("main"))
    second = DatabaseQueue(f.app.connection("main"))
    (mine,) = first.reserve(["default"], 1, 0)
    (theirs,) = f.wait_for(lambda: second.reserve(["default"], 1, 0), timeout=10, what="the lapse")
    options = WorkerOptions(connection="main")
    runner = Runner(first, payload.Registry(["testjobs"]), options, Log(level="error"),
                    Lifecycle(options, time.monotonic()))
    # When the first worker fails it late
    outcome = runner.settle(runner.prepare(mine), RuntimeError("late"), decided=Decision(False, reason="t"))
    # Then nothing is failed, no hook runs, and the second worker still holds it
    assert outcome == "lost" and f.lines() == [] and f.store().failed() == []
    assert f.queue().counts()["default"]["reserved"] == 1
    second.ack(theirs)
    second.close()                  # settles PostgreSQL's pipelined ack
    first.close()
    assert f.queue().counts().get("default", {}).get("reserved", 0) == 0


def test_issue_12_setting_a_stamp_twice_to_the_same_value_works_on_mariadb(make_farm):
    f = make_farm("mysql")
    store = f.store()
    store.set_stamp("restart", 1.0)
    store.set_stamp("restart", 1.0)
    assert store.stamp("restart") == 1.0
