"""The PostgreSQL database the PostgreSQL-backed peers share: `farm_bench_peers`, never `test`.

PgQueuer and Procrastinate create tables under fixed names; keeping them in a database of their
own means they never meet the project's test tables. Each run still namespaces its objects
(a PgQueuer prefix, a Procrastinate schema) and drops them in close().
"""
from __future__ import annotations

import os

import psycopg

DATABASE = "farm_bench_peers"
SERVER = os.environ.get("FARM_BENCH_PEERS_PG", "postgresql://postgres@127.0.0.1:5432")
DSN = f"{SERVER}/{DATABASE}"


def ensure_database() -> str:
    """Create `farm_bench_peers` if missing (connecting to `test` to do so); return its DSN."""
    with psycopg.connect(f"{SERVER}/test", autocommit=True) as c:
        if c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
            try:
                c.execute(f'CREATE DATABASE "{DATABASE}"')
            except psycopg.errors.DuplicateDatabase:      # another run created it meanwhile
                pass
    return DSN


def connect() -> psycopg.Connection:
    return psycopg.connect(DSN, autocommit=True)
