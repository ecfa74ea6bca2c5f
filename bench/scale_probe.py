"""What idle workers cost the server (scripts/bench --scale, section idle): a counter of the
queries (or broker operations) it served, and the CPU seconds of its processes.

Each backend's counter is the narrowest the server offers without extra plugins:
- PostgreSQL: xact_commit + xact_rollback of the bench's own database (pg_stat_database, as
  each backend flushes it: within ~10 s of going idle), CPU of that database's backends;
- MariaDB: SHOW GLOBAL STATUS Questions, the whole server's (other clients count too), CPU
  of mariadbd;
- RabbitMQ: packets received from the workers' own connections (`rabbitmqctl list_connections
  peer_port recv_cnt`, matched to the workers' local ports), CPU of beam.smp;
- Redis: INFO total_commands_processed, the whole server's, CPU of redis-server;
- SQLite: no server, nothing to count.
A probe's own queries are subtracted. CPU of another user's process may be denied: None then.
"""
from __future__ import annotations

import subprocess
from typing import Any, Callable, Sequence

import psutil

SERVER_NAMES = {"mysql": ("mariadbd", "mysqld"), "amqp": ("beam.smp",), "redis": ("redis-server",)}


def cpu_seconds(pids: Sequence[int]) -> dict[int, float] | None:
    """user + system CPU seconds per pid; None when any is denied (another user's process)."""
    out: dict[int, float] = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            return None
        out[pid] = t.user + t.system
    return out


def tree_pids(procs: Sequence[Any]) -> list[int]:
    """The pids of these Popen objects and their children."""
    pids = []
    for p in procs:
        try:
            root = psutil.Process(p.pid)
            pids += [root.pid, *(c.pid for c in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            pass
    return pids


def by_name(names: Sequence[str]) -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in names]


class Probe:
    """A server's operation counter and CPU, read before and after a quiet spell."""

    note = "no server (SQLite): worker CPU only"
    unit = "-"
    own = 0                      # operations each read of `ops` adds itself

    def __init__(self, workers: Callable[[], Sequence[Any]]) -> None:
        self.workers = workers   # the running worker processes (Popen), read when asked

    def ops(self) -> int | None:
        return None

    def server_pids(self) -> list[int]:
        return []

    def close(self) -> None:
        pass


class PgProbe(Probe):
    unit = "xacts"

    def __init__(self, workers: Callable[[], Sequence[Any]], conninfo: str) -> None:
        import psycopg

        super().__init__(workers)
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.own = 1
        stmts = self.conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'")
        self.statements = bool(stmts.fetchone()[0])
        self.note = ("pg_stat_statements calls of the bench's own database" if self.statements else
                     "pg_stat_database xact_commit+xact_rollback of the bench's own database "
                     "(flushed by each backend within ~10 s of going idle); CPU of its backends")

    def ops(self) -> int | None:
        if self.statements:
            sql = ("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d "
                   "ON d.oid = s.dbid WHERE d.datname = current_database()")
        else:
            sql = ("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                   "WHERE datname = current_database()")
        return int(self.conn.execute(sql).fetchone()[0])

    def server_pids(self) -> list[int]:
        rows = self.conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND pid <> pg_backend_pid()").fetchall()
        return [r[0] for r in rows]

    def close(self) -> None:
        self.conn.close()


class MysqlProbe(Probe):
    unit = "questions"
    note = "SHOW GLOBAL STATUS Questions (the whole server: other clients count too); CPU of mariadbd"

    def __init__(self, workers: Callable[[], Sequence[Any]], params: dict[str, Any]) -> None:
        import pymysql

        super().__init__(workers)
        self.conn = pymysql.connect(autocommit=True, **params)
        self.own = 1

    def ops(self) -> int | None:
        with self.conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
            return int(cur.fetchone()[1])

    def server_pids(self) -> list[int]:
        return by_name(SERVER_NAMES["mysql"])

    def close(self) -> None:
        self.conn.close()


class RedisProbe(Probe):
    unit = "commands"
    note = "INFO total_commands_processed (the whole server: other clients count too); CPU of redis-server"

    def __init__(self, workers: Callable[[], Sequence[Any]], url: str) -> None:
        import redis

        super().__init__(workers)
        self.client = redis.Redis.from_url(url)
        self.own = 1

    def ops(self) -> int | None:
        return int(self.client.info("stats")["total_commands_processed"])

    def server_pids(self) -> list[int]:
        return by_name(SERVER_NAMES["redis"])

    def close(self) -> None:
        self.client.close()


class AmqpProbe(Probe):
    unit = "packets"
    note = ("packets RabbitMQ received on the workers' own connections (rabbitmqctl list_connections "
            "recv_cnt; no management API); CPU of beam.smp")

    def ops(self) -> int | None:
        ports = set()
        for pid in tree_pids(self.workers()):
            try:
                ports |= {c.laddr.port for c in psutil.Process(pid).net_connections("tcp")
                          if c.raddr and c.raddr.port == 5672}
            except psutil.Error:
                pass
        try:
            done = subprocess.run(["rabbitmqctl", "-q", "list_connections", "peer_port", "recv_cnt"],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode != 0:
            return None
        total = 0
        for line in done.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in ports:
                total += int(parts[1])
        return total

    def server_pids(self) -> list[int]:
        return by_name(SERVER_NAMES["amqp"])


def make(backend: str, workers: Callable[[], Sequence[Any]], url: str | None) -> Probe:
    """The probe of `backend`; `url` is the bench's database (a SQLAlchemy URL) or server."""
    if backend == "postgresql":
        from sqlalchemy.engine import make_url

        return PgProbe(workers, make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    if backend == "mysql":
        from sqlalchemy.engine import make_url

        u = make_url(url)
        params = {"host": u.host or "127.0.0.1", "port": u.port or 3306, "user": u.username or "root",
                  "password": u.password or "", "database": u.database}
        return MysqlProbe(workers, params)
    if backend == "redis":
        return RedisProbe(workers, url or "redis://127.0.0.1:6379/0")
    if backend == "amqp":
        return AmqpProbe(workers)
    return Probe(workers)
