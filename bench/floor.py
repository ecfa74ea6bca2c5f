"""The floor: what each raw broker does on this machine with no queue library on top.

Read beside jobfarm's figures (`scripts/bench --floor`): the same DBAPI drivers or pika, a
throwaway table shaped like jobfarm's jobs table (or a queue declared as jobfarm does), and
jobfarm's settings (SQLite WAL + synchronous=NORMAL, MariaDB READ COMMITTED, PostgreSQL claims
with synchronous_commit=off like jobfarm's worker connection). One JSON line per backend on
stdout; a backend that fails gets an "error" line and the exit status is 1.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

BACKENDS = ["sqlite", "postgresql", "mysql", "amqp"]
FULL = {"insert": 2000, "insert_many": 20000, "claim": 10000,
        "publish_confirmed": 2000, "publish": 20000, "consume": 10000, "latency": 200}
QUEUE = "default"
COLUMNS = "uuid, queue, payload, attempts, available_at, created_at"
# dialect -> (id column, long text, double)
TYPES = {"sqlite": ("INTEGER PRIMARY KEY", "TEXT", "FLOAT"),
         "postgresql": ("BIGSERIAL PRIMARY KEY", "TEXT", "DOUBLE PRECISION"),
         "mysql": ("BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY", "LONGTEXT", "DOUBLE")}


def body(n: int) -> str:
    """A ~300-byte job document in jobfarm's v1 wire format."""
    now = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    doc = {"v": 1, "id": str(uuid.uuid4()), "job": "bench.systems.benchjobs:Tick",
           "data": {"n": n, "note": "x" * 24}, "queue": QUEUE, "attempts": 0, "tries": 3,
           "backoff": [1, 5, 30], "timeout": 60, "max_exceptions": None, "retry_until": None,
           "dispatched_at": now}
    return json.dumps(doc, separators=(",", ":"))


def rate(n: int, fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return round(n / (time.perf_counter() - t), 1)


# -- databases ---------------------------------------------------------------------------
class Db:
    """One DBAPI connection (autocommit) and the SQL of one dialect on one throwaway table."""

    def __init__(self, dialect: str, table: str, path: str = "") -> None:
        self.dialect, self.table = dialect, table
        if dialect == "sqlite":
            import sqlite3
            self.conn = sqlite3.connect(path, timeout=60, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
        elif dialect == "postgresql":
            import psycopg
            self.conn = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test",
                                        autocommit=True, connect_timeout=10)
        else:
            import pymysql
            self.conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", database="test",
                                        autocommit=True, connect_timeout=10)
        self.cur = self.conn.cursor()
        if dialect == "mysql":
            self.run("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        self.insert = self.q(f"INSERT INTO {table} ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)")

    def q(self, sql: str) -> str:
        return sql.replace("%s", "?") if self.dialect == "sqlite" else sql

    def run(self, sql: str, args: Any = ()) -> list[Any]:
        self.cur.execute(self.q(sql), args)
        return list(self.cur.fetchall()) if self.cur.description else []

    @contextmanager
    def tx(self) -> Iterator[None]:
        if self.dialect == "postgresql":
            with self.conn.transaction():
                yield
            return
        self.run("BEGIN IMMEDIATE") if self.dialect == "sqlite" else self.conn.begin()
        try:
            yield
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.commit()

    def create(self) -> None:
        (ident, text, double), t = TYPES[self.dialect], self.table
        self.run(f"CREATE TABLE {t} (id {ident}, uuid VARCHAR(36) NOT NULL, queue VARCHAR(191) NOT NULL, "
                 f"payload {text} NOT NULL, attempts INTEGER NOT NULL, available_at {double} NOT NULL, "
                 f"reserved_by VARCHAR(64), created_at {double} NOT NULL)"
                 + (" ENGINE=InnoDB" if self.dialect == "mysql" else ""))
        last = ", id" if self.dialect == "postgresql" else ""      # as farm/drivers/sql.py claim_index
        self.run(f"CREATE INDEX {t}_queue_available ON {t} (queue, available_at{last})")

    def empty(self) -> None:
        self.run(("DELETE FROM " if self.dialect == "sqlite" else "TRUNCATE TABLE ") + self.table)

    def insert_many(self, rows: list[tuple[Any, ...]]) -> None:
        for i in range(0, len(rows), 1000):
            with self.tx():
                self.cur.executemany(self.insert, rows[i:i + 1000])

    def copy_many(self, rows: list[tuple[Any, ...]]) -> None:
        for i in range(0, len(rows), 1000):
            with self.conn.transaction(), self.cur.copy(f"COPY {self.table} ({COLUMNS}) FROM STDIN") as cp:
                for row in rows[i:i + 1000]:
                    cp.write_row(row)

    def claim(self, limit: int) -> list[str]:
        """Claim and delete up to `limit` ready rows in one transaction; their bodies."""
        t, args = self.table, (QUEUE, time.time(), limit)
        pick = f"FROM {t} WHERE queue = %s AND available_at <= %s ORDER BY available_at, id LIMIT %s"
        if self.dialect == "postgresql":               # one statement: autocommit is its transaction
            return [r[0] for r in self.run(f"DELETE FROM {t} WHERE id IN (SELECT id {pick} "
                                           "FOR UPDATE SKIP LOCKED) RETURNING payload", args)]
        with self.tx():
            if self.dialect == "sqlite":
                return [r[0] for r in self.run(f"DELETE FROM {t} WHERE id IN (SELECT id {pick}) "
                                               "RETURNING payload", args)]
            rows = self.run(f"SELECT id, payload {pick} FOR UPDATE SKIP LOCKED", args)
            if rows:
                self.run(f"DELETE FROM {t} WHERE id IN ({', '.join(str(r[0]) for r in rows)})")
            return [r[1] for r in rows]


def rows_for(n: int) -> list[tuple[Any, ...]]:
    t0 = time.time()
    return [(str(uuid.uuid4()), QUEUE, body(i), 0, t0 + i * 1e-6, t0) for i in range(n)]


def drain(db: Db, n: int, limit: int) -> None:
    got = 0
    while got < n:
        bodies = db.claim(limit)
        if not bodies:
            raise RuntimeError(f"only {got} of {n} rows claimed")
        for b in bodies:
            json.loads(b)
        got += len(bodies)


def database(dialect: str, c: dict[str, int]) -> dict[str, float]:
    table = f"floor_{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
        db = Db(dialect, table, str(Path(tmp) / "floor.sqlite"))
        try:
            db.create()
            return database_figures(db, c)
        finally:
            db.run(f"DROP TABLE IF EXISTS {table}")
            db.conn.close()


def database_figures(db: Db, c: dict[str, int]) -> dict[str, float]:
    fig: dict[str, float] = {}
    db.cur.execute(db.insert, rows_for(1)[0])          # warm up
    one = rows_for(c["insert"])
    fig["insert_per_s"] = rate(len(one), lambda: [db.cur.execute(db.insert, r) for r in one])
    many = rows_for(c["insert_many"])
    fig["insert_many_per_s"] = rate(len(many), lambda: db.insert_many(many))
    if db.dialect == "postgresql":                     # jobfarm's bulk path on PostgreSQL
        fig["copy_many_per_s"] = rate(len(many), lambda: db.copy_many(many))
        db.run("SET synchronous_commit = off")         # as jobfarm's worker connection
    for key, limit in (("claim100_per_s", 100), ("claim1_per_s", 1)):
        db.empty()
        db.insert_many(rows_for(c["claim"]))
        fig[key] = rate(c["claim"], lambda: drain(db, c["claim"], limit))
    return fig


# -- RabbitMQ ----------------------------------------------------------------------------
def wait_until(done: Callable[[], bool], what: str, seconds: float,
               step: Callable[[], Any] = lambda: time.sleep(0.01)) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        step()


def amqp_connection() -> Any:
    import pika
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", 5672, credentials=pika.PlainCredentials("guest", "guest")))


def publish(ch: Any, queue: str, bodies: list[str]) -> None:
    import pika
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    for b in bodies:
        ch.basic_publish("", queue, b, props)


def queued(ch: Any, queue: str, n: int) -> None:
    wait_until(lambda: ch.queue_declare(queue, passive=True).method.message_count >= n,
               f"{n} messages in {queue}", 120, lambda: time.sleep(0.05))


def consume(conn: Any, queue: str, n: int, seen: Callable[[bytes], Any], seconds: float = 300) -> None:
    """n deliveries, prefetch 100, one basic_ack each; `seen` gets each body."""
    ch = conn.channel()
    ch.basic_qos(prefetch_count=100)
    got = [0]

    def on_message(ch: Any, method: Any, _props: Any, raw: bytes) -> None:
        seen(raw)
        ch.basic_ack(method.delivery_tag)
        got[0] += 1

    tag = ch.basic_consume(queue, on_message)
    wait_until(lambda: got[0] >= n, f"{n} deliveries", seconds, lambda: conn.process_data_events(time_limit=1))
    ch.basic_cancel(tag)
    ch.close()


def latency_consumer(queue: str, n: int, out: str) -> None:
    """In another process: append `receive-time n` to `out` for each of n deliveries."""
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    conn = amqp_connection()
    consume(conn, queue, n, lambda raw: os.write(fd, f"{time.time():.6f} {json.loads(raw)['data']['n']}\n".encode()))
    conn.close()


def latency(ch: Any, queue: str, n: int) -> tuple[float, float]:
    """p50 and p99 ms from a confirmed publish to its delivery to an idle consumer."""
    with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
        out = Path(tmp) / "received.txt"
        proc = multiprocessing.get_context("spawn").Process(target=latency_consumer, args=(queue, n + 1, str(out)))

        def received(k: int) -> bool:
            if out.exists() and out.read_bytes().count(b"\n") >= k:
                return True
            if not proc.is_alive():
                raise RuntimeError(f"the latency consumer exited with status {proc.exitcode}")
            return False

        proc.start()
        try:
            publish(ch, queue, [body(-1)])
            wait_until(lambda: received(1), "the latency consumer", 60)
            time.sleep(1.0)                             # idle now
            sent = {}
            for i in range(n):
                sent[i] = time.time()
                publish(ch, queue, [body(i)])
                time.sleep(0.02)
            wait_until(lambda: received(n + 1), f"{n} deliveries", 60)
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        got = [line.split() for line in out.read_text().splitlines()]
    lat = sorted((float(t) - sent[int(i)]) * 1000 for t, i in got if int(i) >= 0)
    return round(lat[len(lat) // 2], 2), round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2)


def amqp(c: dict[str, int]) -> dict[str, float]:
    queue = f"floor_{uuid.uuid4().hex[:10]}"
    conn = amqp_connection()
    ch, confirmed = conn.channel(), conn.channel()
    confirmed.confirm_delivery()
    ch.queue_declare(queue, durable=True, arguments={"x-queue-version": 2})
    try:
        fig: dict[str, float] = {}
        bodies = [body(i) for i in range(c["publish_confirmed"])]
        fig["publish_confirmed_per_s"] = rate(len(bodies), lambda: publish(confirmed, queue, bodies))
        bodies = [body(i) for i in range(c["publish"])]
        ch.queue_purge(queue)
        fig["publish_unconfirmed_per_s"] = rate(len(bodies), lambda: publish(ch, queue, bodies))
        queued(ch, queue, len(bodies))
        ch.queue_purge(queue)
        publish(ch, queue, [body(i) for i in range(c["consume"])])
        queued(ch, queue, c["consume"])
        fig["consume_prefetch100_per_s"] = rate(c["consume"], lambda: consume(conn, queue, c["consume"], json.loads))
        fig["latency_p50_ms"], fig["latency_p99_ms"] = latency(confirmed, queue, c["latency"])
        return fig
    finally:
        ch.queue_delete(queue)
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(BACKENDS), help="backends, comma-separated")
    ap.add_argument("--quick", action="store_true", help="counts divided by 5")
    args = ap.parse_args()
    counts = {k: v // 5 if args.quick else v for k, v in FULL.items()}
    status = 0
    for backend in [b for b in args.only.split(",") if b]:
        row: dict[str, Any] = {"system": "floor", "backend": backend, "quick": args.quick, "time": time.time()}
        print(f"  floor: {backend} ...", file=sys.stderr, flush=True)
        try:
            if backend not in BACKENDS:
                raise ValueError(f"unknown backend {backend!r}")
            row.update(amqp(counts) if backend == "amqp" else database(backend, counts))
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"
            status = 1
        print(json.dumps(row), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
