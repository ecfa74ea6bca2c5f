"""Issue 21: each guarantee the README states, tested so that its breach turns the test red.

Real `farmctl work` processes against the real servers; times are taken from what the worker
or the job records, never from before `Popen` (interpreter start-up is not the contract's).
"""
from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

import farm
from conftest import BACKENDS, DB_BACKENDS, PG_URL, pg_conninfo, wait_until
from tcpproxy import Proxy, free_port
from testjobs import KillsItsWorker, Ledger, Record, Timed
from test_supervisor import sup  # noqa: F401  (the fixture: a project dir with its own supervisord)

DOCUMENTED_EVENTS = {
    "worker.start", "worker.stop", "job.done", "job.retry", "job.released", "job.failed", "job.lost",
    "job.ack_failed", "job.timeout_clamped", "job.stale", "worker.unavailable", "worker.stuck",
    "worker.error",
}


def finished(p: subprocess.Popen, timeout: float = 30) -> int:
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)
        raise AssertionError(f"worker {p.pid} did not exit within {timeout}s") from None


def spawn(f, log: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A worker whose stderr goes to `log` (a pipe nobody reads could fill up and stall it),
    with `env` added to the farm's environment."""
    with open(log, "ab") as err:
        p = subprocess.Popen([sys.executable, "-m", "farm", "work", *args], cwd=f.tmp, env={**f.env(), **(env or {})},
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    f.procs.append(p)
    return p


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def queued(f) -> int:
    """Jobs still in the queue table (ready, delayed or reserved), over every queue."""
    return sum(c["ready"] + c["delayed"] + (c["reserved"] or 0) for c in f.queue().counts().values())


# -- deaths ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_a_job_that_kills_its_worker_every_time_is_failed_after_its_third_death(make_farm, backend):
    # Given a job that SIGKILLs whatever worker runs it (retry_after 1 s: a dead worker's claim
    # lapses quickly)
    f = make_farm(backend, retry_after=1)
    jid = farm.dispatch(KillsItsWorker(str(f.out)))
    # When a new worker is started after each death, as supervisord would
    codes = []
    for _ in range(6):
        p = f.worker("--sleep", "0.1")
        f.wait_for(lambda: p.poll() is not None or f.store().failed(), timeout=30,
                   what="the worker to die or the job to be failed")
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        codes.append(finished(p))
        if codes[-1] != -signal.SIGKILL:
            break
    # Then three workers died running it ("more than twice"), and the fourth failed it without
    # running it, with MaxAttemptsExceeded, and went on to exit 0
    assert codes == [-signal.SIGKILL] * 3 + [0], codes
    assert [line.split()[:2] for line in f.lines()] == [["start", "1"], ["start", "2"], ["start", "3"]]
    (entry,) = f.store().failed()
    assert entry.id == jid
    assert entry.exception.startswith("MaxAttemptsExceeded: the job was started 3 times"), entry.exception
    # and it is no longer in the queue
    assert queued(f) == 0


# -- farmctl restart ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_farmctl_restart_hands_the_claimed_jobs_not_started_back_at_once(make_farm, backend):
    # Given a worker (retry_after 120 s: a reservation left to lapse would keep its jobs for
    # two minutes) that has learnt to claim in batches, running a job held open by a gate,
    # with the twenty jobs dispatched with it claimed behind it
    f = make_farm(backend, retry_after=120)
    gate, started = f.tmp / "gate", f.tmp / "out.txt.started"
    farm.dispatch_many([Record(str(f.tmp / "warm.txt"), f"warm{i}") for i in range(30)])
    p = f.worker("--sleep", "0.05")
    f.wait_for(lambda: len(f.lines(f.tmp / "warm.txt")) == 30, what="the warm-up jobs")
    farm.dispatch_many([Timed(str(f.out), "gated", gate=str(gate))]
                       + [Timed(str(f.out), f"after{i}", seconds=0.2) for i in range(20)])
    f.wait_for(lambda: f.lines(started), what="the gated job to start")
    held = f.queue().counts()["default"]["reserved"]       # all 21 but on a loaded machine
    assert held > 2, f"the worker claimed only {held} in its batch"
    # When `farmctl restart` stamps the store and the gated job is let go
    f.farmctl("restart", check=True)
    gate.touch()
    # Then the worker exits 0 for the restart after a few of the 0.2 s jobs (it reads the
    # stamp about once a second), and the jobs it had not started are ready at once: none is
    # still reserved, none has used an attempt
    assert finished(p, 30) == 0
    assert "reason=restart" in p.stderr.read()
    ran = [line.split()[0] for line in f.lines()]
    assert ran[0] == "gated" and len(ran) < held, ran
    assert f.queue().counts()["default"] == {"ready": 21 - len(ran), "delayed": 0, "reserved": 0, "failed": 0}
    rest = f.queue().reserve(["default"], 100, 0)
    assert len(rest) == 21 - len(ran) and {r.attempts for r in rest} == {1}


# -- drains: --stop-when-empty and flock -------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_when_empty_exits_0_with_a_delayed_job_left_which_stays_queued(make_farm, backend):
    # Given a ready job and one delayed by a minute
    f = make_farm(backend)
    farm.dispatch(Record(str(f.out), "ready"))
    farm.dispatch(Record(str(f.out), "delayed"), delay=60)
    # When a worker drains the queue with --stop-when-empty
    p = f.worker("--stop-when-empty", "--sleep", "3", "--log-format", "json")
    # Then it exits 0 as empty, long before the delayed job is due, having run the ready one
    assert finished(p, 30) == 0
    (stop,) = [d for d in json_lines(p.stderr.read()) if d["event"] == "worker.stop"]
    assert stop["reason"] == "empty"
    assert [line.split()[0] for line in f.lines()] == ["ready"]
    # and the delayed job is still queued, still delayed
    counts = f.queue().counts()["default"]
    assert (counts["ready"], counts["delayed"]) == (0, 1), counts


CRON_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "SHELL": "/bin/sh", "HOME": "/", "LANG": "C.UTF-8"}


def test_flock_skips_a_drain_while_the_previous_one_still_runs(sup):  # noqa: F811
    # Given a drain pipeline's rendered cron command, as cron hands it to sh (its `\\%` made
    # `%`, cron's near-empty environment), and a drain of it running a job held open by a
    # gate, with another job waiting behind it
    sup.write("""
    reports:
      queues: [reports]
      drain: "*/10 * * * *"
      sleep: 0.1
      environment: ENV
""")
    sup.farmctl("render")
    (line,) = [x for x in (sup.root / "supervisor" / "farm.cron").read_text().splitlines() if "--pipeline reports" in x]
    command = line.split(None, 6)[6].replace("\\%", "%")
    sup.app()
    gate, log = sup.root / "gate", sup.root / "var" / "log" / "reports.log"
    farm.dispatch(Timed(str(sup.out), "gated", gate=str(gate)), queue="reports")
    farm.dispatch(Record(str(sup.out), "waiting"), queue="reports")
    first = subprocess.Popen(["sh", "-c", command], env=CRON_ENV, cwd="/")
    try:
        sup.wait_for(lambda: (sup.root / "out.txt.started").exists(), what="the first drain to start the gated job")
        # When cron's next tick runs the same command while the first drain still runs
        began = time.monotonic()
        second = subprocess.run(["sh", "-c", command], env=CRON_ENV, cwd="/", timeout=60)
        took = time.monotonic() - began
        # Then the second exits at once with flock's status 1 and runs nothing: the waiting
        # job is still queued, one worker has started in all, and the first drain goes on
        assert second.returncode == 1 and took < 3, (second.returncode, took)
        assert first.poll() is None
        assert sup.app().queue("main").counts()["reports"]["ready"] == 1
        assert not sup.out.exists()
        assert log.read_text().count("worker.start") == 1
    finally:
        gate.touch()
    # and the first drain, let go, runs the waiting job and exits 0 on an empty queue
    assert first.wait(60) == 0
    assert [x.split()[0] for x in sup.out.read_text().splitlines()] == ["gated", "waiting"]


# -- lost databases ----------------------------------------------------------------------------


def test_a_worker_whose_database_stays_down_exits_1_once_its_give_up_time_of_failures_is_over(make_farm):
    """The README's "about a minute" is the shipped FARM_GIVE_UP_SECONDS (71.5 s of backoff:
    0.5, 1, 2, 4, then 8 s; tests/unit/test_worker_edges.py holds that schedule). Here the
    workers are given 6 s, so the same path ends in seconds: backoff 0.5, 1, 2, then the 2.5 s
    left, then giving up. Two workers wait it out side by side."""
    from sqlalchemy.engine import make_url

    give_up = 6.0
    # Given a worker working on PostgreSQL through a proxy, and a worker started while its
    # database is down (a free port: refused), both told to give up after 6 s of backoff
    f = make_farm("postgresql")
    pg = make_url(PG_URL)
    proxy = Proxy(free_port(), (pg.host or "127.0.0.1", pg.port or 5432))
    proxy.start()
    via = lambda port: pg.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)  # noqa: E731
    manifests = {}
    for name, port in (("lost", proxy.port), ("down", free_port())):
        manifests[name] = f.tmp / "conf" / f"{name}.yaml"
        manifests[name].write_text(f.manifest.read_text().replace(PG_URL, via(port)))
    logs = {name: f.tmp / f"{name}.log" for name in manifests}
    env = {"FARM_GIVE_UP_SECONDS": str(give_up)}
    lost = spawn(f, logs["lost"], "--config", str(manifests["lost"]), "--sleep", "0.1", "--log-format", "json",
                 env=env)
    farm.dispatch(Record(str(f.out), "before"))
    f.wait_for(lambda: f.lines(), what="the proxied worker to run a job")
    down = spawn(f, logs["down"], "--config", str(manifests["down"]), "--log-format", "json", env=env)
    # When the proxied worker's database goes away too (every connection cut, new ones refused)
    proxy.close()
    gone = time.time()
    exited: dict[str, float] = {}
    deadline = time.monotonic() + 60
    while len(exited) < 2 and time.monotonic() < deadline:
        for name, p in (("lost", lost), ("down", down)):
            if name not in exited and p.poll() is not None:
                exited[name] = time.time()
        time.sleep(0.1)
    assert len(exited) == 2, f"still running after 60 s: {set(logs) - set(exited)}"
    # Then the worker that lost it retries with backoff, says it is giving up once its give-up
    # time of failures is over, and exits 1 for its process manager
    assert lost.returncode == 1
    events = json_lines(logs["lost"].read_text())
    unavailable = [e for e in events if e["event"] == "worker.unavailable"]
    assert [e.get("retry_in") for e in unavailable[:-1]] == [0.5, 1.0, 2.0, 2.5], unavailable
    assert unavailable[-1].get("detail") == "giving up", unavailable
    assert [e["reason"] for e in events if e["event"] == "worker.stop"] == ["fatal"]
    assert give_up <= exited["lost"] - gone <= give_up + 30, exited["lost"] - gone
    # and the worker started while it was down waits as long, saying so once, then exits 1
    assert down.returncode == 1
    text = logs["down"].read_text().splitlines()
    waiting = [json.loads(x) for x in text if x.startswith("{") and '"worker.unavailable"' in x]
    assert len(waiting) == 1 and waiting[0]["detail"] == "waiting for it at start", text
    assert "cannot connect" in text[-1], text
    assert give_up <= exited["down"] - waiting[0]["time"] <= give_up + 30, exited["down"] - waiting[0]["time"]


def test_a_threaded_worker_whose_database_stays_down_gives_up_only_once_its_running_job_ends(make_farm):
    from sqlalchemy.engine import make_url

    # Given a worker with two threads on PostgreSQL through a proxy, running a job held by a
    # gate, told to give up after 2 s of backoff
    f = make_farm("postgresql")
    pg = make_url(PG_URL)
    proxy = Proxy(free_port(), (pg.host or "127.0.0.1", pg.port or 5432))
    proxy.start()
    manifest = f.tmp / "conf" / "lost.yaml"
    manifest.write_text(f.manifest.read_text().replace(
        PG_URL, pg.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)))
    log, gate = f.tmp / "lost.log", f.tmp / "gate"
    farm.dispatch(Timed(str(f.out), "held", gate=str(gate)))
    p = spawn(f, log, "--config", str(manifest), "--concurrency", "2", "--sleep", "0.1", "--log-format", "json",
              env={"FARM_GIVE_UP_SECONDS": "2"})
    f.wait_for(lambda: f.lines(f.tmp / "out.txt.started"), what="the job to start")
    # When its database goes away for good
    proxy.close()
    # Then, its give-up time over, it says it gives up once the running job ends, and waits for it
    wait_until(lambda: "giving up once the running jobs end" in log.read_text(), 30, "the worker to give up",
               explain=log.read_text)
    assert p.poll() is None, log.read_text()
    gate.touch()
    assert finished(p) == 1
    events = json_lines(log.read_text())
    assert [e["reason"] for e in events if e["event"] == "worker.stop"] == ["fatal"], events
    assert [line.split()[0] for line in f.lines()] == ["held"]          # the job ran to its end


# -- NOTIFY ------------------------------------------------------------------------------------


def test_notify_wakes_an_idle_postgresql_worker_at_once_for_rows_psql_inserts(make_farm):
    # Given an idle PostgreSQL worker whose idle wait between claims is a second (--sleep 3
    # is capped at 1 s), past its first claims
    from test_ops import f_table

    f = make_farm("postgresql")
    table = f_table(f)
    p = f.worker("--sleep", "3")
    f.wait_for(lambda: f.store().workers(), what="the worker's heartbeat")

    def insert(tag: str) -> str:
        data = (f"json_build_object('path', '{f.out}', 'tag', '{tag}', "
                "'inserted', extract(epoch from clock_timestamp()))")
        doc = (f"json_build_object('v', 1, 'id', '{tag}', 'job', 'testjobs:started_after_insert', "
               f"'data', {data})::text")
        return (f"INSERT INTO {table} (uuid, queue, payload, attempts, available_at, created_at) "
                f"SELECT '{tag}', 'default', {doc}, 0, extract(epoch from now()), extract(epoch from now());")

    psql = ["psql", pg_conninfo(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]
    subprocess.run(psql, input=insert("warm"), text=True, check=True, capture_output=True, timeout=60)
    f.wait_for(lambda: f.lines(), what="the first row")
    # When psql, another program, inserts seven rows 0.23 s apart (each in its own transaction)
    script = "".join(insert(f"n{i}") + "SELECT pg_sleep(0.23);\n" for i in range(7))
    subprocess.run(psql, input=script, text=True, check=True, capture_output=True, timeout=60)
    f.wait_for(lambda: len(f.lines()) == 8, what="the seven rows to run")
    p.send_signal(signal.SIGTERM)
    assert finished(p) == 0
    # Then each job started within milliseconds of its insert, not when the worker next
    # looked (up to a second later): NOTIFY woke it
    latencies = sorted(float(now) - float(inserted) for _, inserted, now in map(str.split, f.lines()[1:]))
    assert statistics.median(latencies) < 0.1 and latencies[-1] < 0.5, latencies


# -- logs --------------------------------------------------------------------------------------


def test_log_format_json_writes_only_json_lines_with_the_documented_keys(make_farm):
    # Given jobs that succeed, raise (tries 2), release themselves once and fail themselves,
    # one whose error message holds a quote, a non-ASCII letter and a line break, and a
    # pushed document that names no job
    f = make_farm("sqlite")
    ledger = str(f.tmp / "ledger.txt")
    farm.dispatch(Record(str(f.out), "ok"))
    farm.dispatch(Ledger(ledger, 'say "hé"\nsecond line', "raise"), tries=2)
    farm.dispatch(Ledger(ledger, "again", "release"))
    farm.dispatch(Ledger(ledger, "gives-up", "fail"))
    f.farmctl("push", json.dumps({"v": 1, "id": "no-such-job", "job": "testjobs:nothing_here", "data": {}}), check=True)
    # When a worker runs them with --log-format json and stops when the queue is empty
    p = f.worker("--log-format", "json", "--stop-when-empty", "--sleep", "0.05")
    assert finished(p) == 0
    # Then every line on its stderr is a JSON object with time, level, pid and a documented event
    lines = p.stderr.read().splitlines()
    docs = []
    for line in lines:
        doc = json.loads(line)
        assert isinstance(doc, dict) and {"time", "level", "pid", "event"} <= set(doc), line
        assert abs(doc["time"] - time.time()) < 120 and doc["level"] in ("info", "warning", "error"), line
        assert doc["pid"] == p.pid and doc["event"] in DOCUMENTED_EVENTS, line
        docs.append(doc)
    events = [d["event"] for d in docs]
    assert events[0] == "worker.start" and events[-1] == "worker.stop", events
    assert {"job.done", "job.retry", "job.released", "job.failed"} <= set(events), events
    # with each event's own keys: the code fingerprint, the stop reason, the job's id and queue
    assert docs[0]["code"] and docs[-1]["reason"] == "empty"
    assert all(d["id"] and d["queue"] == "default" for d in docs if d["event"].startswith("job."))
    (retry,) = [d for d in docs if d["event"] == "job.retry"]
    assert retry["error"] == 'RuntimeError: say "hé"', retry
    assert any(d["event"] == "job.failed" and d.get("reason") == "bad payload" for d in docs), docs
