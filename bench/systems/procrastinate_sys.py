"""Procrastinate 3.10 on PostgreSQL: `procrastinate worker` processes, `Task.defer` / `batch_defer`.

Its tables have fixed names, so each run puts them in a PostgreSQL schema of its own inside the
`farm_bench_peers` database (the DSN sets search_path); close() drops that schema.
"""
from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

import harness
import pg_peers

HERE = Path(__file__).resolve().parent          # bench/systems
PROCRASTINATE = str(Path(sys.executable).parent / "procrastinate")
APP = "--app=procrastinate_app.app"


class Procrastinate:
    name = "procrastinate"
    how = ("procrastinate --app=procrastinate_app.app worker --queues Q, one process per worker, "
           "defaults otherwise (concurrency 1, LISTEN/NOTIFY + 5 s polling, jobs kept)")

    def __init__(self, backend: str, tmp: Path, out: Path) -> None:
        if backend != "postgresql":
            raise ValueError(f"procrastinate runs on postgresql only, not {backend}")
        self.backend = backend
        base = pg_peers.ensure_database()
        self.schema = "b" + uuid.uuid4().hex[:8]
        self.queue = "q" + uuid.uuid4().hex[:8]
        with pg_peers.connect() as c:
            c.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
        dsn = f"{base}?options={quote(f'-c search_path={self.schema}')}"
        self.env = harness.worker_env(out, BENCH_PG_DSN=dsn, BENCH_QUEUE=self.queue)
        import procrastinate_app

        self.app = procrastinate_app.app
        self.tasks = {"tick": procrastinate_app.tick, "stamp": procrastinate_app.stamp}
        self.app.open()                                  # sync: a SyncPsycopgConnector's pool
        self.conn = pg_peers.connect()
        self.conn.execute(f"SET search_path = {self.schema}")
        if self.conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0] is None:
            subprocess.run([PROCRASTINATE, APP, "schema", "--apply"], env=self.env, check=True,
                           capture_output=True, cwd=HERE)

    def reset(self) -> None:
        self.conn.execute("TRUNCATE procrastinate_jobs, procrastinate_events, "
                          "procrastinate_periodic_defers, procrastinate_workers")

    def worker_commands(self, workers: int) -> list[list[str]]:
        return [[PROCRASTINATE, APP, "worker", "--queues", self.queue] for _ in range(workers)]

    def dispatch(self, kind: str, n: int) -> None:
        self.tasks[kind].defer(n=n)

    def dispatch_many(self, kind: str, ns: Sequence[int]) -> None:
        # Task.batch_defer: one INSERT for the whole list (procrastinate_defer_jobs_v1).
        self.tasks[kind].batch_defer(*({"n": n} for n in ns))

    def close(self) -> None:
        self.app.close()
        self.conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        self.conn.close()


def make(backend: str, tmp: Path, out: Path) -> Procrastinate:
    return Procrastinate(backend, tmp, out)
