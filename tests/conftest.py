"""Fixtures: real servers (a missing one fails under CI=true), manifests, worker processes."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = ROOT / "tests" / "support"
sys.path.insert(0, str(SUPPORT))

PG_URL = os.environ.get("FARM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MY_URL = os.environ.get("FARM_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
AMQP_URL = os.environ.get("FARM_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDIS_URL = os.environ.get("FARM_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"


def need_server(what: str, check: Callable[[], Any]) -> None:
    """Skip (locally) or fail (CI=true) when a server the test needs is not there."""
    try:
        check()
    except Exception as e:
        msg = f"{what} is not reachable: {type(e).__name__}: {e}"
        if IN_CI:
            pytest.fail(msg + " (CI=true: a missing server fails the run)")
        pytest.skip(msg)


def _url(url: str) -> Any:
    from sqlalchemy.engine import make_url

    return make_url(url)


def pg_conninfo() -> str:
    """FARM_TEST_PG as a libpq URI, for psycopg.connect() and `psql`."""
    return _url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)


def mysql_params() -> dict[str, Any]:
    """FARM_TEST_MYSQL as pymysql.connect() keyword arguments."""
    u = _url(MY_URL)
    params = {"host": u.host or "127.0.0.1", "port": u.port or 3306, "user": u.username or "root",
              "password": u.password or "", "database": u.database}
    return {k: v for k, v in params.items() if v is not None}


def mysql_cli() -> list[str]:
    """The `mysql` client's arguments for FARM_TEST_MYSQL (the database last)."""
    p = mysql_params()
    return (["mysql", "-h", str(p["host"]), "-P", str(p["port"]), "-u", p["user"]]
            + ([f"-p{p['password']}"] if p["password"] else []) + [p.get("database", "test")])


def require(ok: bool, why: str) -> None:
    """A condition a test needs (root, a system Python): skipped locally, a failure under CI=true."""
    if not ok:
        if IN_CI:
            pytest.fail(why + " (CI=true: this test must run)")
        pytest.skip(why)


def need_tool(name: str) -> str:
    """A program a test runs (systemd-analyze, flock): skipped locally, a failure under CI=true
    (scripts/test installs them)."""
    import shutil

    found = shutil.which(name)
    if found is None:
        msg = f"{name} is not installed"
        if IN_CI:
            pytest.fail(msg + " (CI=true: scripts/test installs it)")
        pytest.skip(msg)
    return found


def _check_pg() -> None:
    import psycopg

    psycopg.connect(pg_conninfo(), connect_timeout=3).close()


def _check_mysql() -> None:
    import pymysql

    pymysql.connect(connect_timeout=3, **mysql_params()).close()


def _check_amqp() -> None:
    import pika

    pika.BlockingConnection(pika.URLParameters(AMQP_URL + "?connection_attempts=1&socket_timeout=3")).close()


def _check_redis() -> None:
    from farm.drivers.redis import connect

    connect(REDIS_URL).ping()       # redis://, rediss://, unix:// or redis+sentinel://


DB_BACKENDS = ["sqlite", "postgresql", "mysql"]
BACKENDS = DB_BACKENDS + ["amqp", "redis"]
LEASE_BACKENDS = DB_BACKENDS + ["redis"]    # a reservation not renewed lapses after retry_after
VHOSTS: list[str] = []


def _check_vhosts() -> None:
    """Vhosts are made with `rabbitmqctl`, which talks to the broker on this host only.

    A vhost per test keeps tests (and other people's runs on the same broker) from taking each
    other's messages, since every test uses plain queue names such as `default`. AMQP itself
    cannot create a vhost and this broker has no management (HTTP) API, so a FARM_TEST_AMQP on
    another host is refused here (skipped locally, a failure under CI=true) rather than run in a
    shared vhost.
    """
    import ipaddress
    import socket

    import pika

    host = pika.URLParameters(AMQP_URL).host
    if not ipaddress.ip_address(socket.getaddrinfo(host, None)[0][4][0]).is_loopback:
        raise RuntimeError(f"FARM_TEST_AMQP names {host}: vhosts for the tests are made with the local "
                           "rabbitmqctl, so the broker must run on this host")
    if shutil.which("rabbitmqctl") is None:
        raise RuntimeError("rabbitmqctl is not on PATH (it makes a vhost per test)")


_UNUSED_VHOSTS: list[str] = []     # made ahead, never handed out yet
_DONE_VHOSTS: list[str] = []       # their tests are over: deleted together when the session ends


def new_vhost() -> str:
    """A RabbitMQ vhost of the test's own, so its queues start empty (deleted after the session).

    Every `rabbitmqctl` starts an Erlang VM (about half a second of CPU), so vhosts are made
    32 at a time with one `import_definitions` (0.9 s for 32, 0.7 s for 8: the suite's ~90
    amqp farms take three calls, not twelve); none is ever handed out twice.
    """
    need_server("RabbitMQ vhosts", _check_vhosts)
    if not _UNUSED_VHOSTS:
        import json
        import tempfile

        names = ["farm_" + uuid.uuid4().hex[:10] for _ in range(32)]
        perms = [{"user": pika_user(), "vhost": n, "configure": ".*", "write": ".*", "read": ".*"} for n in names]
        with tempfile.NamedTemporaryFile("w", suffix=".json") as defs:
            json.dump({"vhosts": [{"name": n} for n in names], "permissions": perms}, defs)
            defs.flush()
            os.chmod(defs.name, 0o644)
            subprocess.run(["rabbitmqctl", "-q", "import_definitions", defs.name], check=True,
                           capture_output=True, timeout=60)
        _UNUSED_VHOSTS.extend(names)
    name = _UNUSED_VHOSTS.pop()
    VHOSTS.append(name)
    return name


def pika_user() -> str:
    import pika

    return pika.URLParameters(AMQP_URL).credentials.username


REDIS_PREFIXES: list[str] = []


def drop_redis_keys() -> None:
    """Delete the keys of the tests' redis prefixes (each test has its own)."""
    if not REDIS_PREFIXES:
        return
    import redis

    from farm.drivers.redis import connect

    client = connect(REDIS_URL)
    try:
        while REDIS_PREFIXES:
            keys = list(client.scan_iter(match=REDIS_PREFIXES.pop() + ":*", count=1000))
            if keys:
                client.delete(*keys)
    except (redis.ConnectionError, redis.TimeoutError):
        REDIS_PREFIXES.clear()      # a server of the test's own, stopped already
    finally:
        client.close()


def drop_vhosts() -> None:
    """The test's vhosts are done with: deleted when the session ends (pytest_sessionfinish)."""
    _DONE_VHOSTS.extend(VHOSTS)
    VHOSTS.clear()


_STOPPING: list[tuple[Any, Path]] = []     # a supervisord told to shut down, and its directory


def remove_once_gone(proc: Any, path: Path) -> None:
    """Remove `path` once `proc` (a psutil.Process: a supervisord told to shut down) has exited,
    at the session's end: supervisord takes 2-4 s to wind down (its loop ticks once a second),
    which then overlaps the next tests instead of adding to them."""
    _STOPPING.append((proc, path))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Wait for the supervisords told to shut down and remove their directories; delete the
    session's vhosts with one `rabbitmqctl eval` (each `delete_vhost` would start an Erlang VM
    of its own), one by one if that fails."""
    import psutil

    while _STOPPING:
        proc, path = _STOPPING.pop()
        if proc is not None:
            try:
                proc.wait(60)
            except psutil.TimeoutExpired:
                proc.kill()
            except psutil.Error:
                pass
        shutil.rmtree(path, ignore_errors=True)
    names = _DONE_VHOSTS + VHOSTS + _UNUSED_VHOSTS
    if not names:
        return
    listed = ", ".join(f'<<"{n}">>' for n in names)
    cp = subprocess.run(["rabbitmqctl", "-q", "eval", f'[rabbit_vhost:delete(V, <<"farm-tests">>) || V <- [{listed}]].'],
                        capture_output=True, text=True, timeout=300)
    if cp.returncode != 0 or "error" in cp.stdout:
        for name in names:
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, timeout=60)
    _DONE_VHOSTS.clear()
    VHOSTS.clear()
    _UNUSED_VHOSTS.clear()


def amqp_url(vhost: str) -> str:
    """FARM_TEST_AMQP with its vhost replaced by `vhost`."""
    parts = urlsplit(AMQP_URL)
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


def connection_yaml(backend: str, tmp: Path, name: str, retry_after: float = 90, heartbeat: int | None = None) -> str:
    """The `connections:` entry for a backend, with tables (or a vhost) unique to this test.

    `retry_after` applies to every driver: on amqp it is not a redelivery timer but still sets
    how often the worker's heart runs and when `status` calls a silent worker lost.
    `heartbeat` is the broker heartbeat, so only amqp takes it.
    """
    if heartbeat is not None and backend != "amqp":
        raise ValueError(f"heartbeat= is an amqp setting; the {backend} backend has none")
    suffix = uuid.uuid4().hex[:8]
    if backend == "sync":
        return f"{name}: {{driver: sync}}\n"
    if backend == "sqlite":
        url = f"sqlite:///{tmp}/farm.db"
    elif backend == "postgresql":
        need_server("PostgreSQL", _check_pg)
        url = PG_URL
    elif backend == "mysql":
        need_server("MariaDB", _check_mysql)
        url = MY_URL
    elif backend == "amqp":
        need_server("RabbitMQ", _check_amqp)
        return textwrap.dedent(f"""\
          {name}:
            driver: amqp
            url: {amqp_url(new_vhost())}
            heartbeat: {60 if heartbeat is None else heartbeat}
            retry_after: {retry_after}
            store: store
          store:
            driver: database
            url: sqlite:///{tmp}/store.db
            table: t{suffix}
            failed_table: f{suffix}
        """)
    elif backend == "redis":
        need_server("Redis", _check_redis)
        REDIS_PREFIXES.append(f"t{suffix}")
        return textwrap.dedent(f"""\
          {name}:
            driver: redis
            url: {REDIS_URL}
            prefix: t{suffix}
            retry_after: {retry_after}
        """)
    else:
        raise ValueError(backend)
    return textwrap.dedent(f"""\
      {name}:
        driver: database
        url: {url}
        table: t{suffix}
        failed_table: f{suffix}
        retry_after: {retry_after}
    """)



def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05,
               explain: Callable[[], str] = lambda: "") -> Any:
    """The predicate's first true value within `timeout` seconds; else an AssertionError naming
    `what`, with `explain()` (logs) after it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    extra = explain()
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"\n{extra}" if extra else ""))

class Farm:
    """A manifest in a temp dir and helpers to dispatch, run workers and read results."""

    def __init__(self, tmp: Path, backend: str, retry_after: float = 90, extra: str = "",
                 heartbeat: int | None = None) -> None:
        self.tmp = tmp
        self.backend = backend
        self.out = tmp / "out.txt"
        (tmp / "conf").mkdir(exist_ok=True)
        conn = connection_yaml(backend, tmp, "main", retry_after=retry_after, heartbeat=heartbeat)
        self.manifest = tmp / "conf" / "farm.yaml"
        self.manifest.write_text(
            "imports: [testjobs]\ndefault: main\nconnections:\n" + textwrap.indent(conn, "  ")
            + extra)
        self.procs: list[subprocess.Popen[str]] = []
        import farm

        self.app = farm.configure(self.manifest)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(SUPPORT), str(ROOT)])
        env["FARM_CONFIG"] = str(self.manifest)
        return env

    def farmctl(self, *args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
        cp = subprocess.run([sys.executable, "-m", "farm", *args], cwd=self.tmp, env=self.env(),
                            capture_output=True, text=True, timeout=timeout)
        if check and cp.returncode != 0:
            raise AssertionError(f"farmctl {' '.join(args)} -> {cp.returncode}\n{cp.stdout}\n{cp.stderr}")
        return cp

    def worker(self, *args: str) -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, "-m", "farm", "work", *args], cwd=self.tmp, env=self.env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def lines(self, path: Path | None = None) -> list[str]:
        path = path or self.out
        return path.read_text().splitlines() if path.exists() else []

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
        return wait_until(predicate, timeout, what, every=0.02)

    def queue(self) -> Any:
        from farm import app

        return app.queue("main")

    def store(self) -> Any:
        from farm import app

        return app.store("main")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(10)
            for stream in (p.stdout, p.stderr):
                if stream:
                    stream.close()
        from farm import app

        app._close_all()
        drop_vhosts()
        drop_redis_keys()


@pytest.fixture
def make_farm(tmp_path: Path) -> Iterator[Callable[..., Farm]]:
    made: list[Farm] = []

    def make(backend: str = "sqlite", **kw: Any) -> Farm:
        f = Farm(tmp_path, backend, **kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()
