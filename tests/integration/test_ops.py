"""Operating a farm: failed jobs, retry/forget/flush/prune, clear, status, raw pushes, listen."""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pytest

import farm
from conftest import BACKENDS, DB_BACKENDS, MY_URL, PG_URL, mysql_cli, mysql_params, pg_conninfo
from testjobs import Flaky, Record


def _fail_some(f, n=3, queue="default"):
    ids = [farm.dispatch(Flaky(str(f.out)), tries=1, queue=queue) for _ in range(n)]
    p = f.worker("--queue", queue, "--stop-when-empty")
    assert p.wait(60) == 0
    return ids


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_lists_shows_and_retries_jobs_under_their_ids(make_farm, backend):
    f = make_farm(backend)
    ids = _fail_some(f)
    rows = json.loads(f.farmctl("failed", "--json", check=True).stdout)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert {r["job"] for r in rows} == {"testjobs:Flaky"} and {r["attempts"] for r in rows} == {1}
    assert all(r["exception"] == "ValueError: boom on attempt 1" for r in rows)
    table = f.farmctl("failed", check=True).stdout
    assert ids[0] in table and "ValueError: boom on attempt 1" in table
    shown = f.farmctl("failed", "show", ids[0], check=True).stdout
    assert "Traceback" in shown and '"job": "testjobs:Flaky"' in shown
    missing = f.farmctl("failed", "show", "nope")
    assert missing.returncode == 1 and "no failed job with id nope" in missing.stderr

    f.farmctl("retry", ids[0], check=True)
    assert ids[0] not in [r["id"] for r in json.loads(f.farmctl("failed", "--json").stdout)]
    (r,) = f.queue().reserve(["default"], 10, 1.0)
    assert r.id == ids[0] and r.attempts == 1 and json.loads(r.body)["attempts"] == 0
    f.queue().ack(r)
    assert f.farmctl("retry", "nope").returncode == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_forget_flush_prune_and_clear(make_farm, backend):
    f = make_farm(backend)
    ids = _fail_some(f, 3)
    assert "1 failed job(s) forgotten" in f.farmctl("forget", ids[0], check=True).stdout
    assert f.farmctl("forget", ids[0]).returncode == 1
    assert "0 failed job(s) older than 24h deleted" in f.farmctl("prune-failed", check=True).stdout
    assert "2 failed job(s) older than 0h deleted" in f.farmctl("prune-failed", "--hours", "0", check=True).stdout
    _fail_some(f, 2)
    assert "2 failed job(s) deleted" in f.farmctl("flush", check=True).stdout
    farm.dispatch(Record(str(f.out), "a"), queue="q")
    farm.dispatch(Record(str(f.out), "b"), queue="q")
    farm.dispatch(Record(str(f.out), "later"), queue="q", delay=60)
    assert "2 job(s) cleared from q" in f.farmctl("clear", "--queue", "q", check=True).stdout
    assert f.queue().counts()["q"]["delayed"] == 1


def test_retry_all_of_a_queue_moves_only_that_queue(make_farm):
    f = make_farm("sqlite")
    a = _fail_some(f, 2, queue="a")
    b = _fail_some(f, 2, queue="b")
    assert "2 job(s)" in f.farmctl("retry", "all", "--queue", "a", check=True).stdout
    left = [r["id"] for r in json.loads(f.farmctl("failed", "--json").stdout)]
    assert sorted(left) == sorted(b)
    assert sorted(r.id for r in f.queue().reserve(["a"], 10, 1.0)) == sorted(a)


def test_retry_all_of_twenty_thousand_streams_in_bounded_memory(make_farm):
    import tracemalloc

    from click.testing import CliRunner

    from farm.cli import cli

    f = make_farm("postgresql")
    q = f.queue()
    pad = "x" * 2000
    rows = [(str(uuid.uuid4()), "main", "bulk",
             json.dumps({"v": 1, "id": "", "job": "testjobs:Noop", "data": {"pad": pad}, "attempts": 1}),
             "ValueError: x", time.time()) for _ in range(20000)]
    with q._cursor(tx=True) as cur:
        cur.executemany(q.sql.insert_failed, rows)
    tracemalloc.start()
    result = CliRunner().invoke(cli, ["--config", str(f.manifest), "retry", "all"])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.exit_code == 0, result.output
    assert "20000 job(s)" in result.output
    assert peak < 15 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB: retry all must stream (all rows are ~45 MB)"
    assert q.count_failed() == 0
    with q._cursor() as cur:
        cur.execute(f"SELECT COUNT(*), COUNT(DISTINCT uuid) FROM {f_table(f)} WHERE queue = 'bulk'")
        assert cur.fetchone() == (20000, 20000)


def f_table(f):
    """The jobs table of the test's connection, created (as a worker's first use would)."""
    from farm import app

    f.queue()
    return app.manifest().connections["main"].table


def test_status_json_has_the_documented_shape_and_live_workers(make_farm):
    f = make_farm("sqlite")
    farm.dispatch(Record(str(f.out), "slow", seconds=3))
    farm.dispatch(Record(str(f.out), "later"), delay=60)
    p = f.worker("--sleep", "0.1")
    f.wait_for(lambda: f.lines(f.tmp / "out.txt.started"), what="the job to start")

    def busy():
        doc = json.loads(f.farmctl("status", "--json", check=True).stdout)
        return doc if doc["workers"] and doc["workers"][0]["state"] == "busy" else None

    doc = f.wait_for(busy, timeout=10, what="a busy worker in status")
    assert set(doc) >= {"queues", "workers", "supervisor"} and doc["supervisor"] is None
    assert doc["queues"]["default"] == {"ready": 0, "delayed": 1, "reserved": 1, "failed": 0}
    (w,) = doc["workers"]
    assert set(w) >= {"host", "pid", "pipeline", "queues", "job", "done", "rss_mb", "heartbeat"}
    assert w["pid"] == p.pid and w["job"] == "testjobs:Record" and w["queues"] == ["default"]
    assert "busy" in f.farmctl("status", check=True).stdout
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    assert json.loads(f.farmctl("status", "--json").stdout)["workers"] == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_status_calls_a_worker_lost_once_it_is_silent_for_longer_than_retry_after(make_farm, backend):
    # Given a worker's heartbeat (retry_after 2 s), and no beat after it
    f = make_farm(backend, retry_after=2)
    f.store().beat({"id": "gone:1:x", "host": "gone", "pid": 1, "pipeline": None, "queues": ["default"],
                    "state": "idle", "job": None, "done": 0, "rss_mb": 1.0})

    def worker() -> dict:
        (w,) = json.loads(f.farmctl("status", "--json", check=True).stdout)["workers"]
        return w

    # Then status shows it as it said it was at first
    first = worker()
    assert first["state"] == "idle" or time.time() - first["heartbeat"] > 2
    # and as lost once it has been silent for longer than retry_after
    lost = f.wait_for(lambda: (w := worker())["state"] == "lost" and w, timeout=2 + 10, what="the worker lost")
    assert lost["lost"] is True and time.time() - lost["heartbeat"] > 2


def test_a_postgresql_insert_from_another_program_is_run(make_farm):
    f = make_farm("postgresql")
    table = f_table(f)
    doc = json.dumps({"v": 1, "id": "from-psql-1", "job": "testjobs:plain",
                      "data": {"path": str(f.out), "word": "psql"}})
    sql = (f"INSERT INTO {table} (uuid, queue, payload, attempts, available_at, created_at) "
           f"VALUES ('from-psql-1', 'default', '{doc}', 0, extract(epoch from now()), extract(epoch from now()))")
    subprocess.run(["psql", pg_conninfo(), "-v", "ON_ERROR_STOP=1", "-c", sql], check=True, capture_output=True)
    p = f.worker("--sleep", "0.1")
    f.wait_for(lambda: f.lines(), timeout=10, what="the raw job")
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    assert f.lines() == ["plain psql"]


def test_a_mariadb_insert_from_another_program_is_run(make_farm):
    f = make_farm("mysql")
    table = f_table(f)
    doc = json.dumps({"v": 1, "id": "from-mysql-1", "job": "testjobs:plain",
                      "data": {"path": str(f.out), "word": "mysql"}})
    sql = (f"INSERT INTO {table} (uuid, queue, payload, attempts, available_at, created_at) "
           f"VALUES ('from-mysql-1', 'default', '{doc}', 0, UNIX_TIMESTAMP(NOW(6)), UNIX_TIMESTAMP(NOW(6)))")
    subprocess.run([*mysql_cli(), "-e", sql], check=True, capture_output=True)
    p = f.worker("--stop-when-empty")
    assert p.wait(30) == 0
    assert f.lines() == ["plain mysql"]


@pytest.mark.parametrize("backend", ["sqlite", "amqp", "redis"])
def test_listen_runs_each_job_in_a_fresh_process_with_the_code_on_disk(make_farm, backend):
    f = make_farm(backend)
    mod = f"edited_{uuid.uuid4().hex[:6]}"
    code = f.tmp / f"{mod}.py"
    template = ("import farm, os\nclass Say(farm.Job):\n    def __init__(self, path): self.path = path\n"
                "    def handle(self):\n        open(self.path, 'a').write('{word} %d\\n' % os.getpid())\n")
    code.write_text(template.format(word="v1"))
    f.manifest.write_text(f.manifest.read_text().replace("imports: [testjobs]", f"imports: [testjobs, {mod}]"))
    import sys

    sys.path.insert(0, str(f.tmp))
    try:
        job = __import__(mod).Say(str(f.out))
        env = f.env()
        env["PYTHONPATH"] = f"{f.tmp}:{env['PYTHONPATH']}"
        p = subprocess.Popen([sys.executable, "-m", "farm", "listen", "--sleep", "0.1"], cwd=f.tmp, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        f.procs.append(p)
        farm.configure(f.manifest)
        farm.dispatch(job)
        f.wait_for(lambda: f.lines(), timeout=20, what="the first job")
        code.write_text(template.format(word="v2-edited"))
        farm.dispatch(job)
        f.wait_for(lambda: len(f.lines()) == 2, timeout=20, what="the second job")
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
    finally:
        sys.path.remove(str(f.tmp))
    (w1, pid1), (w2, pid2) = (line.split() for line in f.lines())
    assert (w1, w2) == ("v1", "v2-edited") and pid1 != pid2 and int(pid1) != p.pid


def test_sigterm_to_listen_lets_the_running_job_finish(make_farm):
    import sys

    f = make_farm("sqlite")
    farm.dispatch(Record(str(f.out), "slow", seconds=1.5))
    p = subprocess.Popen([sys.executable, "-m", "farm", "listen", "--sleep", "0.1"], cwd=f.tmp, env=f.env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    f.procs.append(p)
    f.wait_for(lambda: f.lines(f.tmp / "out.txt.started"), timeout=20, what="the job to start")
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    assert [x.split()[0] for x in f.lines()] == ["slow"]


@contextmanager
def fresh_place(backend: str, tmp: Any) -> Iterator[tuple[str, Callable[[str], None], Callable[[], set[str]],
                                                         Callable[[str], int]]]:
    """A place no table has been made in yet (a PostgreSQL schema, a MariaDB database, a new
    SQLite file): its URL, a way to run a DDL script there, the tables it holds, and how many
    rows one of them has (read there, not through the URL under test)."""
    from sqlalchemy.engine import make_url

    name = f"farm_ddl_{uuid.uuid4().hex[:8]}"
    if backend == "sqlite":
        path = tmp / f"{name}.db"

        def run(ddl: str) -> None:
            with sqlite3.connect(path) as db:
                db.executescript(ddl)

        def tables() -> set[str]:
            with sqlite3.connect(path) as db:
                return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

        def count(table: str) -> int:
            with sqlite3.connect(path) as db:
                return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

        yield f"sqlite:///{path}", run, tables, count
    elif backend == "postgresql":
        import psycopg

        admin = psycopg.connect(pg_conninfo(), autocommit=True)
        admin.execute(f"CREATE SCHEMA {name}")

        def run(ddl: str) -> None:           # the whole script at once, as `psql -f` would
            with psycopg.connect(pg_conninfo(), autocommit=True, options=f"-csearch_path={name}") as c:
                c.execute(ddl)

        def tables() -> set[str]:
            rows = admin.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (name,)).fetchall()
            triggers = admin.execute("SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                                     "JOIN pg_namespace n ON n.oid = c.relnamespace "
                                     "WHERE n.nspname = %s AND NOT t.tgisinternal", (name,)).fetchall()
            return {r[0] for r in rows} | {f"trigger {r[0]}" for r in triggers}

        def count(table: str) -> int:
            return admin.execute(f"SELECT COUNT(*) FROM {name}.{table}").fetchone()[0]

        url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={name}"})
        try:
            yield url.render_as_string(hide_password=False), run, tables, count
        finally:
            from farm import app

            app._close_all()
            admin.execute(f"DROP SCHEMA {name} CASCADE")
            admin.close()
    else:
        import pymysql
        from pymysql.constants import CLIENT

        params = mysql_params()
        admin = pymysql.connect(autocommit=True, **params)
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")

        def run(ddl: str) -> None:           # the whole script at once, as `mysql < file` would
            with pymysql.connect(autocommit=True, client_flag=CLIENT.MULTI_STATEMENTS,
                                 **dict(params, database=name)) as c, c.cursor() as cur:
                cur.execute(ddl)
                while cur.nextset():
                    pass

        def tables() -> set[str]:
            with admin.cursor() as cur:
                cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (name,))
                return {r[0] for r in cur.fetchall()}

        def count(table: str) -> int:
            with admin.cursor() as cur:
                cur.execute(f"SELECT COUNT(*) FROM {name}.{table}")
                return cur.fetchone()[0]

        try:
            yield make_url(MY_URL).set(database=name).render_as_string(hide_password=False), run, tables, count
        finally:
            from farm import app

            app._close_all()
            with admin.cursor() as cur:
                cur.execute(f"DROP DATABASE {name}")
            admin.close()


@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_schema_prints_ddl_that_makes_working_tables_on_each_dialect(make_farm, backend):
    # Given the DDL `farmctl schema` prints for this dialect
    f = make_farm(backend)
    ddl = f.farmctl("schema", check=True).stdout
    conn = farm.app.manifest().connections["main"]
    t = conn.table
    expected = {t, conn.failed_table, f"{t}_stamps", f"{t}_workers", f"{t}_counts"}
    expected.add(f"{t}_done")           # jobs kept as done (`retention`, farm.job_status)
    expected.add(f"{t}_locks")          # unique jobs' and middleware's counters (farm/locks.py)
    expected |= {f"{t}_batches", f"{t}_batch_jobs"}     # chains and batches (farm/batches.py)
    if backend == "postgresql":
        expected.add(f"trigger {t}_notify")
    with fresh_place(backend, f.tmp) as (url, run, tables, count):
        # When it is run by hand where no table exists yet
        run(ddl)
        # Then it has made every table (and PostgreSQL's wake-up trigger) the driver needs
        assert tables() == expected
        # and jobs round-trip through them: a job runs, a failing one reaches the failed
        # table, a worker beats and a restart stamp is kept, with no table made by the driver
        manifest = f.manifest.read_text()
        f.manifest.write_text(manifest.replace(f"url: {conn.url}\n", f"url: {url}\n", 1))
        assert f.manifest.read_text() != manifest
        farm.configure(f.manifest)
        farm.dispatch(Record(str(f.out), "ok"))
        bad = farm.dispatch(Flaky(str(f.out)), tries=1)
        cp = f.farmctl("work", "--stop-when-empty", "--log-format", "json")
        assert cp.returncode == 0, cp.stderr
        assert [x.split()[0] for x in f.lines()] == ["ok", "attempt", "failed"]
        assert [e.id for e in f.store().failed()] == [bad]
        assert '"event": "worker.start"' in cp.stderr
        f.farmctl("restart", check=True)
        assert f.store().stamp("restart") is not None
        f.store().beat({"id": "h:1:x", "pid": 1})
        assert [w["id"] for w in f.store().workers()] == ["h:1:x"]
        assert f.queue().counts() == {"default": {"ready": 0, "delayed": 0, "reserved": 0, "failed": 1}}
        assert [count(x) for x in (t, conn.failed_table, f"{t}_stamps", f"{t}_workers")] == [0, 1, 1, 1]
        assert count(f"{t}_counts") > 0         # the worker's job counts (farm/counts.py)
        assert tables() == expected
