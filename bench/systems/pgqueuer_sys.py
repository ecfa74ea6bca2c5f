"""PgQueuer 1.6 on PostgreSQL: `pgq run pgqueuer_app:main` processes, `SyncQueries.enqueue`.

Everything lives in the `farm_bench_peers` database under a per-run PGQUEUER_PREFIX, installed
with `pgq install` and removed with `pgq uninstall` in close().
"""
from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Sequence

from pgqueuer.adapters.persistence import qb
from pgqueuer.db import SyncPsycopgDriver
from pgqueuer.queries import SyncQueries

import harness
import pg_peers

PGQ = str(Path(sys.executable).parent / "pgq")


class Pgqueuer:
    name = "pgqueuer"
    how = ("pgq run pgqueuer_app:main, one process per worker, defaults otherwise "
           "(batch size 10, no concurrency limit, asyncpg driver, LISTEN/NOTIFY)")

    def __init__(self, backend: str, tmp: Path, out: Path) -> None:
        if backend != "postgresql":
            raise ValueError(f"pgqueuer runs on postgresql only, not {backend}")
        self.backend = backend
        self.dsn = pg_peers.ensure_database()
        self.prefix = "b" + uuid.uuid4().hex[:8] + "_"          # this run's tables and channel
        self.env = harness.worker_env(out, BENCH_PG_DSN=self.dsn, PGQUEUER_PREFIX=self.prefix)
        self._pgq("install")                                      # idempotent, see _pgq
        self.settings = qb.DBSettings(prefix=self.prefix)
        self.conn = pg_peers.connect()                            # autocommit, as the driver requires
        self.queries = SyncQueries(SyncPsycopgDriver(self.conn),
                                   qbq=qb.QueryQueueBuilder(self.settings))

    def _pgq(self, command: str) -> None:
        r = subprocess.run([PGQ, "--pg-dsn", self.dsn, command], env=self.env,
                           capture_output=True, text=True)
        if r.returncode and "already installed" not in r.stderr:
            raise RuntimeError(f"pgq {command} failed: {r.stderr.strip()}")

    def reset(self) -> None:
        s = self.settings
        self.conn.execute(f"TRUNCATE {s.queue_table}, {s.queue_table_log}, {s.statistics_table}")

    def worker_commands(self, workers: int) -> list[list[str]]:
        return [[PGQ, "run", "pgqueuer_app:main"] for _ in range(workers)]

    def dispatch(self, kind: str, n: int) -> None:
        self.queries.enqueue(kind, str(n).encode())

    def dispatch_many(self, kind: str, ns: Sequence[int]) -> None:
        # The documented bulk form: lists of entrypoints, payloads and priorities, one INSERT.
        ns = list(ns)
        self.queries.enqueue([kind] * len(ns), [str(n).encode() for n in ns], [0] * len(ns))

    def close(self) -> None:
        self.conn.close()
        self._pgq("uninstall")


def make(backend: str, tmp: Path, out: Path) -> Pgqueuer:
    return Pgqueuer(backend, tmp, out)
