"""The database driver's schema and SQL, one function per query, dialect leaks commented.

A reservation lives in `available_at`: claiming a job sets it to now + retry_after and the
worker's token in `reserved_by`; renewing pushes it on. So one index range
`queue = ? AND available_at <= now` finds both ready jobs and expired reservations (a dead
worker's jobs), with no OR and no sort beyond the index order.
"""
from __future__ import annotations

from typing import Any


def tables(jobs: str, failed: str | None, dialect: str = "") -> tuple[Any, ...]:
    """The schema as SQLAlchemy Core tables (imported here only: workers never need it);
    no failed table when `failed` is None (`failed_table: null`)."""
    from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table, Text
    from sqlalchemy.dialects import mysql

    LONGTEXT = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
    ID = BigInteger().with_variant(Integer(), "sqlite")   # sqlite: INTEGER PRIMARY KEY is the rowid
    md = MetaData()
    jobs_t = Table(
        jobs, md,
        Column("id", ID, primary_key=True, autoincrement=True),
        Column("uuid", String(36), nullable=False),
        Column("queue", String(191), nullable=False),
        Column("payload", LONGTEXT, nullable=False),
        Column("attempts", Integer, nullable=False, default=0),
        Column("available_at", Float(53), nullable=False),
        Column("reserved_by", String(64), nullable=True),
        Column("created_at", Float(53), nullable=False),
        claim_index(jobs, dialect),
    )
    failed_t = None if failed is None else Table(
        failed, md,
        Column("id", String(36), primary_key=True),
        Column("connection", String(191), nullable=False),
        Column("queue", String(191), nullable=False),
        Column("payload", LONGTEXT, nullable=False),
        Column("exception", LONGTEXT, nullable=False),
        Column("failed_at", Float(53), nullable=False),
        Index(f"{failed}_failed_at", "failed_at"),
    )
    Table(                                      # jobs with a `retention`, kept as done until expires_at
        f"{jobs}_done", md,
        Column("id", String(36), primary_key=True),
        Column("doc", Text, nullable=False),
        Column("expires_at", Float(53), nullable=False),
        Index(f"{jobs}_done_expires", "expires_at"),
    )
    stamps_t = Table(
        f"{jobs}_stamps", md,
        Column("name", String(191), primary_key=True),
        Column("value", Float(53), nullable=False),
    )
    workers_t = Table(
        f"{jobs}_workers", md,
        Column("id", String(191), primary_key=True),
        Column("doc", Text, nullable=False),
        Column("heartbeat", Float(53), nullable=False),
    )
    counts_t = Table(      # farm/counts.py: minute 0 holds the totals, `le` a histogram bucket's count
        f"{jobs}_counts", md,
        Column("minute", BigInteger, primary_key=True, autoincrement=False),
        Column("queue", String(191), primary_key=True),
        Column("job", String(191), primary_key=True),
        Column("outcome", String(16), primary_key=True),
        Column("le", String(16), primary_key=True),
        Column("n", BigInteger, nullable=False),
        Column("seconds", Float(53), nullable=False),
    )
    # chains and batches (farm/batches.py, drivers/batchstore.py): a batch's counters, and
    # its member jobs (failed: -1 until one finishes, then 0 or 1; only that change counts)
    Table(
        f"{jobs}_batches", md,
        Column("id", String(36), primary_key=True),
        Column("name", String(191), nullable=True),
        Column("total", Integer, nullable=False),
        Column("processed", Integer, nullable=False),
        Column("failed", Integer, nullable=False),
        Column("callbacks", LONGTEXT, nullable=False),
        Column("created_at", Float(53), nullable=False),
        Column("finished_at", Float(53), nullable=True),
        Column("cancelled_at", Float(53), nullable=True),
        Column("then_at", Float(53), nullable=True),       # when each callback was pushed (once)
        Column("catch_at", Float(53), nullable=True),
        Column("finally_at", Float(53), nullable=True),
        Index(f"{jobs}_batches_created", "created_at"),
    )
    Table(
        f"{jobs}_batch_jobs", md,
        Column("batch_id", String(36), primary_key=True),
        Column("job_id", String(36), primary_key=True),
        Column("failed", Integer, nullable=False),
    )
    Table(      # farm/locks.py: counters with an expiry (unique jobs, middleware)
        f"{jobs}_locks", md,
        # MariaDB/MySQL compare bytes here: their default collations would make "ABC", "abc",
        # "abc " and "Ábc" one lock, refusing a distinct unique job as a duplicate
        Column("name", String(191).with_variant(mysql.VARBINARY(764), "mysql", "mariadb"), primary_key=True),
        Column("n", BigInteger, nullable=False),
        Column("expires_at", Float(53), nullable=False),
        Index(f"{jobs}_locks_expires", "expires_at"),
    )
    return md, jobs_t, failed_t, stamps_t, workers_t, counts_t


def claim_index(jobs: str, dialect: str) -> Any:
    """The index a claim walks: `queue = ? AND available_at <= now ORDER BY available_at, id`.

    InnoDB and SQLite end every index entry with the primary key (rowid), so (queue,
    available_at) already gives that order. PostgreSQL's does not: with many jobs sharing one
    `available_at` (a dispatch_many) it sorted the whole backlog for every claim (1M queued:
    seq scan + external sort, 510 ms a claim), so its index carries `id` itself (1.3 ms)."""
    from sqlalchemy import Index

    if dialect == "postgresql":
        return Index(pg_claim_index(jobs), "queue", "available_at", "id")
    return Index(f"{jobs}_queue_available", "queue", "available_at")


def pg_claim_index(jobs: str) -> str:
    """Cut to PostgreSQL's 63 bytes as the server would (table names are ASCII identifiers),
    so the probe finds it under the name it has."""
    return f"{jobs}_queue_available_id"[:63]


# PostgreSQL: a jobs table made by an earlier version gets the claim index (a one-time build that
# holds off writes to the table while it runs: README "Upgrading") and loses the old one
PG_UPGRADE_CLAIM_INDEX = """
CREATE INDEX IF NOT EXISTS {ix} ON {t} (queue, available_at, id);
DROP INDEX IF EXISTS {t}_queue_available;
"""


# PostgreSQL: a statement trigger wakes LISTENing workers on any INSERT, ours or another
# program's (`psql`, PHP), at no extra round trip for the producer.
PG_NOTIFY = """
CREATE OR REPLACE FUNCTION {t}_notify() RETURNS trigger AS $$
BEGIN PERFORM pg_notify('{t}', ''); RETURN NULL; END; $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS {t}_notify ON {t};
CREATE TRIGGER {t}_notify AFTER INSERT ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {t}_notify();
"""


class Queries:
    """SQL text for one dialect, written with %s and rewritten to ? for sqlite3."""

    def __init__(self, dialect: str, jobs: str, failed: str | None, trace: float = 0.0) -> None:
        self.dialect = dialect
        self.jobs, self.failed = jobs, failed         # failed None: `failed_table: null`, its queries unused
        self._q = (lambda s: s.replace("%s", "?")) if dialect == "sqlite" else (lambda s: s)
        j, f = jobs, failed or "no_failed_table"
        q = self._q
        self.insert = q(f"INSERT INTO {j} (uuid, queue, payload, attempts, available_at, created_at) "
                        "VALUES (%s, %s, %s, %s, %s, %s)")
        self.copy = f"COPY {j} (uuid, queue, payload, attempts, available_at, created_at) FROM STDIN"
        # sqlite (3.35+) and postgres claim in one atomic statement; RETURNING order is unspecified.
        # sqlite hands the payload over as bytes: a row another program wrote with bytes that are
        # not UTF-8 must reach the worker (which fails it), not break the claim of its batch
        pick = f"SELECT id FROM {j} WHERE queue = %s AND available_at <= %s ORDER BY available_at, id LIMIT %s"
        # PostgreSQL: the ids are picked once (an InitPlan), whatever the statistics say. As
        # `id IN (SELECT ...)`, a table whose reltuples a VACUUM left at 0 was planned as a
        # semi join re-running the locking sub-select for every row of the table (minutes)
        self.claim_returning = q(
            f"UPDATE {j} SET available_at = %s, reserved_by = %s "
            + (f"WHERE id = ANY(ARRAY({pick} FOR UPDATE SKIP LOCKED)) " if dialect == "postgresql" else
               f"WHERE id IN ({pick}) ")
            + f"RETURNING id, uuid, {'CAST(payload AS BLOB)' if dialect == 'sqlite' else 'payload'}, attempts")
        # a claimed job's trace (drivers/dbretry.py: a dispatch whose reply was lost looks for it
        # once the job may have run and gone), written with the claim when the job was created
        # less than T seconds ago: `claimed:<uuid>` in the locks table, expiring T seconds on.
        # One statement per claimed batch, in the claim's transaction. Parameters: now, now
        # (after the claim's own; MariaDB: sent with the claim's UPDATE, one round trip)
        t = float(trace)
        self.claim_traced = (f"WITH c AS ({self.claim_returning[:self.claim_returning.rindex(' RETURNING ')]} "
                             "RETURNING id, uuid, payload, attempts, created_at), "
                             f"t AS ({pg_trace('c', j, t)}) SELECT id, uuid, payload, attempts FROM c")
        self.trace_claimed = (f"INSERT IGNORE INTO {j}_locks (name, n, expires_at) SELECT CONCAT('claimed:', uuid), "
                              f"1, %s + {t!r} FROM {j} WHERE id IN ({{ids}}) AND created_at > %s - {t!r}")
        # mariadb has no UPDATE ... RETURNING: select with SKIP LOCKED, then update, in one transaction
        self.claim_select = (f"SELECT id, uuid, payload, attempts FROM {j} WHERE queue = %s AND available_at <= %s "
                             "ORDER BY available_at, id LIMIT %s FOR UPDATE SKIP LOCKED")
        self.claim_update = f"UPDATE {j} SET available_at = %s, reserved_by = %s WHERE id IN ({{ids}})"
        # `attempts` counts starts, not claims: a claimed job's start is written before it runs
        # (with the previous job's ack when there is one), so a worker killed with a batch in
        # hand has used an attempt only of the job it was running
        self.start = q(f"UPDATE {j} SET attempts = attempts + 1 WHERE id = %s AND reserved_by = %s")
        # ack, release, fail and renew touch a row only while this worker's token holds it: a
        # reservation that lapsed and was claimed by another worker is that worker's now
        self.renew = f"UPDATE {j} SET available_at = %s WHERE id IN ({{ids}}) AND reserved_by = %s"
        if dialect == "postgresql":
            # the heart's renew never waits on a row lock: the worker's pipelined acks (a
            # transaction deleting several of the same rows) locked them in another order, and
            # the two deadlocked; PostgreSQL then aborted the acks and those jobs ran again. A
            # row skipped here is being acked (or renewed next time, well inside retry_after).
            self.renew = (f"UPDATE {j} SET available_at = %s WHERE id = ANY(ARRAY(SELECT id FROM {j} "
                          f"WHERE id IN ({{ids}}) AND reserved_by = %s FOR UPDATE SKIP LOCKED))")
        self.ack = q(f"DELETE FROM {j} WHERE id = %s AND reserved_by = %s")
        self.ack_and_start = f"START TRANSACTION; {self.ack}; {self.start}; COMMIT"   # mysql only
        self.release = q(f"UPDATE {j} SET available_at = %s, reserved_by = NULL, payload = %s "
                         "WHERE id = %s AND reserved_by = %s")
        self.give_back = q(f"UPDATE {j} SET available_at = %s, reserved_by = NULL, attempts = attempts - %s "
                           "WHERE id = %s AND reserved_by = %s")
        self.insert_failed = q(f"INSERT INTO {f} (id, connection, queue, payload, exception, failed_at) "
                               "VALUES (%s, %s, %s, %s, %s, %s)")
        self.delete_failed = q(f"DELETE FROM {f} WHERE id = %s")
        self.counts = q(
            f"SELECT queue, "
            "SUM(CASE WHEN available_at <= %s THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN reserved_by IS NULL AND available_at > %s THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN reserved_by IS NOT NULL AND available_at > %s THEN 1 ELSE 0 END) "
            f"FROM {j} GROUP BY queue")
        self.failed_counts = q(f"SELECT queue, COUNT(*) FROM {f} WHERE connection = %s GROUP BY queue")
        self.count_failed = f"SELECT COUNT(*) FROM {f}"
        self.count_failed_queue = q(f"SELECT COUNT(*) FROM {f} WHERE queue = %s")
        self.clear = q(f"DELETE FROM {j} WHERE queue = %s AND reserved_by IS NULL AND available_at <= %s")
        self.prune_failed = q(f"DELETE FROM {f} WHERE failed_at < %s")
        self.set_stamp_update = q(f"UPDATE {j}_stamps SET value = %s WHERE name = %s")
        self.set_stamp_insert = q(f"INSERT INTO {j}_stamps (name, value) VALUES (%s, %s)")
        self.stamp = q(f"SELECT value FROM {j}_stamps WHERE name = %s")
        self.delete_stamp = q(f"DELETE FROM {j}_stamps WHERE name = %s")
        self.stamps = q(f"SELECT name, value FROM {j}_stamps WHERE name >= %s AND name < %s ORDER BY name")
        # claims (schedule ticks) are stamps named `claim:...` holding when they may be pruned; a
        # name taken already inserts no row, without an error (PostgreSQL would log each one)
        self.claim = q(f"INSERT IGNORE INTO {j}_stamps (name, value) VALUES (%s, %s)" if dialect == "mysql" else
                       f"INSERT INTO {j}_stamps (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING")
        self.prune_claims = q(f"DELETE FROM {j}_stamps WHERE name >= 'claim:' AND name < 'claim;' AND value < %s")
        self.beat_update = q(f"UPDATE {j}_workers SET doc = %s, heartbeat = %s WHERE id = %s")
        self.beat_insert = q(f"INSERT INTO {j}_workers (id, doc, heartbeat) VALUES (%s, %s, %s)")
        self.workers = f"SELECT id, doc, heartbeat FROM {j}_workers ORDER BY id"
        self.forget_worker = q(f"DELETE FROM {j}_workers WHERE id = %s")
        self.prune_workers = q(f"DELETE FROM {j}_workers WHERE heartbeat < %s")
        self.counts_by_minute = q(f"SELECT minute, queue, job, outcome, n FROM {j}_counts "
                                  "WHERE minute >= %s AND minute > 0 AND le = '' ORDER BY minute, queue, job, outcome")
        self.count_totals = f"SELECT queue, job, outcome, le, n, seconds FROM {j}_counts WHERE minute = 0"
        self.prune_counts = q(f"DELETE FROM {j}_counts WHERE minute > 0 AND minute < %s")
        # operations (farmctl job / cancel): by the job's id. No index on uuid (it would cost every
        # job about 16% more worker CPU on SQLite): a scan of the jobs table, README "Operations"
        self.lookup = q(f"SELECT queue, payload, attempts, available_at, reserved_by FROM {j} WHERE uuid = %s")
        # a job no worker holds (ready, delayed, or waiting for its retry) goes, in one statement:
        # a claim sets reserved_by atomically, so a worker never starts a job deleted here
        self.cancel = q(f"DELETE FROM {j} WHERE uuid = %s AND reserved_by IS NULL")
        self.exists = q(f"SELECT 1 FROM {j} WHERE uuid = %s")
        self.insert_done = q(f"INSERT INTO {j}_done (id, doc, expires_at) VALUES (%s, %s, %s)")
        self.delete_done = q(f"DELETE FROM {j}_done WHERE id = %s")
        self.done = q(f"SELECT doc FROM {j}_done WHERE id = %s AND expires_at > %s")
        self.prune_done = q(f"DELETE FROM {j}_done WHERE expires_at <= %s")
        # -- locks (farm/locks.py): one upsert, never a check then an insert. A counter that has
        # expired starts again; both CASEs read the row as it was (MariaDB assigns left to right,
        # so `n` goes first: `expires_at` is still the old one when the second IF reads it)
        lk = f"{j}_locks"
        if dialect == "mysql":      # no RETURNING: the row is read back in the same transaction
            self.incr = (f"INSERT INTO {lk} (name, n, expires_at) VALUES (%s, %s, %s) ON DUPLICATE KEY UPDATE "
                         "n = IF(expires_at <= %s, VALUES(n), n + VALUES(n)), "
                         "expires_at = IF(expires_at <= %s, VALUES(expires_at), expires_at)")
            self.incr_read = f"SELECT n, expires_at FROM {lk} WHERE name = %s"
        else:                       # PostgreSQL and SQLite (3.35+)
            self.incr = q(f"INSERT INTO {lk} (name, n, expires_at) VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
                          f"n = CASE WHEN {lk}.expires_at <= %s THEN excluded.n ELSE {lk}.n + excluded.n END, "
                          f"expires_at = CASE WHEN {lk}.expires_at <= %s THEN excluded.expires_at "
                          f"ELSE {lk}.expires_at END RETURNING n, expires_at")
        self.drop_lock = q(f"DELETE FROM {lk} WHERE name = %s")
        self.drop_held = q(f"DELETE FROM {lk} WHERE name = %s AND expires_at = %s")
        self.prune_locks = q(f"DELETE FROM {lk} WHERE expires_at < %s")

    def add_counts(self, n_rows: int) -> str:
        """One statement adding n rows of (minute, queue, job, outcome, le, n, seconds) to the
        counts, each an insert or an increment of the row with its key."""
        c = f"{self.jobs}_counts"
        rows = ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * n_rows)
        sql = f"INSERT INTO {c} (minute, queue, job, outcome, le, n, seconds) VALUES {rows} "
        if self.dialect == "mysql":     # MariaDB: VALUES(col) is the row that would have been inserted
            sql += "ON DUPLICATE KEY UPDATE n = n + VALUES(n), seconds = seconds + VALUES(seconds)"
        else:                           # PostgreSQL and SQLite (3.24+) share the upsert's spelling
            sql += (f"ON CONFLICT (minute, queue, job, outcome, le) DO UPDATE "
                    f"SET n = {c}.n + excluded.n, seconds = {c}.seconds + excluded.seconds")
        return self._q(sql)

    def ready_in(self, n_queues: int) -> str:
        """One row: for each of n queues (parameters queue, now in turn) whether it has a job to
        claim; each EXISTS is one probe of the claim index."""
        probe = f"EXISTS (SELECT 1 FROM {self.jobs} WHERE queue = %s AND available_at <= %s)"
        return self._q("SELECT " + ", ".join([probe] * n_queues))

    def next_available_in(self, n_queues: int) -> str:
        """One row: for each of n queues (parameter: the queue) when its next job becomes
        claimable (a delayed one falling due or a reservation lapsing; NULL when empty). Each is
        a min() the index answers from its first entry; an idle PostgreSQL reserve() sleeps
        until the soonest, NOTIFY only wakes it for a push."""
        probe = f"(SELECT MIN(available_at) FROM {self.jobs} WHERE queue = %s)"
        return self._q("SELECT " + ", ".join([probe] * n_queues))

    def ack_ids(self, row_ids: list[int]) -> str:
        """The ack of these rows at once, while this worker's token holds them (acks sent again
        after a connection dropped)."""
        return self._q(f"DELETE FROM {self.jobs} WHERE id IN ({', '.join(str(int(i)) for i in row_ids)}) "
                       "AND reserved_by = %s")

    def renew_ids(self, row_ids: list[int]) -> str:
        """The renew statement for these rows (integers from our own claim, inlined: one
        statement whatever the count, through the primary key)."""
        return self._q(self.renew.format(ids=", ".join(str(int(i)) for i in row_ids)))

    def failed_select(self, n_ids: int, by_queue: bool, limit: int | None) -> str:
        sql = f"SELECT id, connection, queue, payload, exception, failed_at FROM {self.failed}"
        where = []
        if n_ids:
            where.append(f"id IN ({', '.join(['%s'] * n_ids)})")
        if by_queue:
            where.append("queue = %s")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY failed_at, id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return self._q(sql)


def pg_trace(rows: str, jobs: str, seconds: float) -> str:
    """PostgreSQL: the traces of the claimed jobs in CTE `rows` (uuid, created_at) created less
    than `seconds` before now (a parameter), expiring `seconds` after it (now again)."""
    t = float(seconds)
    return (f"INSERT INTO {jobs}_locks (name, n, expires_at) SELECT 'claimed:' || uuid, 1, CAST(%s AS float8) + {t!r} "
            f"FROM {rows} WHERE created_at > CAST(%s AS float8) - {t!r} ON CONFLICT (name) DO NOTHING")
