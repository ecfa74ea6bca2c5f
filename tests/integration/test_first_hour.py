"""Issue 14: what a new user meets in the first hour, as the README promises it.

`farmctl init` and the commands it prints, `push` without an id, `schema` that touches no
database, heartbeats of dead workers that leave `status`, `flush`/`clear` that ask on a
terminal, `retry ID --queue` refused, `listen --once`, `status --json --watch`, `--version`,
and options set in a job's constructor honoured by a real worker.
"""
from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

import farm
from conftest import BACKENDS, DB_BACKENDS
from test_ops import _fail_some, fresh_place
from testjobs import Record

BIN = Path(sys.executable).parent
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def on_a_terminal(f, args: list[str], answer: str | None, timeout: float = 60) -> tuple[int, str]:
    """Run `farmctl ARGS` with a pseudo-terminal as stdin/stdout; type `answer` at the first
    `[y/N]` (None: expect no question). Returns the exit status and everything it printed."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "farm", *args], cwd=f.tmp, env=f.env(),
                         stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out, answered = b"", False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:         # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            if b"[y/N]" in out and not answered:
                assert answer is not None, f"farmctl {args} asked: {out!r}"
                os.write(master, answer.encode() + b"\n")
                answered = True
            if p.poll() is not None and not ready:
                break
        return p.wait(30), out.decode(errors="replace")
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()


# -- farmctl init, and the commands it prints ---------------------------------------------------
def test_issue_14_init_writes_a_starter_project_whose_printed_commands_run_a_job(tmp_path):
    # Given an empty directory and this environment's python and farmctl first on PATH
    env = {k: v for k, v in os.environ.items() if k not in ("FARM_CONFIG", "PYTHONPATH", "FARM_DB_URL")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"

    def sh(command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=timeout)

    # When `farmctl init` runs there
    init = sh("farmctl init")
    assert init.returncode == 0, init.stderr
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == \
        ["conf/farm.yaml", "jobs.py"]
    # Then the commands it prints, run as printed, queue the example job and run it
    commands = [line.split("#")[0].strip() for line in init.stdout.splitlines() if line.startswith("  ")]
    first, then = commands[:2], commands[2:]
    assert first[0].startswith("python -c") and first[1] == "farmctl work --stop-when-empty"
    dispatched = sh(first[0])
    assert dispatched.returncode == 0, dispatched.stderr
    jid = dispatched.stdout.strip()
    assert UUID.match(jid)
    worked = sh(first[1])
    assert worked.returncode == 0, worked.stderr
    assert f"hello, world (job {jid}, attempt 1)" in worked.stdout
    assert f"job.done id={jid} job=jobs:Greet" in worked.stderr
    # and the supervisord ones run the pipeline's workers, which take the next job
    assert then[:2] == ["farmctl render", "supervisord -c supervisor/supervisord.conf"]
    assert then[-1] == "supervisorctl -c supervisor/supervisord.conf shutdown"
    try:
        for command in then[:2]:
            cp = sh(command)
            assert cp.returncode == 0, f"{command}: {cp.stdout}{cp.stderr}"
        second = sh(first[0]).stdout.strip()
        logs = tmp_path / "var" / "log"
        deadline = time.monotonic() + 60
        while not any(f"hello, world (job {second}" in p.read_text() for p in logs.glob("worker_*.log")):
            assert time.monotonic() < deadline, "the supervised worker never ran the job"
            time.sleep(0.2)
        status = sh(then[2])
        assert status.returncode == 0 and "worker:worker_00" in status.stdout, status.stdout + status.stderr
    finally:
        sh(then[-1])
    # and a second init refuses to overwrite, naming the files, exit 1
    again = sh("farmctl init")
    assert again.returncode == 1
    assert "conf/farm.yaml, jobs.py already exist" in again.stderr and "nothing written" in again.stderr


def test_issue_14_init_writes_nothing_when_one_of_its_files_exists(tmp_path):
    (tmp_path / "jobs.py").write_text("# mine\n")
    cp = subprocess.run([str(BIN / "farmctl"), "init", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1 and f"{tmp_path}/jobs.py already exists" in cp.stderr
    assert (tmp_path / "jobs.py").read_text() == "# mine\n" and not (tmp_path / "conf").exists()


# -- push, schema, version ----------------------------------------------------------------------
def test_issue_14_push_assigns_and_prints_an_id_when_the_document_has_none(make_farm):
    # Given the README's document, which has no id
    f = make_farm("sqlite")
    doc = {"v": 1, "job": "testjobs:plain", "data": {"path": str(f.out), "word": "pushed"}}
    # When it is pushed
    cp = f.farmctl("push", "--queue", "q", json.dumps(doc), check=True)
    # Then a new UUID is printed, the job is stored under it, and a worker runs it
    jid = cp.stdout.strip()
    assert UUID.match(jid)
    (r,) = f.queue().reserve(["q"], 10, 0)
    assert r.id == jid and json.loads(r.body)["id"] == jid
    f.queue().give_back([r])
    f.farmctl("work", "--queue", "q", "--stop-when-empty", check=True)
    assert f.lines() == ["plain pushed"]
    # and a document that is not the wire format's shape is still refused, exit 2
    bad = f.farmctl("push", json.dumps({"v": 1, "job": "testjobs:plain"}))
    assert bad.returncode == 2 and "'data'" in bad.stderr


@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_issue_14_schema_prints_the_ddl_without_touching_the_database_and_apply_creates_it(make_farm, backend):
    f = make_farm(backend)
    with fresh_place(backend, f.tmp) as (url, run, tables, count):
        if backend == "sqlite":
            url = f"sqlite:///{f.tmp}/not-yet/farm.db"
        conn = farm.app.manifest().connections["main"]
        f.manifest.write_text(f.manifest.read_text().replace(f"url: {conn.url}\n", f"url: {url}\n", 1))
        # When the DDL is printed
        ddl = f.farmctl("schema", check=True).stdout
        # Then nothing was made where the connection points
        assert "CREATE TABLE" in ddl and conn.table in ddl
        if backend == "sqlite":
            assert not (f.tmp / "not-yet").exists()
        else:
            assert tables() == set()
        # and --apply makes every table the driver needs
        applied = f.farmctl("schema", "--apply", check=True).stdout
        assert f"tables ready on connection 'main': {conn.table}, " in applied
        if backend == "sqlite":
            import sqlite3

            with sqlite3.connect(f.tmp / "not-yet" / "farm.db") as db:
                made = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        else:
            made = {t for t in tables() if not t.startswith("trigger ")}
        made.remove(f"{conn.table}_done")       # jobs kept as done (`retention`): made too
        batch_tables = {f"{conn.table}_batches", f"{conn.table}_batch_jobs"}   # chains and batches: made too
        assert batch_tables <= made
        made -= batch_tables
        made.remove(f"{conn.table}_locks")      # unique jobs' and middleware's counters: made too
        assert made == {conn.table, conn.failed_table, f"{conn.table}_stamps", f"{conn.table}_workers",
                        f"{conn.table}_counts"}


def test_issue_14_version_prints_the_installed_version():
    cp = subprocess.run([str(BIN / "farmctl"), "--version"], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0 and cp.stdout == f"farmctl (jobfarm) {version('jobfarm')}\n"
    assert farm.__version__ == version("jobfarm")


# -- status ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_issue_14_a_worker_that_died_without_a_goodbye_leaves_status_after_ten_minutes(make_farm, backend):
    from farm.commands.ops import forget_after

    # Given two heartbeats: one 5 minutes old, one 11 minutes old (retry_after 2 s)
    f = make_farm(backend, retry_after=2)
    store = f.store()
    for wid in ("recent:1:x", "ancient:2:y"):
        store.beat({"id": wid, "host": wid.split(":")[0], "pid": 1, "pipeline": None, "queues": ["default"],
                    "state": "busy", "job": None, "done": 0, "rss_mb": 1.0})
    ages = (("recent:1:x", 300), ("ancient:2:y", 660))
    if backend == "redis":          # a hash of JSON documents, the heartbeat in each
        key = f"{store.prefix}:workers"
        for wid, age in ages:
            doc = json.loads(store.client.hget(key, wid))
            store.client.hset(key, wid, json.dumps(dict(doc, heartbeat=doc["heartbeat"] - age)))
    else:
        table = f"{store.config.table}_workers"
        with store._cursor() as cur:
            for wid, age in ages:
                sql = f"UPDATE {table} SET heartbeat = heartbeat - %s WHERE id = %s"
                cur.execute(sql.replace("%s", "?") if store.dialect == "sqlite" else sql, (age, wid))
    # When status looks
    workers = json.loads(f.farmctl("status", "--json", check=True).stdout)["workers"]
    # Then the recent one is shown as lost, and the ancient one is gone, its row deleted
    assert [(w["id"], w["state"]) for w in workers] == [("recent:1:x", "lost")]
    assert [w["id"] for w in store.workers()] == ["recent:1:x"]
    assert forget_after(2) == 600 and forget_after(3600) == 3 * 3600


def test_issue_14_status_json_watch_prints_one_object_per_refresh_a_line_each(make_farm):
    f = make_farm("sqlite")
    p = subprocess.Popen([sys.executable, "-m", "farm", "status", "--json", "--watch", "--interval", "0.3"],
                         cwd=f.tmp, env=f.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    f.procs.append(p)
    try:
        # Then each refresh is one line holding one object, flushed as it is made
        first = json.loads(p.stdout.readline())
        farm.dispatch(Record(str(f.out), "a"), queue="seen")
        deadline = time.monotonic() + 30
        while True:
            doc = json.loads(p.stdout.readline())
            assert set(doc) >= {"queues", "workers", "supervisor"}
            if "seen" in doc["queues"]:
                break
            assert time.monotonic() < deadline, "the dispatched job never showed"
        assert "seen" not in first["queues"] and doc["queues"]["seen"]["ready"] == 1
    finally:
        p.terminate()
        p.wait(10)
    # and a reader that goes away ends it quietly
    cp = subprocess.run(["bash", "-c", f"{shlex.quote(sys.executable)} -m farm status --json --watch "
                         "--interval 0.1 | head -n 1"], cwd=f.tmp, env=f.env(), capture_output=True,
                        text=True, timeout=60)
    assert cp.returncode == 0 and json.loads(cp.stdout)["queues"] == {"seen": {
        "ready": 1, "delayed": 0, "reserved": 0, "failed": 0}}
    assert "Traceback" not in cp.stderr


# -- flush, clear, retry --------------------------------------------------------------------------
def test_issue_14_flush_asks_on_a_terminal_and_force_does_not(make_farm):
    f = make_farm("sqlite")
    _fail_some(f, 2)
    # When someone at a terminal says no
    code, out = on_a_terminal(f, ["flush"], "n")
    # Then nothing is deleted, exit 1
    assert code == 1 and "Delete all 2 failed job(s)?" in out and "nothing deleted" in out
    assert len(f.store().failed()) == 2
    # and a yes deletes them
    code, out = on_a_terminal(f, ["flush"], "y")
    assert code == 0 and "2 failed job(s) deleted" in out
    # and --force at a terminal does not ask
    _fail_some(f, 1)
    code, out = on_a_terminal(f, ["flush", "--force"], None)
    assert code == 0 and "1 failed job(s) deleted" in out and "[y/N]" not in out
    # and without a terminal (a script, cron) it goes ahead
    _fail_some(f, 1)
    assert "1 failed job(s) deleted" in f.farmctl("flush", check=True).stdout


def test_issue_14_clear_asks_on_a_terminal_and_force_does_not(make_farm):
    f = make_farm("sqlite")
    for tag in ("a", "b"):
        farm.dispatch(Record(str(f.out), tag), queue="q")
    code, out = on_a_terminal(f, ["clear", "--queue", "q"], "")
    assert code == 1 and "Delete the 2 ready job(s) of queue 'q' on connection 'main'?" in out
    assert f.queue().counts()["q"]["ready"] == 2
    code, out = on_a_terminal(f, ["clear", "--queue", "q", "--force"], None)
    assert code == 0 and "2 job(s) cleared from q" in out


def test_issue_14_retry_of_ids_with_queue_is_refused_not_ignored(make_farm):
    f = make_farm("sqlite")
    (jid,) = _fail_some(f, 1)
    cp = f.farmctl("retry", jid, "--queue", "other")
    assert cp.returncode == 2 and "--queue" in cp.stderr and "retry all" in cp.stderr
    assert [e.id for e in f.store().failed()] == [jid]
    assert f.farmctl("retry", "all", jid).returncode == 2
    # --queue still picks a queue for `retry all`
    assert "1 job(s)" in f.farmctl("retry", "all", "--queue", "default", check=True).stdout


# -- listen --once --------------------------------------------------------------------------------
def test_issue_14_listen_once_runs_one_job_and_exits(make_farm):
    f = make_farm("sqlite")
    for tag in ("a", "b"):
        farm.dispatch(Record(str(f.out), tag))
    # When `listen --once` runs with two jobs ready
    cp = f.farmctl("listen", "--once", timeout=60)
    # Then it ran one of them, in a child, and exited 0
    assert cp.returncode == 0, cp.stderr
    assert [x.split()[0] for x in f.lines()] == ["a"]
    assert f.queue().counts()["default"]["ready"] == 1
    # and with nothing ready it waits out one --sleep and exits 0
    f.queue().clear("default")
    started = time.monotonic()
    assert f.farmctl("listen", "--once", "--sleep", "0.5", timeout=60).returncode == 0
    assert time.monotonic() - started < 20


# -- options set in a job's constructor, through a real worker ------------------------------------
def test_issue_14_a_worker_runs_a_job_with_the_tries_its_constructor_set(make_farm):
    from hourjobs import Urgent

    f = make_farm("sqlite")
    f.manifest.write_text(f.manifest.read_text().replace("imports: [testjobs]", "imports: [testjobs, hourjobs]"))
    farm.configure(f.manifest)
    # Given a failing job whose class allows one try and whose instance allows three
    jid = farm.dispatch(Urgent(str(f.out), tries=3, backoff=0))
    # When a worker drains its queue
    cp = f.farmctl("work", "--queue", "mail", "--stop-when-empty")
    assert cp.returncode == 0, cp.stderr
    # Then it was attempted three times before it failed
    assert f.lines() == [f"attempt {n} {jid}" for n in (1, 2, 3)]
    assert [e.id for e in f.store().failed()] == [jid]

