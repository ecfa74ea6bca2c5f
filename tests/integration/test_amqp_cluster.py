"""Issue 17, amqp part: RabbitMQ beyond one node (quorum queues, `urls:` failover), death
counting that survives a broker restart, and what a connection cut costs.

Real workers against the real RabbitMQ, each test in a vhost of its own.
"""
from __future__ import annotations

import re
import signal
import socket
import threading
import subprocess
import time

import pika
import pytest

import farm
from conftest import AMQP_URL
from tcpproxy import Proxy, free_port
from test_amqp_hardening import hold_a_batch, runs, stop
from testjobs import KillsItsWorker, KillsItsWorkerTwice, Record


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True,
                          timeout=120).stdout


def restart_broker() -> None:
    """stop_app/start_app (others use the broker too: always started again)."""
    try:
        rabbitmqctl("stop_app")
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")


def reconfigure(f, old: str, new: str) -> None:
    """Edit the test farm's connection (`old` must appear once) and load the manifest again."""
    text = f.manifest.read_text()
    assert text.count(old) == 1, text
    f.manifest.write_text(text.replace(old, new))
    f.app = farm.configure(f.manifest)


def quorum(f) -> None:
    reconfigure(f, "    driver: amqp\n", "    driver: amqp\n    queue_type: quorum\n")


def queue_types(f) -> dict[str, tuple[str, str]]:
    """The broker's own view: queue -> (type, arguments)."""
    out = rabbitmqctl("list_queues", "-p", f.queue().params.virtual_host, "name", "type", "arguments",
                      "--no-table-headers")
    rows = [line.split("\t") for line in out.splitlines() if line.strip()]
    return {r[0]: (r[1], r[2]) for r in rows}


def test_issue17_quorum_queues_run_jobs_and_a_delayed_job_dead_letters_at_least_once(make_farm):
    # Given a connection with queue_type: quorum
    f = make_farm("amqp")
    quorum(f)
    # When a job and a delayed job are dispatched and a worker runs them
    farm.dispatch(Record(str(f.out), "now"))
    farm.dispatch(Record(str(f.out), "later"), delay=1.0)
    p = f.worker("--sleep", "0.1")
    f.wait_for(lambda: set(runs(f)) == {"now", "later"}, timeout=30, what="both jobs")
    # Then both ran once, on quorum queues, the delay queue dead-lettering at-least-once
    assert stop(p)[0] == 0
    assert runs(f) == {"now": 1, "later": 1}
    types = queue_types(f)
    assert types["default"][0] == "quorum", types
    (delay,) = [q for q in types if q.startswith("default.delay.")]
    assert types[delay][0] == "quorum"
    assert "at-least-once" in types[delay][1] and "reject-publish" in types[delay][1], types[delay]
    assert f.queue().counts()["default"] == {"ready": 0, "delayed": 0, "reserved": None, "failed": 0}


def test_issue17_a_queue_of_the_other_type_is_a_one_line_error_naming_the_queue_and_the_key(make_farm):
    # Given a classic queue `default` (made by a classic connection), and the manifest now quorum
    f = make_farm("amqp")
    farm.dispatch(Record(str(f.out), "classic"))
    quorum(f)
    # When a job is dispatched, pushed, and a worker starts
    with pytest.raises(farm.FarmError) as raised:
        farm.dispatch(Record(str(f.out), "refused"))
    push = f.farmctl("push", '{"v": 1, "job": "testjobs:Noop", "data": {}}')
    work = f.farmctl("work", "--stop-when-empty", timeout=60)
    # Then each says in one line which queue and which key, exits 2, and no traceback
    for text in (str(raised.value), push.stderr, work.stderr.strip().splitlines()[-1]):
        assert "'default'" in text and "classic" in text and "connections.main.queue_type" in text, text
    assert push.returncode == 2 and work.returncode == 2, (push, work)
    assert "Traceback" not in push.stderr + work.stderr
    assert len(push.stderr.strip().splitlines()) == 1, push.stderr
    assert runs(f) == {}                                     # the classic job was not taken


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_issue17_a_job_that_kills_its_worker_every_time_is_failed_after_a_bounded_number_of_deaths_through_a_broker_restart(
        make_farm, queue_type):
    # Given a job that SIGKILLs whatever worker runs it, on a classic or a quorum queue
    f = make_farm("amqp")
    if queue_type == "quorum":
        quorum(f)
    jid = farm.dispatch(KillsItsWorker(str(f.out)))
    # When workers keep being started for it, as supervisord would, and the broker restarts
    # after the first death
    deaths = 0
    for _ in range(8):
        p = f.worker("--stop-when-empty")
        code = p.wait(60)
        p.stderr.close()
        if code != -signal.SIGKILL:
            assert code == 0, code
            break
        deaths += 1
        if deaths == 1:
            restart_broker()
    # Then it is failed after a bounded number of deaths (the count survived the restart),
    # saying why, and no longer handed out
    print(f"\n{queue_type}: failed after {deaths} deaths")
    assert 2 <= deaths <= 4, f"{deaths} workers died"
    (entry,) = f.store().failed()
    assert entry.id == jid and "died" in entry.exception.splitlines()[0], entry.exception
    assert f.queue().counts()["default"]["ready"] == 0
    assert len(f.lines()) == deaths


def test_sigkill_storm_a_job_requeued_unstarted_by_a_dead_worker_then_killed_inside_twice_still_runs(make_farm):
    # Given a job held unstarted in the prefetch of a worker that is SIGKILLed (the broker marks
    # it redelivered, as if it had died inside it), and which then kills its worker on its
    # first two real starts
    f = make_farm("amqp")
    out = f.tmp / "twice.txt"
    p = f.worker("--sleep", "0.1")
    job = KillsItsWorkerTwice(str(out))
    hold_a_batch(f, p, [Record(str(f.out), "long", seconds=2)] + [job])
    f.wait_for(lambda: f.lines(f.tmp / "out.txt.started"), what="the long job to start")
    p.kill()
    p.wait(10)
    p.stderr.close()
    # When workers keep being started for it, as supervisord would
    codes = []
    for _ in range(5):
        w = f.worker("--stop-when-empty")
        codes.append(w.wait(60))
        w.stderr.close()
        if codes[-1] != -signal.SIGKILL:
            break
    # Then it ran to its end on its third start: two deaths inside it and a requeue out of a
    # dead worker's prefetch are not "killed too often" (RabbitMQ cannot tell the requeue from
    # a death, so it allows one more)
    assert codes == [-signal.SIGKILL, -signal.SIGKILL, 0], codes
    assert [line.split()[0] for line in f.lines(out)] == ["done"]
    assert f.store().failed() == []


def test_issue17_urls_fail_over_from_a_closed_port_to_the_broker_and_a_dropped_worker_reconnects_through_the_list(make_farm):
    # Given urls: a closed port first, then the real broker
    f = make_farm("amqp")
    real = re.search(r"    url: (\S+)\n", f.manifest.read_text()).group(1)
    vhost = real.rsplit("/", 1)[1]
    closed = f"amqp://guest:guest@127.0.0.1:{free_port()}/{vhost}"
    reconfigure(f, f"    url: {real}\n", f"    urls: ['{closed}', '{real}']\n")
    # When jobs are dispatched and a worker runs them
    farm.dispatch(Record(str(f.out), "first"))
    p = f.worker("--sleep", "0.1")
    f.wait_for(lambda: runs(f) == {"first": 1}, timeout=30, what="the first job")
    # and the broker drops every connection of the vhost (the worker's and the producer's)
    rabbitmqctl("close_all_connections", "-p", f.queue().params.virtual_host, "test: failover")
    farm.dispatch(Record(str(f.out), "second"))
    # Then both ran once, through the second url, and the worker reconnected and went on
    f.wait_for(lambda: runs(f) == {"first": 1, "second": 1}, timeout=30, what="the job after the drop")
    code, err = stop(p)
    assert code == 0 and "unavailable" in err, err
    assert f.queue().counts()["default"]["ready"] == 0


class CutProxy(Proxy):
    """The Proxy, plus `cut()`: drop every connection through it but go on accepting."""

    def cut(self) -> int:
        with self.lock:
            socks, self.socks = self.socks[1:], self.socks[:1]
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        return len(socks) // 2


JOBS, CUTS, PREFETCH = 1000, 6, 10


def drained(p) -> list[str]:
    """Read the worker's log as it comes (a pipe nobody reads stops the worker once full)."""
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(p.stderr), daemon=True).start()
    return lines


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_issue17_connection_cuts_complete_jobs_twice_no_more_than_were_in_flight(make_farm, queue_type):
    # Given two workers (prefetch 10) behind a TCP proxy to the broker, draining no-op jobs
    f = make_farm("amqp")
    reconfigure(f, "    driver: amqp\n", f"    driver: amqp\n    prefetch: {PREFETCH}\n")
    if queue_type == "quorum":
        quorum(f)
    farm.dispatch_many([Record(str(f.out), f"j{i}") for i in range(JOBS)])
    real = re.search(r"    url: (\S+)\n", f.manifest.read_text()).group(1)
    host = pika.URLParameters(AMQP_URL)
    proxy = CutProxy(free_port(), (host.host, host.port))
    proxy.start()
    reconfigure(f, f"    url: {real}\n", f"    url: {real.replace(f':{host.port}/', f':{proxy.port}/')}\n")
    workers = [f.worker("--sleep", "0.1") for _ in range(2)]
    logs = [drained(p) for p in workers]
    # When every connection through the proxy is cut, CUTS times while they work
    cuts = 0
    try:
        for n in range(CUTS):
            f.wait_for(lambda: len(f.lines()) >= (n + 1) * JOBS // (CUTS + 2), timeout=60,
                       what=f"progress before cut {n + 1}")
            if proxy.cut():
                cuts += 1
        want = {f"j{i}" for i in range(JOBS)}
        f.wait_for(lambda: want <= set(runs(f)), timeout=120, what="every job")
        time.sleep(0.5)
        for p in workers:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(30) for p in workers]
    finally:
        proxy.close()
    # Then no job was lost or failed, and a job completed twice only where a cut took its ack:
    # at most what each worker had unacked (its prefetch, the running job included) per cut
    twice = sum(n - 1 for n in runs(f).values())
    stale = sum(line.count("job.stale") for log in logs for line in log)
    print(f"\n{queue_type}: {JOBS} jobs, {cuts} cuts, 2 workers: {twice} completed twice, {stale} held deliveries dropped")
    assert codes == [0, 0]
    assert f.store().failed() == []
    assert twice <= cuts * len(workers) * PREFETCH, runs(f).most_common(5)


def test_issue17_deliveries_held_when_a_connection_is_cut_are_not_started_after_it(make_farm):
    # Given a driver behind a TCP proxy, holding a batch of ten deliveries
    f = make_farm("amqp")
    real = re.search(r"    url: (\S+)\n", f.manifest.read_text()).group(1)
    host = pika.URLParameters(AMQP_URL)
    proxy = CutProxy(free_port(), (host.host, host.port))
    proxy.start()
    try:
        reconfigure(f, f"    url: {real}\n", f"    url: {real.replace(f':{host.port}/', f':{proxy.port}/')}\n")
        q = f.queue()
        farm.dispatch_many([Record(str(f.out), f"j{i}") for i in range(10)])
        held: list = []
        f.wait_for(lambda: held.extend(q.reserve(["default"], 10, 0.5)) or len(held) == 10, what="ten deliveries")
        assert q.starting(held[0])
        q.ack(held[0])
        # When every connection through the proxy is cut while the worker's thread keeps the
        # consumer busy (its keeper thread, which would read the FIN, cannot take the lock)
        with q._consumer.lock:
            assert proxy.cut()
            time.sleep(0.2)
            started = [q.starting(r) for r in held[1:]]
        # Then none of the other nine is started: their acks could not reach the broker, which
        # hands them out again (each would otherwise run twice)
        assert started == [False] * 9
    finally:
        proxy.close()
        f.queue().close()


def test_issue17_a_quorum_message_requeued_unstarted_by_lost_connections_counts_one_death_not_each_return(make_farm):
    # Given a job on a quorum queue whose delivery is dropped unstarted three times (the
    # consuming connection goes while it is held: the broker requeues it, counting each return)
    f = make_farm("amqp")
    quorum(f)
    q = f.queue()
    farm.dispatch(Record(str(f.out), "held"))
    for _ in range(3):
        got: list = []
        f.wait_for(lambda: got.extend(q.reserve(["default"], 1, 0.5)) or got, what="the delivery")
        with q._consumer.lock:
            q._consumer.lost()
    got = []
    f.wait_for(lambda: got.extend(q.reserve(["default"], 1, 0.5)) or got, what="the fourth delivery")
    (r,) = got
    # When it finally starts
    assert r.handle.delivery_count >= 3
    assert q.starting(r)
    # Then one death is counted (the store's count of redelivered starts), not the broker's
    # three returns, so the job runs instead of being failed as killed too often
    assert r.handle.deaths == 1 and r.attempts == 2
    q.ack(r)
    q.close()


def test_issue17_on_quorum_queues_the_brokers_count_bounds_deaths_while_the_store_is_down(make_farm):
    # Given a quorum connection whose store is PostgreSQL behind a TCP proxy, and a job whose
    # starts end with its consumer gone twice (as when its worker dies)
    from conftest import PG_URL, _check_pg, need_server
    from sqlalchemy.engine import make_url

    need_server("PostgreSQL", _check_pg)
    f = make_farm("amqp")
    quorum(f)
    pg = make_url(PG_URL)
    proxy = Proxy(free_port(), (pg.host or "127.0.0.1", pg.port or 5432))
    proxy.start()
    store = re.search(r"    url: (sqlite:\S+)\n", f.manifest.read_text()).group(1)
    reconfigure(f, f"    url: {store}\n",
                f"    url: {pg.set(port=proxy.port).render_as_string(hide_password=False)}\n")
    q = f.queue()
    farm.dispatch(Record(str(f.out), "dies"))

    def started() -> object:
        got: list = []
        f.wait_for(lambda: got.extend(q.reserve(["default"], 1, 0.5)) or got, what="the delivery")
        assert q.starting(got[0])
        return got[0].handle

    try:
        assert started().deaths == 0                # the first start
        with q._consumer.lock:
            q._consumer.lost()
        assert started().deaths == 1                # counted in the store
        with q._consumer.lock:
            q._consumer.lost()
        # When the store cannot be reached at the next start
        proxy.close()
        d = started()
    finally:
        proxy.close()
        q.close()
    # Then the broker's count stands in for the store's: the deaths still add up
    assert d.deaths == d.delivery_count == 2


class Silent:
    """A listening socket that accepts connections and never says a word (a blackholed broker
    that still completes TCP handshakes): only a timeout gets a client past it."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.server.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.server.close()
        for s in self.held:
            s.close()


def test_issue17_urls_whose_first_broker_accepts_and_stays_silent_reach_the_next_within_seconds(make_farm):
    # Given urls: a broker that accepts connections and never answers first, then the real one
    f = make_farm("amqp")
    real = re.search(r"    url: (\S+)\n", f.manifest.read_text()).group(1)
    vhost = real.rsplit("/", 1)[1]
    silent = Silent()
    try:
        reconfigure(f, f"    url: {real}\n", f"    urls: ['amqp://guest:guest@127.0.0.1:{silent.port}/{vhost}', '{real}']\n")
        # When a job is dispatched (its connection made through the list)
        started = time.monotonic()
        farm.dispatch(Record(str(f.out), "through"))
        dispatched = time.monotonic() - started
        # and a worker runs it (its publisher and its consumer each through the list)
        started = time.monotonic()
        work = f.farmctl("work", "--stop-when-empty", timeout=120)
        worked = time.monotonic() - started
    finally:
        silent.close()
    print(f"\nsilent first url: dispatch {dispatched:.1f}s, worker run {worked:.1f}s")
    # Then each got past the silent broker within a few seconds (pika's defaults: 10-15 s a connect)
    assert work.returncode == 0, work.stderr
    assert runs(f) == {"through": 1}
    assert dispatched < 6, dispatched
    assert worked < 12, worked
