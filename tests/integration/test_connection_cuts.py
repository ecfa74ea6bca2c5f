"""Issue 17: the database drivers through connection cuts.

The faults are made on cue by a TCP proxy (tests/support/tcpproxy.py): the request carrying
a pattern reaches the server and the server's reply is swallowed before the connection is
cut (the commit landed, the client never hears of it), or the request is dropped with the
cut (it never landed). The last test cuts every connection every two seconds under a
producer and two workers and counts every job.
"""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import farm
from conftest import MY_URL, PG_URL, mysql_params, pg_conninfo, wait_until
from tcpproxy import Proxy, free_port
from testjobs import Ledger, Record

NETWORKED = ["postgresql", "mysql"]     # SQLite has no connection to cut


class Cut:
    """A farm whose manifest `via` reaches its database through a proxy; `f.manifest` does not."""

    def __init__(self, f, backend: str, proxy: type[Proxy] = Proxy) -> None:
        from sqlalchemy.engine import make_url

        self.f, self.backend = f, backend
        url = PG_URL if backend == "postgresql" else MY_URL
        real = make_url(url)
        self.proxy = proxy(free_port(), (real.host or "127.0.0.1", real.port or (5432 if backend == "postgresql" else 3306)))
        self.proxy.start()
        self.via = f.tmp / "conf" / "via.yaml"
        self.via.write_text(f.manifest.read_text().replace(
            url, real.set(host="127.0.0.1", port=self.proxy.port).render_as_string(hide_password=False)))
        text = f.manifest.read_text()
        self.table = re.search(r"table: (\w+)", text).group(1)
        self.failed_table = re.search(r"failed_table: (\w+)", text).group(1)
        f.queue()                       # the tables, made directly

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        """A query on a direct connection of its own (never through the proxy)."""
        if self.backend == "postgresql":
            import psycopg

            with psycopg.connect(pg_conninfo(), autocommit=True) as c:
                cur = c.execute(query.replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []
        import pymysql

        c = pymysql.connect(autocommit=True, **mysql_params())
        try:
            with c.cursor() as cur:
                cur.execute(query.replace("?", "%s"), params)
                return list(cur.fetchall())
        finally:
            c.close()

    def stored(self, ids: list[str]) -> Counter:
        """How many rows each id has in the jobs table."""
        marks = ", ".join(["?"] * len(ids))
        return Counter(r[0] for r in self.sql(f"SELECT uuid FROM {self.table} WHERE uuid IN ({marks})", tuple(ids)))

    def worker(self, log: Path, *args: str, via: bool = True) -> subprocess.Popen:
        with open(log, "ab") as err:
            p = subprocess.Popen([sys.executable, "-m", "farm", "work", "--config", str(self.via if via else self.f.manifest),
                                  "--sleep", "0.1", *args], cwd=self.f.tmp, env=self.f.env(),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        self.f.procs.append(p)
        return p

    def drain(self) -> None:
        """Run what is queued, directly, until the queue is empty."""
        self.f.farmctl("work", "--config", str(self.f.manifest), "--stop-when-empty", check=True)

    def close(self) -> None:
        self.proxy.close()


@pytest.fixture
def cut(make_farm, request):
    made: list[Cut] = []

    def make(backend: str, proxy: type[Proxy] = Proxy, **kw) -> Cut:
        c = Cut(make_farm(backend, **kw), backend, proxy)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def runs(f) -> Counter:
    """Completed runs per tag (Record writes `<tag> <attempt> <pid>` once it has run)."""
    return Counter(line.split()[0] for line in f.lines())


# -- dispatch ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", NETWORKED)
@pytest.mark.parametrize("fault", ["swallow_reply_after", "drop_request"], ids=["reply_lost", "request_lost"])
def test_connection_cuts_dispatch_whose_insert_or_its_reply_is_lost_returns_the_id_and_stores_it_once(cut, backend, fault):
    # Given a producer whose connection loses the server's reply to its INSERT (the INSERT
    # committed), or loses the INSERT itself before the server reads it
    c = cut(backend)
    farm.configure(c.via)
    getattr(c.proxy, fault)(f"INSERT INTO {c.table}".encode())
    # When it dispatches a job
    job_id = farm.dispatch(Record(str(c.f.out), "once"))
    # Then the fault went off, yet dispatch returned the id, and the job is stored once
    # (looked up, or stored again on a new connection)
    assert c.proxy.fired_count == 1
    assert c.stored([job_id]) == {job_id: 1}
    # and it runs once
    c.drain()
    assert runs(c.f) == {"once": 1}


@pytest.mark.parametrize("backend", NETWORKED)
def test_connection_cuts_dispatch_many_whose_commit_reply_is_lost_stores_each_job_once(cut, backend):
    # Given a producer whose transaction's COMMIT (PostgreSQL: after a COPY) loses its reply
    c = cut(backend)
    farm.configure(c.via)
    c.proxy.swallow_reply_after(b"COMMIT\x00" if backend == "postgresql" else b"\x03COMMIT")   # not READ COMMITTED
    # When it dispatches five jobs at once
    ids = farm.dispatch_many([Record(str(c.f.out), f"j{n}") for n in range(5)])
    # Then every id came back and each job is stored once, and runs once
    assert c.proxy.fired_count == 1 and len(ids) == 5
    assert c.stored(ids) == {i: 1 for i in ids}
    c.drain()
    assert runs(c.f) == {f"j{n}": 1 for n in range(5)}


@pytest.mark.parametrize("backend", NETWORKED)
def test_connection_cuts_dispatch_whose_database_stays_unreachable_raises_that_the_job_may_or_may_not_be_stored(
        cut, backend):
    from farm import app

    # Given a producer whose INSERT committed, whose reply is lost, and whose database then
    # refuses every connection; it retries for one second
    c = cut(backend)
    farm.configure(c.via)
    app.queue("main").push_retry = 1.0
    c.proxy.swallow_reply_after(f"INSERT INTO {c.table}".encode())
    threading.Thread(target=lambda: c.proxy.fired.wait(10) and c.proxy.close(), daemon=True).start()
    # When it dispatches a job
    job = Record(str(c.f.out), "unknown")
    started = time.monotonic()
    with pytest.raises(farm.DriverUnavailable) as e:
        farm.dispatch(job)
    # Then after about a second it raises, naming the job and saying its outcome is unknown
    assert 1.0 <= time.monotonic() - started < 10
    text = str(e.value)
    job_id = re.search(r"job ([0-9a-f-]{36}) may or may not be stored", text)
    assert job_id, text
    assert "\n" not in text
    # and the job is there (its commit had landed), once
    assert c.stored([job_id.group(1)]) == {job_id.group(1): 1}


@pytest.mark.parametrize("how", ["dispatch", "dispatch_many"])
def test_connection_cuts_a_unique_dispatch_whose_outcome_is_unknown_keeps_its_lock_so_no_second_copy_is_stored(cut, how):
    from farm import app
    from uniquejobs import OnlyOnce

    # Given a producer whose commit of a unique job lands but whose reply is lost, and whose
    # look-ups of the old session are then dropped until it gives up after one second (its
    # lock store, the same database, is reachable again by then)
    c = cut("postgresql")
    farm.configure(c.via)
    app.queue("main").push_retry = 1.0
    # (the locks' upsert is `INSERT INTO <table>_locks`: not the pattern)
    c.proxy.swallow_reply_after(f"INSERT INTO {c.table} (".encode() if how == "dispatch" else b"COMMIT\x00")
    for _ in range(200):
        c.proxy.drop_request(b"pg_stat_activity")
    # When it dispatches the job (dispatch_many: two), and the outcome is unknown
    keys = ["k"] if how == "dispatch" else ["k", "l"]
    with pytest.raises(farm.DriverUnavailable) as e:
        if how == "dispatch":
            farm.dispatch(OnlyOnce(str(c.f.out), "k"))
        else:
            farm.dispatch_many([OnlyOnce(str(c.f.out), k) for k in keys])
    assert c.proxy.fired_count > 1, str(e.value)
    ids = e.value.unknown
    assert len(ids) == len(keys), str(e.value)
    with c.proxy.lock:
        c.proxy.faults.clear()
    # Then a second dispatch of the same jobs is refused as a duplicate: the locks were kept
    assert [farm.dispatch(OnlyOnce(str(c.f.out), k)) for k in keys] == [None] * len(keys)
    assert farm.dispatch_many([OnlyOnce(str(c.f.out), k) for k in keys]) == [None] * len(keys)
    # and each job is stored once
    assert sorted(r[0] for r in c.sql(f"SELECT uuid FROM {c.table}")) == sorted(ids)



def test_connection_cuts_a_dispatch_whose_old_session_will_not_end_is_not_pushed_again(cut, monkeypatch):
    from farm import app
    from farm.drivers import dbretry

    # Given a producer whose old server session is still there and cannot be ended (as when
    # the server never saw the cut): a session of its own label that pg_terminate_backend
    # does not reach (the kill made a no-op for the test)
    import psycopg

    c = cut("postgresql")
    farm.configure(c.via)
    q = app.queue("main")
    q.push_retry = 1.0
    monkeypatch.setattr(dbretry, "GONE_WAIT", 0.2)
    monkeypatch.setitem(dbretry._KILL, "postgresql", "SELECT %s")
    with q._cursor() as cur:
        cur.execute("SELECT current_setting('application_name')")
        (label,) = cur.fetchone()
    with psycopg.connect(pg_conninfo(), autocommit=True, application_name=label) as old:
        session = old.info.backend_pid
        # When a push that was sent on it is retried
        from farm.drivers.base import Outgoing

        item = Outgoing(id="00000000-0000-4000-8000-00000000beef", queue="default",
                        body='{"v": 1, "id": "00000000-0000-4000-8000-00000000beef", "job": "x:y"}',
                        available_at=time.time())
        with pytest.raises(farm.DriverUnavailable) as e:
            dbretry.push_again(q, [item], session, farm.DriverUnavailable("connection 'main': cut"))
    # Then nothing was pushed again (the old session might yet commit): the outcome is unknown
    assert "may or may not be stored" in str(e.value) and "\n" not in str(e.value)
    assert e.value.unknown == [item.id]
    assert not c.stored([item.id])



def test_connection_cuts_a_dispatch_whose_reply_hung_past_the_retry_time_is_looked_up_but_not_pushed_again(cut):
    from farm import app
    from farm.drivers import dbretry
    from farm.drivers.base import Outgoing

    # Given a push first sent a minute ago whose reply never came (a black-holed connection),
    # and which the look-up does not find (its job may have run, its claim's trace expired)
    c = cut("postgresql")
    farm.configure(c.via)
    q = app.queue("main")
    q.push_retry = 1.0
    job_id = "00000000-0000-4000-8000-0000000000aa"
    item = Outgoing(id=job_id, queue="default", body='{"v": 1, "id": "%s", "job": "x:y"}' % job_id,
                    available_at=time.time())
    # When the driver retries it (its old session long gone)
    with pytest.raises(farm.DriverUnavailable) as e:
        dbretry.push_again(q, [item], 2 ** 30, farm.DriverUnavailable("connection 'main': cut"),
                           started=time.monotonic() - 60)
    # Then it was not pushed again: the outcome is unknown, and nothing is stored twice
    assert "may or may not be stored" in str(e.value) and e.value.unknown == [job_id]
    assert not c.stored([job_id])


class HeldProxy(Proxy):
    """A proxy whose new connections wait (accepted, not yet forwarded) while `held` is clear."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.held = threading.Event()
        self.held.set()
        self.waiting = threading.Event()        # set once a new connection waits on the hold
        super().__init__(port, target)

    @property
    def target(self) -> tuple[str, int]:        # read by the accepting thread before it connects
        if not self.held.is_set():
            self.waiting.set()
            self.held.wait(30)
        return self._target

    @target.setter
    def target(self, value: tuple[str, int]) -> None:
        self._target = value


@pytest.mark.parametrize("backend", NETWORKED)
def test_connection_cuts_a_dispatch_whose_reply_was_lost_and_whose_job_already_ran_is_not_stored_again(
        cut, backend):
    from farm import app

    # Given a producer through a proxy that loses the reply to its INSERT (which committed) and
    # then holds the producer's reconnect, and a worker on a direct connection
    c = cut(backend, proxy=HeldProxy)
    farm.configure(c.via)
    app.queue("main").durable_session()        # the producer's connection, open before the hold
    c.proxy.held.clear()
    c.proxy.swallow_reply_after(f"INSERT INTO {c.table}".encode())
    c.worker(c.f.tmp / "w.log", via=False)

    def release_once_acked() -> None:
        try:        # the job ran and its row is gone (acked) while the producer waits to reconnect
            c.proxy.waiting.wait(30)
            wait_until(lambda: runs(c.f) and not c.sql(f"SELECT uuid FROM {c.table}"), 30,
                       "the job to run and be acked", explain=lambda: (c.f.tmp / "w.log").read_text())
        finally:
            c.proxy.held.set()

    watcher = threading.Thread(target=release_once_acked, daemon=True)
    watcher.start()
    # When it dispatches a job, and the worker runs and acks it before the producer looks it up
    job_id = farm.dispatch(Record(str(c.f.out), "once"))
    watcher.join(40)
    # Then the reply was lost and the look-up waited for the ack, found the job's trace and
    # did not store it again: it ran once
    assert c.proxy.fired_count == 1 and c.proxy.waiting.is_set()
    assert c.sql(f"SELECT n FROM {c.table}_locks WHERE name = ?", (f"claimed:{job_id}",)) == [(1,)]
    assert not c.stored([job_id])
    c.drain()
    assert runs(c.f) == {"once": 1}, c.f.lines()


@pytest.mark.parametrize("backend", NETWORKED)
def test_connection_cuts_a_claim_leaves_a_trace_only_while_a_dispatch_may_retry_and_expired_ones_are_pruned(
        cut, backend, monkeypatch):
    # Given the locks table holding a trace that expired long ago
    c = cut(backend)
    c.sql(f"INSERT INTO {c.table}_locks (name, n, expires_at) VALUES ('claimed:old', 1, 1.0)")
    farm.configure(c.f.manifest)
    names = lambda: {r[0].decode() if isinstance(r[0], bytes) else r[0]      # noqa: E731
                     for r in c.sql(f"SELECT name FROM {c.table}_locks")}
    # When a job runs under workers whose dispatches never retry (FARM_DISPATCH_RETRY_SECONDS=0)
    quiet = farm.dispatch(Record(str(c.f.out), "quiet"))
    monkeypatch.setenv("FARM_DISPATCH_RETRY_SECONDS", "0")
    c.drain()
    # Then its claim wrote nothing, and nothing was pruned
    assert names() == {"claimed:old"}
    # When a job runs under the default (10 s)
    monkeypatch.delenv("FARM_DISPATCH_RETRY_SECONDS")
    traced = farm.dispatch(Record(str(c.f.out), "traced"))
    c.drain()
    # Then its claim left its trace, expiring about 70 s on, and the expired trace is gone
    assert names() == {f"claimed:{traced}"}, quiet
    (expires,) = c.sql(f"SELECT expires_at FROM {c.table}_locks")[0]
    assert 60 < expires - time.time() <= 70
    assert runs(c.f) == {"quiet": 1, "traced": 1}


# -- the worker's acks, fails and releases --------------------------------------------------------

def ack_pattern(c: Cut) -> bytes:
    """The bytes of the worker's ack: PostgreSQL's pipelined DELETE is a prepared statement
    bound by name (`\\0farm_ack\\0` is its Bind message only), MariaDB's is the query text."""
    return b"\x00farm_ack\x00" if c.backend == "postgresql" else f"DELETE FROM {c.table} WHERE id".encode()


@pytest.mark.parametrize("backend", NETWORKED)
def test_connection_cuts_a_finished_job_whose_ack_was_lost_is_acked_on_reconnect_and_not_run_again(cut, backend):
    # Given a worker through the proxy (retry_after 3 s), whose first ack is lost with its
    # connection before the server reads it
    c = cut(backend, retry_after=3)
    job_id = farm.dispatch(Record(str(c.f.out), "once"))
    c.proxy.drop_request(ack_pattern(c))
    w = c.worker(c.f.tmp / "w.log")
    # When it runs the job, and its ack is lost
    assert c.proxy.fired.wait(30), "the ack never went out"
    # Then the job is acked when the worker reconnects (its row goes) ...
    wait_until(lambda: not c.stored([job_id]), 20, "the job to be acked",
               explain=lambda: (c.f.tmp / "w.log").read_text())
    # ... having run once: it was never handed out again after retry_after
    assert runs(c.f) == {"once": 1}, c.f.lines()
    assert w.poll() is None


def test_connection_cuts_a_finished_job_whose_pipelined_ack_stalls_unanswered_is_kept_reserved(cut):
    # Given a PostgreSQL worker through the proxy (retry_after 2 s) whose pipelined ack goes
    # into a stalled connection: no reply, no FIN, as behind a NAT that dropped its state
    c = cut("postgresql", retry_after=2)
    job_id = farm.dispatch(Record(str(c.f.out), "once"))
    c.proxy.stall_request(ack_pattern(c))
    c.worker(c.f.tmp / "w.log")
    assert c.proxy.fired.wait(30), "the ack never went out"
    wait_until(lambda: runs(c.f), 10, "the job to run")
    # When another worker looks for work for three times retry_after
    c.worker(c.f.tmp / "other.log", via=False)
    time.sleep(6)
    # Then the finished job's reservation was renewed while its ack is unanswered, so it was
    # not handed out again: it ran once, and its row is still this worker's
    assert runs(c.f) == {"once": 1}, c.f.lines()
    assert c.stored([job_id]) == {job_id: 1}


@pytest.mark.parametrize("backend", NETWORKED)
def test_connection_cuts_a_job_whose_final_fail_was_lost_is_failed_on_reconnect_and_not_run_again(cut, backend):
    # Given a job with one try that raises, and a worker through the proxy (retry_after 3 s)
    # whose move of it to the failed table is lost with its connection
    c = cut(backend, retry_after=3)
    ledger = c.f.tmp / "ledger.txt"
    job_id = farm.dispatch(Ledger(str(ledger), "boom", how="raise"), tries=1)
    c.proxy.drop_request(f"INSERT INTO {c.failed_table}".encode())
    c.worker(c.f.tmp / "w.log")
    # When it runs the job and fails it
    assert c.proxy.fired.wait(30), "the fail never went out"
    # Then the job reaches the failed table once the worker reconnects
    wait_until(lambda: c.sql(f"SELECT id FROM {c.failed_table} WHERE id = ?", (job_id,)), 20,
               "the job in the failed table", explain=lambda: (c.f.tmp / "w.log").read_text())
    # having started once: it was never handed out again after retry_after
    assert [x.split()[0] for x in c.f.lines(ledger)] == ["start", "end"], c.f.lines(ledger)
    assert not c.stored([job_id])
    # and `job.failed` is logged once, when the fail landed
    log = (c.f.tmp / "w.log").read_text()
    assert len([x for x in log.splitlines() if "job.failed" in x and job_id in x]) == 1, log


def test_connection_cuts_a_final_fail_whose_commit_landed_but_whose_reply_was_lost_runs_its_hooks(cut):
    # Given a job with one try that raises, and a PostgreSQL worker through the proxy whose
    # fail commits but loses the reply to its COMMIT
    backend = "postgresql"
    c = cut(backend, retry_after=3)
    ledger = c.f.tmp / "ledger.txt"
    job_id = farm.dispatch(Ledger(str(ledger), "boom", how="raise"), tries=1)
    c.proxy.swallow_reply_after(b"COMMIT\x00")
    c.worker(c.f.tmp / "w.log")
    # When it runs the job and fails it
    assert c.proxy.fired.wait(30), "the COMMIT never went out"
    wait_until(lambda: "job.failed" in (c.f.tmp / "w.log").read_text() or "job.lost" in (c.f.tmp / "w.log").read_text(),
               20, "the fail to be settled", explain=lambda: (c.f.tmp / "w.log").read_text())
    # Then the fail made again matched nothing, but the failed table holds the job: it landed,
    # so `job.failed` is logged and the hooks ran, and nothing says it was lost
    log = (c.f.tmp / "w.log").read_text()
    assert "job.lost" not in log, log
    assert len([x for x in log.splitlines() if "job.failed " in x and job_id in x]) == 1, log
    assert c.sql(f"SELECT id FROM {c.failed_table} WHERE id = ?", (job_id,))
    assert [x.split()[0] for x in c.f.lines(ledger)] == ["start", "end"], c.f.lines(ledger)


@pytest.mark.parametrize("backend", NETWORKED)
def test_connection_cuts_a_release_that_was_lost_is_made_on_reconnect_and_the_job_runs_again_once(cut, backend):
    # Given a job that releases itself on its first attempt, and a worker through the proxy
    # (retry_after 30 s: a release left undone would hold the job that long) whose release is lost
    c = cut(backend, retry_after=30)
    ledger = c.f.tmp / "ledger.txt"
    farm.dispatch(Ledger(str(ledger), "rel", how="release"))
    c.proxy.drop_request(b"reserved_by = NULL, payload")
    c.worker(c.f.tmp / "w.log")
    # When it releases the job and the release is lost
    assert c.proxy.fired.wait(30), "the release never went out"
    # Then the release is made once the worker reconnects, and the job's second attempt runs
    # well before retry_after: started twice in all, and done
    wait_until(lambda: len(c.f.lines(ledger)) >= 4, 15, "the second attempt",
               explain=lambda: (c.f.tmp / "w.log").read_text())
    assert [x.split()[:3] for x in c.f.lines(ledger)] == [
        ["start", "rel", "1"], ["end", "rel", "1"], ["start", "rel", "2"], ["end", "rel", "2"]], c.f.lines(ledger)


# -- every connection cut every two seconds ------------------------------------------------------

@pytest.mark.parametrize("backend", NETWORKED)
def test_connection_cuts_every_two_seconds_lose_no_job_and_complete_none_twice_while_a_producer_dispatches(
        cut, backend):
    from farm import app

    # Given two workers and a producer, all through a proxy that cuts every connection every 2 s
    c = cut(backend, retry_after=5)
    farm.configure(c.via)
    total = 300
    workers = [c.worker(c.f.tmp / f"w{n}.log") for n in range(2)]
    stop = threading.Event()
    cuts: list[int] = []

    def cutter() -> None:
        while not stop.wait(2.0):
            cuts.append(c.proxy.cut())

    threading.Thread(target=cutter, daemon=True).start()
    # When the producer dispatches 300 jobs over about ten seconds, one at a time and in fives
    returned: dict[str, str] = {}
    raised: list[str] = []
    n = 0
    try:
        while n < total:
            try:
                if n % 50 < 45:
                    returned[farm.dispatch(Record(str(c.f.out), f"t{n}"))] = f"t{n}"
                    n += 1
                else:
                    jobs = [Record(str(c.f.out), f"t{n + k}") for k in range(5)]
                    for k, job_id in enumerate(farm.dispatch_many(jobs)):
                        returned[job_id] = f"t{n + k}"
                    n += 5
            except farm.DriverUnavailable as e:
                raised.append(str(e))
                n += 1
            time.sleep(0.03)
        # Then every dispatch returned its id, and every job ran, once
        assert not raised, raised
        wait_until(lambda: len(runs(c.f)) >= total, 30, "every job to run",
                   explain=lambda: f"{len(runs(c.f))} of {total} ran")
    finally:
        stop.set()
    done = runs(c.f)
    twice = {tag: k for tag, k in done.items() if k > 1}
    lost = set(returned.values()) - set(done)
    assert len(cuts) >= 4 and sum(cuts) > 0
    assert not lost, sorted(lost)
    assert not twice, twice
    assert len(returned) == total
    # and nothing is left in the queue
    app.queue("main")
    assert not c.sql(f"SELECT uuid FROM {c.table}")
    for w in workers:
        assert w.poll() is None


def test_connection_cuts_a_fail_cut_off_whose_job_another_worker_took_meanwhile_logs_job_lost_and_runs_no_failed_hook(cut):
    from testjobs import Flaky

    # Given a job with one try that raises on its first attempt only, and a worker through the
    # proxy (retry_after 2 s) whose move of it to the failed table is dropped with its
    # connection, after which the proxy refuses every connection
    c = cut("postgresql", retry_after=2)
    path = c.f.tmp / "flaky.txt"
    job_id = farm.dispatch(Flaky(str(path), succeed_on=2), tries=1)
    c.proxy.drop_request(f"INSERT INTO {c.failed_table}".encode())
    threading.Thread(target=lambda: c.proxy.fired.wait(30) and c.proxy.close(), daemon=True).start()
    log = c.f.tmp / "w.log"
    w = c.worker(log)
    assert c.proxy.fired.wait(30), "the fail never went out"
    # When its reservation lapses and a second worker, on a direct connection, takes the job and
    # runs it (it succeeds this time)
    c.worker(c.f.tmp / "w2.log", via=False)
    wait_until(lambda: c.f.lines(path)[-1:] == ["attempt 2"] and not c.stored([job_id]), 30,
               "the second worker to run the job", explain=lambda: c.f.lines(path))
    # Then the first worker ran no failed() hook for a fail that has not landed
    assert c.f.lines(path) == ["attempt 1", "attempt 2"]
    # and once it reaches the database again its fail matches nothing: it logs the job lost,
    # not failed, and still runs no hook
    c.proxy = Proxy(c.proxy.port, c.proxy.target)
    c.proxy.start()
    wait_until(lambda: "job.lost" in log.read_text(), 30, "job.lost", explain=log.read_text)
    lost = [x for x in log.read_text().splitlines() if "job.lost" in x]
    assert len(lost) == 1 and job_id in lost[0], lost
    assert "job.failed" not in log.read_text(), log.read_text()
    assert c.f.lines(path) == ["attempt 1", "attempt 2"]
    assert not c.sql(f"SELECT id FROM {c.failed_table} WHERE id = ?", (job_id,))
    assert w.poll() is None
