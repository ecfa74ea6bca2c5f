"""Network and deploy faults: deploys under supervisord, connections cut, backends
terminated, the broker stopped, and a producer dispatching through it all.

Every scenario is `(farm: ChaosFarm, size: Size) -> Result`. A producer thread in this process
dispatches one job per `farm.dispatch` call and counts the calls that raised; the id each of
those would have had is recorded too (`new_id` is watched while it runs), so the table can say
how many raised although their job was stored and ran. Workers are `farmctl work` processes
kept at their number (`Keeper`), or supervisord's (deploy_cycles).
"""
from __future__ import annotations

import importlib
import random
import subprocess
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit

import yaml

from .farm import AMQP_URL, MY_URL, PG_URL, ChaosFarm, Size
from .proxy import Proxy
from .report import Result
from .scenarios_process import Keeper
from .supervised import Supervised

DRAIN_TIMEOUT = 120.0
JOB_SECONDS = (0.0, 0.005, 0.02, 0.05)          # short jobs: many acks per cut
DEPLOY_JOB_SECONDS = (0.01, 0.05, 0.2, 0.5)     # longer: deploys land inside jobs
SERVER_URL = {"postgresql": PG_URL, "mariadb": MY_URL, "rabbitmq": AMQP_URL}
PUBLISH = b"\x00\x3c\x00\x28"       # AMQP method frame Basic.Publish (class 60, method 40)
# the requests whose reply producer_through_cuts loses: a dispatch's write. psycopg prepares a
# statement run 5 times on a connection; then only its name (_pg3_N) goes on the wire
REQUEST = {"postgresql": (b"INSERT", b"_pg3_"), "mariadb": (b"INSERT",), "rabbitmq": (PUBLISH,)}


class Producer(threading.Thread):
    """Dispatches jobs one `farm.dispatch` each, `pause` apart, until `n` calls were made or
    `stop` is set. Returned ids go to farm.dispatched; a call that raises is counted and the id
    it had made is kept in `raised_ids` (it may have been stored all the same). With `watch`
    (a proxy only this producer uses), the ids of the calls during which that proxy swallowed a
    reply are kept in `unknown_ids`: dispatches whose write's outcome the driver could not see."""

    def __init__(self, farm: ChaosFarm, n: int | None, pause: float, seconds: tuple[float, ...] = JOB_SECONDS,
                 stop: threading.Event | None = None, watch: Proxy | None = None) -> None:
        super().__init__(daemon=True)
        self.farm, self.n, self.pause, self.seconds = farm, n, pause, seconds
        self.stop = stop or threading.Event()
        self.watch = watch
        self.raised_ids: list[str] = []
        self.unknown_ids: list[str] = []
        self.errors: dict[str, int] = {}
        self.calls = 0

    def run(self) -> None:
        import farm as farm_api

        module = importlib.import_module("farm.dispatch")
        made: list[str] = []
        original = module.new_id

        def watched() -> str:
            made.append(original())
            return made[-1]

        module.new_id = watched
        rng = random.Random()
        try:
            while not self.stop.is_set() and (self.n is None or self.calls < self.n):
                made.clear()
                self.calls += 1
                lost_before = self.watch.stats.replies_lost if self.watch else 0
                try:
                    job_id = farm_api.dispatch(self.farm.job(seconds=rng.choice(self.seconds)))
                    if job_id:
                        self.farm.dispatched.append(job_id)
                except Exception as e:          # counted, and the producer goes on as an app would
                    self.raised_ids.extend(made[:1])
                    key = type(e).__name__
                    self.errors[key] = self.errors.get(key, 0) + 1
                if self.watch and self.watch.stats.replies_lost != lost_before:
                    self.unknown_ids.extend(made[:1])
                time.sleep(self.pause * rng.uniform(0.5, 1.5))
        finally:
            module.new_id = original

    def note(self) -> str:
        """'N raised (K ran)', the part of a row's note about this producer."""
        if not self.raised_ids and not self.errors:
            return "0 dispatch raised"
        ended = self.farm.ledger.ended()
        ran = sum(1 for i in self.raised_ids if i in ended)
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items()))
        return f"{sum(self.errors.values())} dispatch raised ({kinds}), {ran} of them ran"

    def unknown_twice(self) -> int:
        """How many of the dispatches whose reply was lost ran twice (a retried write that
        stored the job a second time)."""
        ends: dict[str, int] = {}
        for e in self.farm.ledger.events():
            if e.kind == "E":
                ends[e.job_id] = ends.get(e.job_id, 0) + 1
        return sum(1 for i in set(self.unknown_ids) if ends.get(i, 0) >= 2)


class Every(threading.Thread):
    """Calls `action()` every `seconds` (jittered) until stopped; counts the calls and errors."""

    def __init__(self, seconds: float, action: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.seconds, self.action = seconds, action
        self.stop = threading.Event()
        self.count = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.wait(self.seconds * random.uniform(0.7, 1.3)):
            try:
                self.action()
                self.count += 1
            except Exception as e:
                self.failures.append(f"{type(e).__name__}: {e}")

    def end(self) -> None:
        self.stop.set()
        self.join(60)


def through_proxy(farm: ChaosFarm, name: str = "farm.yaml", configure: bool = True) -> Proxy:
    """A proxy in front of the farm's server, and conf/`name` pointing the main connection at it
    (conf/farm.yaml: the workers'; `configure`: this process uses it too)."""
    import farm as farm_api

    url = SERVER_URL[farm.backend]
    parts = urlsplit(url)
    default = {"postgresql": 5432, "mariadb": 3306, "rabbitmq": 5672}[farm.backend]
    proxy = Proxy((parts.hostname or "127.0.0.1", parts.port or default)).start()
    text = farm.manifest.read_text()
    doc = yaml.safe_load(text)
    doc["connections"]["main"]["url"] = proxy.url_for(doc["connections"]["main"]["url"])
    target = farm.manifest.with_name(name)
    target.write_text(yaml.safe_dump(doc, sort_keys=False))
    if configure:
        farm_api.configure(target)
    return proxy


def drain(farm: ChaosFarm, keeper: Keeper | None, timeout: float = DRAIN_TIMEOUT) -> bool:
    """Wait for every returned id to end; a look that fails on a cut connection is a 'not yet'."""
    def drained() -> bool:
        try:
            return farm.wait_drained(0.5)
        except Exception:
            time.sleep(0.2)
            return False
    if keeper is not None:
        return keeper.run_until(drained, timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if drained():
            return True
    return False


def verdict(farm: ChaosFarm, name: str, t0: float, drained: bool, notes: list[str], allowed: int = 0,
            strict_started: bool = False) -> Result:
    """The row: ok when drained, 0 lost and at most `allowed` completed twice (and, on a
    graceful path with `strict_started`, none started twice)."""
    t = farm.ledger.tally(farm.dispatched)
    ok = drained and t.lost == 0 and t.completed_twice <= allowed and not (strict_started and t.started_twice)
    if not drained:
        notes.insert(0, "not drained")
    if t.lost_ids:
        notes.append(f"lost e.g. {t.lost_ids[0]}")
    return Result(name, farm.backend, t.dispatched, t.completed, t.lost, t.completed_twice, t.started_twice,
                  round(time.monotonic() - t0, 1), allowed, ok, "; ".join(notes))


# -- scenarios ---------------------------------------------------------------------------------


def deploy_cycles(farm: ChaosFarm, size: Size) -> Result:
    """20 deploys (6 with --short) under a real supervisord with a steady producer, in turn:
    `farmctl render && supervisorctl update` to another numprocs, `supervisorctl restart P:*`,
    `farmctl restart --wait`. Every one is graceful: 0 lost, 0 started or completed twice."""
    t0 = time.monotonic()
    cycles = 6 if size.short else 20
    sup = Supervised(farm.manifest, farm.env())
    notes: list[str] = []
    marks: list[float] = []         # when each deploy began
    producer = Producer(farm, None, pause=0.15 if size.short else 0.08, seconds=DEPLOY_JOB_SECONDS)
    try:
        sup.start(size.workers, connection="main", timeout=20)
        producer.start()
        sizes = [size.workers, size.workers + 1]
        for i in range(cycles):
            time.sleep(random.uniform(0.3, 1.0))        # let jobs be inside workers
            marks.append(time.time())
            kind = i % 3
            if kind == 0:
                sup.update(sizes[(i // 3 + 1) % 2], connection="main", timeout=20)
            elif kind == 1:
                sup.restart_group()
            else:
                sup.farm_restart()
        producer.stop.set()
        producer.join(30)
        drained = drain(farm, None)
    finally:
        producer.stop.set()
        sup.shutdown()
    unexpected = _unexpected_exits(sup.root / "var" / "log" / "supervisord.log")
    inside = _running_at(farm, marks)
    notes.append(f"deploys: {len(marks)}, {sum(1 for n in inside if n)} of them with jobs running "
                 f"({sum(inside)} jobs); {producer.note()}")
    if unexpected:
        notes.append(f"{unexpected} unexpected worker exits")
    result = verdict(farm, "deploy_cycles", t0, drained, notes, strict_started=True)
    return result if not (unexpected or producer.errors) else _failed(result)


def connection_cuts(farm: ChaosFarm, size: Size) -> Result:
    """Every connection of the workers and the producer goes through one proxy, all cut every
    ~3 s (1.5 s with --short) for the whole run. 0 lost; on the database drivers 0 completed
    twice (a lost ack is made again on reconnect); on RabbitMQ completed twice is measured and
    allowed up to the in-flight bound (one per worker per cut)."""
    return _cuts(farm, size, "connection_cuts", lose_commits=False)


def producer_through_cuts(farm: ChaosFarm, size: Size) -> Result:
    """The producer on its own proxy, whose connections are cut and, in between, lose the reply
    to a COMMIT (RabbitMQ: to a publish) — the dispatch whose outcome is unknown; the workers
    on another proxy, cut as often. Every id dispatch returned must run; the note counts the
    dispatches that raised and those of them whose job ran anyway."""
    return _cuts(farm, size, "producer_through_cuts", lose_commits=True)


def _cuts(farm: ChaosFarm, size: Size, name: str, lose_commits: bool) -> Result:
    t0 = time.monotonic()
    producer_proxy = through_proxy(farm, "producer.yaml") if lose_commits else None   # reads farm.yaml
    workers_proxy = through_proxy(farm, configure=not lose_commits)                     # then rewrites it
    producer_proxy = producer_proxy or workers_proxy
    every = 1.5 if size.short else 3.0
    duration = 6.0 if size.short else 30.0
    keeper = Keeper(farm, size.workers)
    producer = Producer(farm, size.jobs, pause=duration / size.jobs, watch=producer_proxy if lose_commits else None)
    match = REQUEST[farm.backend]
    flip = [False]

    def fault() -> None:
        if lose_commits and not flip[0]:
            producer_proxy.lose_reply(*match)    # the next dispatch write's reply goes missing
        else:
            producer_proxy.cut_all()
            if producer_proxy is not workers_proxy:
                workers_proxy.cut_all()
        flip[0] = not flip[0]

    faults = Every(every / 2 if lose_commits else every, fault)
    try:
        drained = _under_faults(farm, keeper, producer, faults, duration)
    finally:
        for p in {workers_proxy, producer_proxy}:
            p.close()
    cuts = workers_proxy.stats.cut + (producer_proxy.stats.cut if producer_proxy is not workers_proxy else 0)
    rounds = faults.count if not lose_commits else (faults.count + 1) // 2
    notes = [f"cuts: {rounds} rounds, {cuts} connections"]
    again = producer.unknown_twice()
    if lose_commits:
        notes.append(f"{producer_proxy.stats.replies_lost} replies lost, {again} of those jobs ran twice")
    notes.append(producer.note())
    notes.append(f"worker exits {_codes(keeper.exits)}")
    # issue 17: a database driver acks again on reconnect, so a cut costs no job run twice;
    # RabbitMQ redelivers what a cut connection held: bounded by one per worker per cut
    allowed = rounds * len(keeper.workers) if farm.backend == "rabbitmq" else 0
    result = verdict(farm, name, t0, drained, notes, allowed=allowed)
    # issue 17: on a database a dispatch whose reply was lost leaves its job stored once
    return _failed(result) if again and farm.backend != "rabbitmq" else result


def _under_faults(farm: ChaosFarm, keeper: Keeper, producer: Producer, faults: Every, duration: float) -> bool:
    """The producer and the faults run until the producer is done, then the queue is drained
    (True: it was); the producer, the faults and the workers are stopped whatever happens."""
    try:
        producer.start()
        faults.start()
        keeper.run_until(lambda: not producer.is_alive(), duration * 4 + 60)
        return drain(farm, keeper)
    finally:
        producer.stop.set()
        faults.end()
        farm.stop_workers()


def pg_terminate(farm: ChaosFarm, size: Size) -> Result:
    """`pg_terminate_backend` of every backend on the farm's database (the producer's
    included) every 2 s (1 s with --short), for the whole run."""
    import psycopg
    from sqlalchemy.engine import make_url

    t0 = time.monotonic()
    db = make_url(yaml.safe_load(farm.manifest.read_text())["connections"]["main"]["url"]).database
    admin = make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    terminated = [0]

    def terminate() -> None:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = %s AND pid <> pg_backend_pid()", (db,)).fetchall()
            terminated[0] += len(rows)

    duration = 6.0 if size.short else 30.0
    keeper = Keeper(farm, size.workers)
    producer = Producer(farm, size.jobs, pause=duration / size.jobs)
    killer = Every(1.0 if size.short else 2.0, terminate)
    drained = _under_faults(farm, keeper, producer, killer, duration)
    notes = [f"terminate: {killer.count} rounds, {terminated[0]} backends", producer.note(),
             f"worker exits {_codes(keeper.exits)}"]
    notes += [f"terminate failed: {killer.failures[0]}"] if killer.failures else []
    return verdict(farm, "pg_terminate", t0, drained, notes)   # a killed ack is made again: 0 twice


def rabbit_restart(farm: ChaosFarm, size: Size) -> Result:
    """`rabbitmqctl stop_app` / `start_app` mid-run (once with --short, 3 times else), the
    broker down ~2 s each time; start_app always runs again, even on error."""
    t0 = time.monotonic()
    restarts = 1 if size.short else 3
    duration = 8.0 if size.short else 30.0
    keeper = Keeper(farm, size.workers)
    producer = Producer(farm, size.jobs, pause=duration / size.jobs)
    done = 0
    try:
        producer.start()
        for _ in range(restarts):
            keeper.run_until(lambda: False, duration / (restarts + 1))
            _bounce_rabbit()
            done += 1
        keeper.run_until(lambda: not producer.is_alive(), duration * 4 + 60)
        drained = drain(farm, keeper)
    finally:
        producer.stop.set()
        farm.stop_workers()
    notes = [f"broker restarts: {done}", producer.note(), f"worker exits {_codes(keeper.exits)}"]
    bound = done * len(keeper.workers)
    return verdict(farm, "rabbit_restart", t0, drained, notes, allowed=bound)


def _bounce_rabbit(down_for: float = 2.0) -> None:
    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)
    try:
        ctl("stop_app")
        time.sleep(down_for)
    finally:
        ctl("start_app")
        ctl("await_startup")


def _running_at(farm: ChaosFarm, moments: list[float]) -> list[int]:
    """How many jobs were inside handle() (S written, its E not yet) at each moment."""
    spans: dict[tuple[str, int], list[float]] = {}
    for e in farm.ledger.events():
        span = spans.setdefault((e.job_id, e.pid), [e.at, float("inf")])
        if e.kind == "E":
            span[1] = e.at
    return [sum(1 for start, end in spans.values() if start <= t < end) for t in moments]


def _unexpected_exits(log: Any) -> int:
    """supervisord's 'exited: ... (exit status N; not expected)' lines: a worker that crashed."""
    try:
        return sum(1 for line in log.read_text().splitlines() if "not expected" in line)
    except OSError:
        return 0


def _codes(exits: list[int]) -> str:
    if not exits:
        return "none"
    counts: dict[int, int] = {}
    for c in exits:
        counts[c] = counts.get(c, 0) + 1
    return ", ".join(f"{c} x{n}" for c, n in sorted(counts.items()))


def _failed(r: Result) -> Result:
    import dataclasses

    return dataclasses.replace(r, ok=False)


DB_AND_RABBIT = ("postgresql", "mariadb", "rabbitmq")
SCENARIOS: dict[str, tuple[Callable[[ChaosFarm, Size], Result], tuple[str, ...]]] = {
    "deploy_cycles": (deploy_cycles, ("sqlite", "postgresql", "mariadb", "rabbitmq")),
    "connection_cuts": (connection_cuts, DB_AND_RABBIT),
    "pg_terminate": (pg_terminate, ("postgresql",)),
    "rabbit_restart": (rabbit_restart, ("rabbitmq",)),
    "producer_through_cuts": (producer_through_cuts, DB_AND_RABBIT),
}
