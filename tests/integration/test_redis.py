"""Issue 18: the redis driver with real workers, a raw producer, and a Redis of the test's own
that is killed and started again mid-run (AOF on, `appendfsync always`)."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

import conftest
import farm
from conftest import need_tool
from testjobs import Flaky, Record, Timed


class OwnRedis:
    """A redis-server on a free port, its data (AOF) in a temp dir; `kill()` is a SIGKILL."""

    def __init__(self, tmp: Path, persistence: bool = True) -> None:
        self.dir = tmp / "redis-data"
        self.dir.mkdir(exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = [need_tool("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                     "--dir", str(self.dir), "--save", ""]
        self.args += ["--appendonly", "yes", "--appendfsync", "always"] if persistence else ["--appendonly", "no"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping() and not client.info("persistence").get("loading"):
                    break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


@pytest.fixture
def own_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    monkeypatch.setattr(conftest, "REDIS_URL", server.url)     # make_farm("redis") uses it
    yield server
    server.stop()


def finished(p, timeout: float = 30) -> int:
    return p.wait(timeout)


def test_nothing_queued_delayed_or_reserved_is_lost_when_redis_is_killed_and_started_again(own_redis, make_farm):
    # Given a ready job, a delayed one, and one reserved and started by a worker (retry_after 2 s)
    f = make_farm("redis", retry_after=2)
    q = f.queue()
    ready = farm.dispatch(Record(str(f.out), "ready"))
    delayed = farm.dispatch(Record(str(f.out), "delayed"), delay=2)
    held = farm.dispatch(Record(str(f.out), "held"), queue="other")
    (r,) = q.reserve(["other"], 1, 1.0)
    assert r.id == held and q.starting(r)
    # When Redis is SIGKILLed and started again on the same data
    own_redis.kill()
    own_redis.start()
    # Then every job is still there, in the state it was in
    counts = q.counts()
    assert (counts["default"]["ready"], counts["default"]["delayed"], counts["other"]["reserved"]) == (1, 1, 1)
    # and a worker runs all three: the held one once its reservation lapsed, as a second start
    p = f.worker("--queue", "default,other", "--sleep", "0.1")
    f.wait_for(lambda: len(f.lines()) >= 3, timeout=30, what="the three jobs")
    p.send_signal(signal.SIGTERM)
    assert finished(p) == 0
    runs = {line.split()[0]: line.split()[1] for line in f.lines()}
    assert runs == {"ready": "1", "delayed": "1", "held": "2"}
    assert {ready, delayed, held} and f.store().failed() == []


def test_a_worker_loses_no_job_and_runs_none_twice_while_redis_is_killed_mid_run(own_redis, make_farm):
    # Given a worker running 150 short jobs, 10 more delayed by 2 s (retry_after 3 s)
    f = make_farm("redis", retry_after=3)
    farm.dispatch_many([Record(str(f.out), f"j{i}", seconds=0.02) for i in range(150)])
    farm.dispatch_many([Record(str(f.out), f"d{i}") for i in range(10)], delay=2)
    p = f.worker("--sleep", "0.1")
    f.wait_for(lambda: len(f.lines()) >= 20, timeout=30, what="20 jobs done")
    # When Redis is SIGKILLed mid-run and started again a second later
    own_redis.kill()
    time.sleep(1.0)
    own_redis.start()
    # Then the worker goes on, and every job runs exactly once
    f.wait_for(lambda: len(f.lines()) >= 160, timeout=90, what="160 jobs")
    # (a reservation the kill left behind shows as reserved until it lapses and its job runs
    # again: nothing ready, delayed or reserved means no job can run a second time now)
    f.wait_for(lambda: all(c["ready"] == c["delayed"] == c["reserved"] == 0 for c in f.queue().counts().values()),
               timeout=10, what="nothing left ready, delayed or reserved")
    p.send_signal(signal.SIGTERM)
    assert finished(p) == 0
    tags = Counter(line.split()[0] for line in f.lines())
    assert len(tags) == 160 and set(tags.values()) == {1}, [t for t, n in tags.items() if n > 1]
    assert f.store().failed() == []
    assert all(c["ready"] == c["delayed"] == c["reserved"] == 0 for c in f.queue().counts().values())


def test_a_v1_document_lpushed_by_another_program_is_run(make_farm):
    # Given a v1 document written onto the ready list by another program (redis-cli LPUSH)
    f = make_farm("redis")
    prefix = f.queue().prefix
    jid = str(uuid.uuid4())
    document = json.dumps({"v": 1, "id": jid, "job": "testjobs:Record", "queue": "default", "attempts": 0,
                           "data": {"path": str(f.out), "tag": "raw", "seconds": 0}})
    host, port, db = _address(conftest.REDIS_URL)
    subprocess.run([need_tool("redis-cli"), "-h", host, "-p", port, "-n", db, "LPUSH", f"{prefix}:{{default}}:ready",
                    document], check=True, capture_output=True)
    # When a worker drains the queue
    p = f.worker("--stop-when-empty")
    assert finished(p) == 0
    # Then the job ran, under the id its producer gave it
    assert [line.split()[:2] for line in f.lines()] == [["raw", "1"]]
    assert f.queue().counts()["default"]["ready"] == 0


def test_an_idle_worker_starts_a_pushed_job_at_once(make_farm):
    # Given an idle worker whose sleep is long (it waits on pub/sub, not by polling)
    f = make_farm("redis")
    p = f.worker("--sleep", "10")
    f.wait_for(lambda: f.store().workers(), what="the worker's heartbeat")
    time.sleep(0.5)
    # When a job is pushed
    pushed = time.time()
    farm.dispatch(Timed(str(f.out), "now"))
    # Then it starts within a fraction of a second
    f.wait_for(lambda: f.lines(f.tmp / "out.txt.started"), timeout=5, what="the job to start")
    started = float(f.lines(f.tmp / "out.txt.started")[0].split()[-1])
    assert started - pushed < 0.5
    p.send_signal(signal.SIGTERM)
    assert finished(p) == 0


def test_status_warns_when_redis_keeps_nothing_on_disk(make_farm, tmp_path, monkeypatch):
    # Given a Redis with no AOF and no snapshots
    server = OwnRedis(tmp_path, persistence=False)
    try:
        monkeypatch.setattr(conftest, "REDIS_URL", server.url)
        f = make_farm("redis")
        # When status looks, Then it says that a restart of Redis loses every job
        doc = json.loads(f.farmctl("status", "--json", check=True).stdout)
        assert any("persistence off" in n for n in doc["notes"]), doc["notes"]
        assert "persistence off" in f.farmctl("status", check=True).stdout
        # and with AOF on it says nothing
        f.queue().client.config_set("appendonly", "yes")
        assert json.loads(f.farmctl("status", "--json", check=True).stdout)["notes"] == []
        f.close()
    finally:
        server.stop()


def _address(url: str) -> tuple[str, str, str]:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return u.hostname or "127.0.0.1", str(u.port or 6379), (u.path.strip("/") or "0")


def test_farmctl_works_a_redis_connection_end_to_end(make_farm):
    # Given jobs pushed with farmctl, one of which fails
    f = make_farm("redis")
    ok = f.farmctl("push", json.dumps({"v": 1, "job": "testjobs:Record",
                                       "data": {"path": str(f.out), "tag": "pushed", "seconds": 0}}), check=True)
    bad = f.farmctl("push", json.dumps({"v": 1, "job": "testjobs:Flaky", "tries": 1,
                                        "data": {"path": str(f.out), "succeed_on": 9}}), check=True)
    p = f.worker("--stop-when-empty")
    assert finished(p) == 0
    bad_id = bad.stdout.strip()
    # Then failed lists the failure, retry puts it back, forget and flush remove it
    assert [r["id"] for r in json.loads(f.farmctl("failed", "--json", check=True).stdout)] == [bad_id]
    assert ok.stdout.strip() and "1 job(s) pushed back" in f.farmctl("retry", "all", check=True).stdout
    assert f.queue().counts()["default"]["ready"] == 1
    assert "1 job(s) cleared" in f.farmctl("clear", "--queue", "default", check=True).stdout
    assert f.farmctl("failed", "show", bad_id).returncode == 1


def _free_ports(n: int) -> list[int]:
    """Free ports below 45000 whose port + 10000 is free too (a Cluster node's bus port)."""
    import random

    ports: list[int] = []
    while len(ports) < n:
        port = random.randrange(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        if port not in ports:
            ports.append(port)
    return ports


def _wait_until(check, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _servers(tmp: Path, argvs: list[list[str]]) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([need_tool("redis-server"), *argv], cwd=tmp, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for argv in argvs]


def _run_three_jobs(f, queues: list[str]) -> None:
    """Dispatch one job per queue, drain them with a worker, and check status sees them go."""
    for q in queues:
        farm.dispatch(Record(str(f.out), q), queue=q)
    assert {q: c["ready"] for q, c in f.queue().counts().items() if q in queues} == {q: 1 for q in queues}
    p = f.worker("--queue", ",".join(queues), "--stop-when-empty")
    assert finished(p) == 0, p.stderr.read()
    assert [line.split()[0] for line in f.lines()] == queues        # in priority order
    status = json.loads(f.farmctl("status", "--json", check=True).stdout)
    assert all(status["queues"][q]["ready"] == 0 for q in queues)


def test_a_sentinel_url_finds_the_primary_and_works_the_queue(make_farm, tmp_path, monkeypatch):
    # Given a Redis primary and a Sentinel that monitors it as `mymaster`
    primary, sentinel = _free_ports(2)
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {sentinel}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {primary} 1\n")
    procs = _servers(tmp_path, [["--port", str(primary), "--bind", "127.0.0.1", "--save", ""],
                                [str(conf), "--sentinel"]])
    try:
        import redis

        _wait_until(lambda: redis.Redis(port=sentinel).sentinel_get_master_addr_by_name("mymaster"), "the sentinel")
        # When a connection names the Sentinel, the service and a database
        monkeypatch.setattr(conftest, "REDIS_URL", f"redis+sentinel://127.0.0.1:{sentinel}/mymaster/3")
        f = make_farm("redis")
        # Then jobs go to the primary's database 3 and a worker runs them
        _run_three_jobs(f, ["a", "b", "c"])
        assert redis.Redis(port=primary, db=3).exists(f"{f.queue().prefix}:queues")
        f.close()
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


def test_a_cluster_runs_queues_spread_over_its_nodes(make_farm, tmp_path, monkeypatch):
    # Given a Redis Cluster of three primaries
    ports = _free_ports(3)
    procs = _servers(tmp_path, [["--port", str(p), "--bind", "127.0.0.1", "--save", "", "--cluster-enabled", "yes",
                                 "--cluster-config-file", f"nodes-{p}.conf"] for p in ports])
    try:
        import redis

        for p in ports:
            _wait_until(lambda p=p: redis.Redis(port=p).ping(), "the nodes")
        subprocess.run([need_tool("redis-cli"), "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        _wait_until(lambda: all("cluster_state:ok" in subprocess.run(
            [need_tool("redis-cli"), "-p", str(p), "cluster", "info"], capture_output=True, text=True).stdout
            for p in ports), "the cluster")
        # When a connection names one node, with queues whose slots lie on different nodes
        monkeypatch.setattr(conftest, "REDIS_URL", f"redis://127.0.0.1:{ports[0]}/0")
        f = make_farm("redis")
        assert f.queue().cluster
        queues = ["q1", "q2", "q3", "q4", "q5"]
        _run_three_jobs(f, queues)
        # and a batch claimed across those nodes is settled, every job of it
        q = f.queue()
        for name in queues:
            farm.dispatch(Record(str(f.out), name), queue=name)
        got = q.reserve(queues, 5, 1.0)
        assert sorted(r.queue for r in got) == queues
        for r in got:
            assert q.starting(r)
            q.ack(r)
        assert all(c["ready"] == c["reserved"] == 0 for c in q.counts().values())
        # Then a failed job is kept in the cluster, and retry puts it back
        jid = farm.dispatch(Record(str(f.out), "x"), queue="q2")
        (r,) = f.queue().reserve(["q2"], 1, 1.0)
        assert f.queue().fail(r, r.body, "ValueError: no") and [x.id for x in f.store().failed()] == [jid]
        assert "1 job(s) pushed back" in f.farmctl("retry", "all", check=True).stdout
        assert f.queue().counts()["q2"]["ready"] == 1
        f.close()
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


def test_with_a_store_failed_jobs_stamps_and_heartbeats_live_in_the_database(make_farm):
    # Given a redis connection whose `store:` is a SQLite database
    f = make_farm("redis")
    f.manifest.write_text(f.manifest.read_text().replace("    driver: redis\n", "    driver: redis\n    store: store\n")
                          + f"  store: {{driver: database, url: 'sqlite:///{f.tmp}/store.db'}}\n")
    f.app = farm.configure(f.manifest)
    from farm import app

    assert type(app.store("main")).__name__ == "DatabaseQueue"
    # When a job fails for good on a worker
    jid = farm.dispatch(Flaky(str(f.out)), tries=1)
    p = f.worker("--stop-when-empty")
    assert finished(p) == 0
    # Then its entry is in the database, status counts it on the redis connection, and retry
    # puts it back onto its Redis queue
    assert [e.id for e in app.queue("store").failed()] == [jid]
    status = json.loads(f.farmctl("status", "--json", check=True).stdout)
    assert status["connections"]["main"]["default"]["failed"] == 1
    assert "1 job(s) pushed back" in f.farmctl("retry", jid, check=True).stdout
    assert f.queue().counts()["default"] == {"ready": 1, "delayed": 0, "reserved": 0, "failed": 0}
