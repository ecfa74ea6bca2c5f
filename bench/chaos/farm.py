"""A throw-away farm for one chaos run: manifest, database or vhost, workers, counting.

`ChaosFarm(backend, workdir)` writes `workdir/conf/farm.yaml` for one backend (sqlite: a file
in workdir; postgresql: a fresh database `chaos_<random>`, dropped by close(); mariadb: a
unique table prefix, its tables dropped by close(); rabbitmq: a fresh vhost, deleted by close(),
with a SQLite store), copies chaosjobs.py beside conf/ and lists it in `imports:`.
Server URLs come from FARM_TEST_PG / FARM_TEST_MYSQL / FARM_TEST_AMQP, as in the tests.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote, urlsplit, urlunsplit

from .ledger import Ledger

PG_URL = os.environ.get("FARM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MY_URL = os.environ.get("FARM_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
AMQP_URL = os.environ.get("FARM_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")
BACKENDS = ("sqlite", "postgresql", "mariadb", "rabbitmq")


@dataclass(frozen=True)
class Size:
    """How big a run is: `jobs` dispatched, `workers` at once, `events` (kills, signals, cuts)."""

    jobs: int = 500
    workers: int = 3
    events: int = 40
    short: bool = False


FULL = Size()
SHORT = Size(jobs=120, workers=2, events=8, short=True)
JOB = "chaosjobs:Chaos"


class ChaosFarm:
    """One backend's farm in `workdir`; every worker it starts is killed by close()."""

    def __init__(self, backend: str, workdir: str | os.PathLike[str], retry_after: float = 2,
                 extra: str = "") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
        self.backend, self.workdir = backend, Path(workdir).absolute()
        self.retry_after = retry_after
        self.suffix = uuid.uuid4().hex[:10]
        self.ledger = Ledger(self.workdir / "ledger.txt")
        self.logs = self.workdir / "logs"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: dict[int, Path] = {}
        self.dispatched: list[str] = []
        self._cleanup: list[Any] = []
        (self.workdir / "conf").mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        shutil.copy(Path(__file__).with_name("chaosjobs.py"), self.workdir / "chaosjobs.py")
        self.manifest = self.workdir / "conf" / "farm.yaml"
        try:
            self.manifest.write_text("imports: [chaosjobs]\ndefault: main\nconnections:\n"
                                     + textwrap.indent(self._connection(), "  ") + self._pipeline() + extra)
            if str(self.workdir) not in sys.path:
                sys.path.insert(0, str(self.workdir))
            import farm

            farm.configure(self.manifest)
        except BaseException:
            self.close()                # a database or vhost made before the failure goes too
            raise

    # -- setup -------------------------------------------------------------------------
    def _connection(self) -> str:
        if self.backend == "sqlite":
            return self._database(f"sqlite:///{self.workdir}/farm.db")
        if self.backend == "postgresql":
            return self._database(self._new_pg_database())
        if self.backend == "mariadb":
            self._cleanup.append(self._drop_mysql_tables)
            return self._database(MY_URL)
        return textwrap.dedent(f"""\
            main:
              driver: amqp
              url: {self._new_vhost()}
              retry_after: {self.retry_after}
              store: store
            store:
              driver: database
              url: sqlite:///{self.workdir}/store.db
              table: c{self.suffix}
              failed_table: c{self.suffix}_failed
            """)

    def _database(self, url: str) -> str:
        return textwrap.dedent(f"""\
            main:
              driver: database
              url: {url}
              table: c{self.suffix}
              failed_table: c{self.suffix}_failed
              retry_after: {self.retry_after}
            """)

    def _pipeline(self) -> str:
        return textwrap.dedent("""\
            pipelines:
              chaos:
                connection: main
                queues: [default]
                numprocs: 2
                sleep: 0.2
            """)

    def _new_pg_database(self) -> str:
        import psycopg
        from sqlalchemy.engine import make_url

        base = make_url(PG_URL)
        name = f"chaos_{self.suffix}"
        admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

        def drop() -> None:
            with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        self._cleanup.append(drop)
        return base.set(database=name).render_as_string(hide_password=False)

    def _drop_mysql_tables(self) -> None:
        import pymysql
        from sqlalchemy.engine import make_url

        u = make_url(MY_URL)
        conn = pymysql.connect(host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
                               password=u.password or "", database=u.database, connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() "
                            "AND table_name LIKE %s", (f"c{self.suffix}%",))
                for (name,) in cur.fetchall():
                    cur.execute(f"DROP TABLE IF EXISTS `{name}`")
        finally:
            conn.close()

    def _new_vhost(self) -> str:
        import pika

        vhost = f"chaos_{self.suffix}"
        user = pika.URLParameters(AMQP_URL).credentials.username
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True, timeout=60)
        self._cleanup.append(lambda: subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost],
                                                    capture_output=True, timeout=60))
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"],
                       check=True, capture_output=True, timeout=60)
        parts = urlsplit(AMQP_URL)
        return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))

    # -- processes ---------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment of farmctl and workers: this farm's manifest."""
        env = dict(os.environ)
        env["FARM_CONFIG"] = str(self.manifest)
        env.pop("PYTHONPATH", None)
        return env

    def farmctl(self, *args: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `farmctl ARGS` on this farm (never raises on a non-zero exit)."""
        return subprocess.run([sys.executable, "-m", "farm", *args], cwd=self.workdir, env=self.env(),
                              capture_output=True, text=True, timeout=timeout, input=input)

    def worker(self, *args: str) -> subprocess.Popen[bytes]:
        """Start `farmctl work ARGS` (stderr to logs/worker-N.log, so no pipe can fill and stall it)."""
        n = len(self.procs)
        with open(self.logs / f"worker-{n:03d}.log", "wb") as err:
            p = subprocess.Popen([sys.executable, "-m", "farm", "work", "--sleep", "0.1", *args],
                                 cwd=self.workdir, env=self.env(), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=err)
        self.procs.append(p)
        self._logs[p.pid] = self.logs / f"worker-{n:03d}.log"
        return p

    def log_of(self, p: subprocess.Popen[bytes]) -> Path | None:
        """The log file of a worker this farm started."""
        return self._logs.get(p.pid)

    def live(self) -> list[subprocess.Popen[bytes]]:
        """The workers still running."""
        return [p for p in self.procs if p.poll() is None]

    # -- jobs --------------------------------------------------------------------------
    def job(self, **job_args: Any) -> Any:
        """A chaos job writing to this farm's ledger (kind, seconds, mb: see chaosjobs.Chaos;
        tries, timeout, backoff: set on the instance, which beats the class)."""
        import chaosjobs

        options = {k: job_args.pop(k) for k in ("tries", "timeout", "backoff") if k in job_args}
        job = chaosjobs.Chaos(str(self.ledger.path), **job_args)
        for key, value in options.items():
            setattr(job, key, value)
        return job

    def dispatch(self, n: int, chunk: int = 50, **options: Any) -> list[str]:
        """Dispatch `n` chaos jobs in-process (`farm.dispatch_many`, `chunk` per call); returns
        their ids, which are also kept in `self.dispatched`. `options`: job args (kind, seconds,
        mb, tries, timeout) and dispatch options (queue, delay)."""
        import farm

        dispatch_opts = {k: options.pop(k) for k in ("queue", "delay") if k in options}
        ids: list[str] = []
        for start in range(0, n, chunk):
            jobs = [self.job(**options) for _ in range(min(chunk, n - start))]
            got = farm.dispatch_many(jobs, **dispatch_opts)
            ids.extend(i for i in got if i)
            self.dispatched.extend(i for i in got if i)
        return ids

    def failed_ids(self, ids: Sequence[str] | None = None) -> set[str]:
        """Ids in the failed table (of `ids` when given)."""
        from farm import app

        return {f.id for f in app.store("main").failed(ids=list(ids) if ids is not None else None)}

    def pending(self) -> int:
        """Jobs ready, delayed or reserved by the driver's count (amqp: unacked unknown, 0)."""
        from farm import app

        return sum((c.get("ready") or 0) + (c.get("delayed") or 0) + (c.get("reserved") or 0)
                   for c in app.queue("main").counts().values())

    def wait_drained(self, timeout: float, ids: Sequence[str] | None = None) -> bool:
        """True once every id (default: all dispatched) has ended in the ledger or is failed,
        and the queue holds nothing; False at `timeout`."""
        want = set(self.dispatched if ids is None else ids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            open_ids = want - self.ledger.ended()
            if open_ids:
                open_ids -= self.failed_ids(sorted(open_ids))
            if not open_ids and self.pending() == 0:
                return True
            time.sleep(0.2)
        return False

    def stop_workers(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Signal every live worker and wait; KILL what is left at `timeout`."""
        for p in self.live():
            p.send_signal(sig)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)

    def close(self) -> None:
        """Kill the workers, close connections, drop the database/tables/vhost."""
        for p in self.live():
            p.kill()
            p.wait(10)
        from farm import app

        app._close_all()
        for fn in reversed(self._cleanup):
            try:
                fn()
            except Exception as e:        # cleanup is best effort: the run's figures stand
                print(f"chaos: cleanup of {self.backend} failed: {type(e).__name__}: {e}", file=sys.stderr)
