"""Fixtures: real servers (a missing one fails under CI=true), manifests, worker processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = ROOT / "tests" / "support"
sys.path.insert(0, str(SUPPORT))

PG_URL = os.environ.get("FARM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MY_URL = os.environ.get("FARM_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
AMQP_URL = os.environ.get("FARM_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")
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


def _check_pg() -> None:
    import psycopg

    psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", connect_timeout=3).close()


def _check_mysql() -> None:
    import pymysql

    pymysql.connect(host="127.0.0.1", port=3306, user="root", database="test", connect_timeout=3).close()


def _check_amqp() -> None:
    import pika

    pika.BlockingConnection(pika.URLParameters(AMQP_URL + "?connection_attempts=1&socket_timeout=3")).close()


DB_BACKENDS = ["sqlite", "postgresql", "mysql"]
BACKENDS = DB_BACKENDS + ["amqp"]
VHOSTS: list[str] = []


def new_vhost() -> str:
    """A RabbitMQ vhost of the test's own, so its queues start empty (deleted after the test)."""
    name = "farm_" + uuid.uuid4().hex[:10]
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, capture_output=True, timeout=60)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True, timeout=60)
    VHOSTS.append(name)
    return name


def drop_vhosts() -> None:
    while VHOSTS:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", VHOSTS.pop()], capture_output=True, timeout=60)


def connection_yaml(backend: str, tmp: Path, name: str) -> str:
    """The `connections:` entry for a backend, with tables unique to this test."""
    suffix = uuid.uuid4().hex[:8]
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
        vhost = new_vhost()
        return textwrap.dedent(f"""\
          {name}:
            driver: amqp
            url: {AMQP_URL.rsplit("/", 1)[0]}/{vhost}
            heartbeat: {{heartbeat}}
            store: store
          store:
            driver: database
            url: sqlite:///{tmp}/store.db
            table: t{suffix}
            failed_table: f{suffix}
        """)
    else:
        raise ValueError(backend)
    return textwrap.dedent(f"""\
      {name}:
        driver: database
        url: {url}
        table: t{suffix}
        failed_table: f{suffix}
        retry_after: {{retry_after}}
    """)


class Farm:
    """A manifest in a temp dir and helpers to dispatch, run workers and read results."""

    def __init__(self, tmp: Path, backend: str, retry_after: float = 90, extra: str = "",
                 heartbeat: int = 60) -> None:
        self.tmp = tmp
        self.backend = backend
        self.out = tmp / "out.txt"
        (tmp / "conf").mkdir(exist_ok=True)
        conn = connection_yaml(backend, tmp, "main").replace("{retry_after}", str(retry_after)).replace(
            "{heartbeat}", str(heartbeat))
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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

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
