"""The `database` driver: SQLite, PostgreSQL (psycopg 3) and MariaDB/MySQL (PyMySQL).

The per-job statements run on DBAPI connections in autocommit, one round trip each (the
PostgreSQL ack none); SQLAlchemy Core describes the schema and is imported only to create
or print it, which keeps it out of a worker's memory.
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from .. import counts, waker
from ..errors import DriverUnavailable, FarmError, SerializationError
from ..manifest import Connection
from . import dbapi, dbretry, pgacks, pgtidy, sql
from .base import FailedJob, Outgoing, Reserved, done_info
from .batchstore import DatabaseBatches


DEFAULT_URL = "sqlite:///var/farm.db"


class DatabaseQueue(DatabaseBatches):    # batches: drivers/batchstore.py
    supports_notify = False
    settles_again = True        # release and fail match the worker's token: harmless twice

    def __init__(self, conn: Connection) -> None:
        self.name = conn.name
        self.config = conn
        self.retry_after = float(conn.retry_after)
        try:
            self.target = dbapi.parse(conn.url or DEFAULT_URL)
        except FarmError as e:
            raise FarmError(f"connection {conn.name!r}: {e}") from None
        self.dialect = self.target.dialect
        self.supports_notify = self.dialect == "postgresql"
        self.keeps_failed = conn.failed_table is not None     # `failed_table: null`: failed jobs are deleted
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._pid = os.getpid()
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()
        self._lost_acks: list[int] = []      # rows whose ack may not have landed (pgacks): acked again
        self._pipelines: list[pgacks.PipelinedAcks] = []     # every thread's, for renew()
        # renew() covers an unanswered ack only once it is this old (pgacks.STALLED_AFTER): well
        # before its reservation lapses, as renewals come every retry_after / 3
        self._stalled_after = min(pgacks.STALLED_AFTER, self.retry_after / 10)
        self._poll = 0.01
        # a job's start is written before it runs (see sql.Queries.start): these jobs' starts
        # are, and a claimed job's successor in its batch gets its start written with its ack
        self._started: set[int] = set()
        self._successor: dict[int, Reserved] = {}
        self._predecessor: dict[int, int] = {}      # the reverse: a settled job is no one's next
        self._claims_pruned = 0.0                      # when expired schedule claims may be pruned next
        self._locks_pruned = 0.0                       # when expired locks (farm/locks.py) may be pruned next
        self.push_retry = dbretry.retry_seconds()     # a push that lost its connection: drivers/dbretry.py
        # a claim of a job created less than `trace` seconds ago leaves a trace that push looks
        # for (drivers/dbretry.py): the retry time and a minute of clock slack; SQLite: none
        self.trace = self.push_retry + dbretry.CLOCK_SLACK if self.push_retry > 0 and self.dialect != "sqlite" else 0.0
        self.sql = sql.Queries(self.dialect, conn.table, conn.failed_table, self.trace)
        self._traces_pruned = 0.0                      # when expired traces may be pruned next
        self._vacuum: pgtidy.Vacuum | None = None      # PostgreSQL: tidy()
        self._errors = dbapi.errors(self.target)
        self._any_error = dbapi.any_error(self.target)
        self._ensure_schema()

    # -- connections -------------------------------------------------------------------
    def _raw(self, role: str = "durable") -> Any:
        """This thread's DBAPI connection for `role` (durable writes, or the worker's fast path)."""
        if os.getpid() != self._pid:        # forked: never share a socket with the parent
            self._pid = os.getpid()
            self._local = threading.local()
            self._opened = []
            self._pipelines = []
        conn = self._local.__dict__.get(role)
        if conn is None:
            try:
                conn = dbapi.connect(self.target, multi=role == "fast")
                self._setup(conn, role)
            except self._errors as e:
                raise DriverUnavailable(f"connection {self.name!r}: cannot connect: {_first_line(e)}") from e
            setattr(self._local, role, conn)
            with self._lock:
                self._opened.append(conn)
        return conn

    def _setup(self, conn: Any, role: str) -> None:
        if self.dialect == "sqlite":
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL survives any process crash; only an OS crash may lose the last commits.
            conn.execute("PRAGMA synchronous=NORMAL")
        elif self.dialect == "postgresql":
            # the random tail makes the label this queue's own: dbretry ends an old session only
            # when its label is ours, and pids repeat across containers
            conn.execute(f"SET application_name = 'farm {os.getpid()} {role} {self.token[-12:]}'")
            if role in ("fast", "acks"):   # claims and acks: a server crash may rerun a job, a worker crash never
                conn.execute("SET synchronous_commit = off")
            if role in ("fast", "acks", "renew"):
                # a worker's statements are index walks (a claim down the claim index, the rest by
                # primary key) whatever the statistics say. A VACUUM of a drained table leaves
                # reltuples 0; with no ANALYZE after the next million (autovacuum off or behind)
                # PostgreSQL then took a bitmap scan + sort for each claim and a sequential scan
                # under FOR UPDATE for each renew, which held the acks' rows for minutes
                conn.execute("SET enable_seqscan = off")
                conn.execute("SET enable_bitmapscan = off")
        else:
            with conn.cursor() as cur:
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")

    def _drop(self, role: str | None = None) -> None:
        """Forget this thread's connection for `role` (all of them: None) after an error; the
        next call reconnects. Only this thread's: the heart's trouble never drops the worker's."""
        state = self._local.__dict__
        roles = [role] if role else [r for r, c in state.items() if hasattr(c, "cursor")]
        for r in roles:
            conn = state.pop(r, None)
            state.get("cursors", {}).pop(r, None)
            if conn is not None:
                _close_quietly(conn)
            if r == "acks":
                acks = state.pop("ack_pipeline", None)
                with self._lock:
                    if acks in self._pipelines:
                        self._pipelines.remove(acks)

    @contextmanager
    def _cursor(self, role: str = "durable", tx: bool = False) -> Iterator[Any]:
        """This thread's cursor for `role`; a lost connection becomes DriverUnavailable."""
        try:
            cur = self._cursors().get(role)
            if cur is None:
                cur = self._cursors()[role] = self._raw(role).cursor()
            if tx:
                cur.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
            try:
                yield cur
                if tx:
                    cur.execute("COMMIT")
            except BaseException:
                if tx:
                    try:
                        cur.execute("ROLLBACK")
                    except Exception:
                        pass
                raise
        except self._any_error as e:     # never a driver's own exception past this point
            if isinstance(e, self._errors) and _is_disconnect(e, self.dialect):
                self._drop(role)
                raise DriverUnavailable(f"connection {self.name!r}: {_first_line(e)}") from e
            if isinstance(e, UnicodeEncodeError):
                raise SerializationError(f"connection {self.name!r}: a value cannot be stored: {e}") from e
            raise FarmError(f"connection {self.name!r}: {_first_line(e)}") from e

    def _cursors(self) -> dict[str, Any]:
        if os.getpid() != self._pid:
            self._raw("durable")            # resets the thread state after a fork
        cursors = self._local.__dict__.get("cursors")
        if cursors is None:
            cursors = self._local.cursors = {}
        return cursors

    def _pipelined(self, send: Callable[[pgacks.PipelinedAcks], None]) -> None:
        """PostgreSQL: acks and starts are on the socket when this returns; replies are read later."""
        acks = self._local.__dict__.get("ack_pipeline")
        if acks is None:
            if send is _settle or send is _poll:
                return
            acks = self._local.ack_pipeline = pgacks.PipelinedAcks(lambda: self._raw("acks"), self.config.table)
            with self._lock:
                self._pipelines.append(acks)     # renew() keeps their unanswered acks' rows held
        try:
            send(acks)
        except self._errors as e:
            lost = acks.unconfirmed()
            acks.reset()
            with self._lock:        # acked again on a new connection before the next claim
                self._lost_acks.extend(lost)
            self._drop("acks")
            raise DriverUnavailable(f"connection {self.name!r}: {_first_line(e)} "
                                    f"({len(lost)} pipelined ack(s) unconfirmed: acked again)") from e

    def _ack_lost(self) -> None:
        """Ack again the jobs whose ack was sent and never confirmed (PostgreSQL's pipelined
        acks on a connection that dropped): a DELETE matching this worker's token is harmless
        if the first one landed, and does nothing to a job another worker holds now."""
        if self.dialect == "postgresql":
            try:            # a dropped acks connection is found here, not at the next ack
                self._pipelined(_poll)
            except DriverUnavailable:
                pass
        with self._lock:
            rows = list(self._lost_acks)
        if not rows:
            return
        with self._cursor("fast") as cur:
            cur.execute(self.sql.ack_ids(rows), (self.token,))
        with self._lock:
            del self._lost_acks[:len(rows)]

    def _ensure_schema(self) -> None:
        """Create the tables (and the PostgreSQL trigger) unless they all exist; safe when racing."""
        if self._schema_exists():
            return
        import sqlalchemy as sa

        md, *_ = sql.tables(self.config.table, self.config.failed_table, self.dialect)
        table = self.config.table
        engine = dbapi.sqlalchemy_engine(self.target)
        try:
            for attempt in range(6):
                try:
                    with engine.begin() as c:
                        if self.dialect == "postgresql":    # concurrent CREATE OR REPLACE can clash
                            c.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext(%(t)s))", {"t": table})
                        md.create_all(c, checkfirst=True)
                        if self.dialect == "postgresql" and not c.exec_driver_sql(
                                "SELECT 1 FROM pg_trigger WHERE tgname = %(t)s", {"t": f"{table}_notify"}).first():
                            c.exec_driver_sql(sql.PG_NOTIFY.format(t=table))
                        if self.dialect == "postgresql":   # a table made before the claim index had `id`
                            c.exec_driver_sql(sql.PG_UPGRADE_CLAIM_INDEX.format(t=table, ix=sql.pg_claim_index(table)))
                    return
                except sa.exc.DBAPIError as e:
                    if attempt < 5 and not e.connection_invalidated and not _is_refused(e.orig):
                        time.sleep(0.05 * (attempt + 1))     # another process raced us to create them
                        continue
                    if e.orig is not None and _is_disconnect(e.orig, self.dialect):
                        raise DriverUnavailable(f"connection {self.name!r}: cannot connect: "
                                                f"{_first_line(e.orig)}") from e
                    raise FarmError(f"connection {self.name!r}: cannot create the tables: "
                                    f"{_first_line(e.orig or e)}") from e
        finally:
            engine.dispose()

    def _schema_exists(self) -> bool:
        """One cheap probe per table, on a connection the queue keeps anyway."""
        t = self.config.table
        probes = [f"SELECT 1 FROM {name} WHERE 1 = 0" for name in
                  (t, self.config.failed_table, f"{t}_stamps", f"{t}_workers", f"{t}_counts") if name]
        probes.append(f"SELECT 1 FROM {t}_done WHERE 1 = 0")
        probes += [f"SELECT 1 FROM {t}_batches WHERE 1 = 0", f"SELECT 1 FROM {t}_batch_jobs WHERE 1 = 0"]
        probes.append(f"SELECT 1 FROM {t}_locks WHERE 1 = 0")      # farm/locks.py
        if self.dialect == "postgresql":
            probes.append(f"SELECT 1 / COUNT(*) FROM pg_trigger WHERE tgname = '{t}_notify'")
            probes.append(f"SELECT 1 / COUNT(*) FROM pg_class WHERE relname = '{sql.pg_claim_index(t)}'")
        try:
            # on a connection of its own, closed after: a worker never needs its durable one
            # unless a job is released, fails or dispatches (connections per worker: README)
            with self._cursor("probe") as cur:
                for probe in probes:
                    cur.execute(probe)
                    cur.fetchall()
            self._drop("probe")
            return True
        except DriverUnavailable:
            raise
        except Exception:
            self._drop()                 # the failed probe may have left the connection aborted
            return False

    def ddl(self) -> str:
        """The CREATE statements, for users who manage migrations themselves."""
        return ddl(self.config)

    # -- the queue ---------------------------------------------------------------------
    def push(self, items: Sequence[Outgoing]) -> None:
        """Store the items in one transaction. A lost connection is not the end of it: the push
        is looked up and stored again if it did not land, for `push_retry` seconds
        (drivers/dbretry.py); after that DriverUnavailable says whether it may be stored."""
        session, started = None, time.monotonic()
        try:
            session = self.durable_session()
            self.insert(items)
        except DriverUnavailable as e:
            if self.dialect == "sqlite" or self.push_retry <= 0:     # no reply to lose: not stored
                raise
            dbretry.push_again(self, items, session, e, started)

    def durable_session(self) -> int | None:
        """The server's id of this thread's durable connection (opened if need be)."""
        return dbretry.session_of(self._raw("durable"), self.dialect)

    def insert(self, items: Sequence[Outgoing]) -> None:
        """One INSERT, or one transaction of a COPY (PostgreSQL) or a multi-row INSERT."""
        now = time.time()
        rows = [(o.id, o.queue, o.body, o.attempts, o.available_at, now) for o in items]
        if len(rows) == 1:
            with self._cursor() as cur:
                cur.execute(self.sql.insert, rows[0])
            return
        with self._cursor(tx=True) as cur:
            if self.dialect == "postgresql":      # COPY: the bulk path, and it fires the NOTIFY trigger
                with cur.copy(self.sql.copy) as copy:
                    for row in rows:
                        copy.write_row(row)
            else:                                  # sqlite prepares once; PyMySQL sends multi-row INSERTs
                cur.executemany(self.sql.insert, rows)

    def reserve(self, queues: Sequence[str], limit: int, wait: float) -> list[Reserved]:
        deadline = time.monotonic() + wait
        if self._lost_acks or self.dialect == "postgresql":
            self._ack_lost()            # finished jobs first: none may run again
        while True:
            jobs = self._claim(queues, limit)
            if jobs:
                self._poll = 0.01
                return jobs
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._idle(queues, remaining)

    def _claim(self, queues: Sequence[str], limit: int) -> list[Reserved]:
        out: list[Reserved] = []
        now = time.time()
        until = now + self.retry_after
        if self.trace and now >= self._traces_pruned:
            self._prune_traces(now)
        for queue in self._worth_claiming(queues, now):
            want = limit - len(out)
            if want <= 0:
                break
            if self.dialect == "mysql":
                with self._cursor("fast", tx=True) as cur:
                    cur.execute(self.sql.claim_select, (queue, now, want))
                    rows = cur.fetchall()
                    if rows:
                        ids = ", ".join(str(int(r[0])) for r in rows)
                        if self.trace:      # the claim and its traces: one round trip
                            cur.execute(f"{self.sql.claim_update}; {self.sql.trace_claimed}".format(ids=ids),
                                        (until, self.token, now, now))
                            while cur.nextset():
                                pass
                        else:
                            cur.execute(self.sql.claim_update.format(ids=ids), (until, self.token))
            else:
                with self._cursor("fast") as cur:
                    if self.trace:          # PostgreSQL: the claim and its traces in one statement
                        cur.execute(self.sql.claim_traced, (until, self.token, queue, now, want, now, now))
                    else:
                        cur.execute(self.sql.claim_returning, (until, self.token, queue, now, want))
                    rows = sorted(cur.fetchall())
                if self.dialect == "sqlite":
                    rows = [(r[0], r[1], _utf8(r[2]), r[3]) for r in rows]
            out.extend(Reserved(id=r[1], queue=queue, body=r[2], attempts=r[3] + 1, handle=r[0]) for r in rows)
        self._successor = {a.handle: b for a, b in zip(out, out[1:])}
        self._predecessor = {b.handle: a.handle for a, b in zip(out, out[1:])}
        return out

    def _worth_claiming(self, queues: Sequence[str], now: float) -> Iterator[str]:
        """The queues in order, less those seen empty by one look at all of them: the first is
        claimed from at once; only when it did not fill the batch are the rest looked at, in one
        statement, so a worker on fifty queues does not pay fifty claims for the last one's jobs."""
        if not queues:
            return
        yield queues[0]
        rest = queues[1:]
        if len(rest) > 1:
            with self._cursor("fast") as cur:
                cur.execute(self.sql.ready_in(len(rest)), [v for q in rest for v in (q, now)])
                ready = cur.fetchone()
            rest = [q for q, has in zip(rest, ready) if has]
        yield from rest

    def _idle(self, queues: Sequence[str], remaining: float) -> None:
        """Wait for a push, the next delayed job, or `remaining` seconds, whichever is first."""
        with self._cursor("fast") as cur:       # one statement, one index probe per queue
            cur.execute(self.sql.next_available_in(len(queues)), list(queues))
            soonest = min((at for at in cur.fetchone() if at is not None), default=None)
        if soonest is not None:
            remaining = min(remaining, max(0.0, soonest - time.time()) + 0.001)
        if self.dialect == "postgresql":
            self._listen(remaining)
        else:   # poll: quickly after a burst, backing off towards the worker's --sleep when idle
            waker.wait(min(remaining, self._poll))
            self._poll = min(self._poll * 1.5, max(remaining, 0.01), 1.0)

    def _listen(self, timeout: float) -> None:
        """LISTEN on the claims' own connection (one connection fewer per worker): a NOTIFY
        that came while a claim ran was read by psycopg and only sets a flag, so the wait ends
        at once; one that comes while waiting makes the socket readable."""
        state = self._local.__dict__
        try:
            conn = self._raw("fast")
            if state.get("listening") is not conn:
                conn.add_notify_handler(lambda _: state.__setitem__("notified", True))
                conn.execute(f'LISTEN "{self.config.table}"')
                state["listening"] = conn
                return      # a push may have come before LISTEN: let the caller claim again
            if state.pop("notified", False):
                return
            if waker.wait(timeout, [conn.fileno()]):
                pg = conn.pgconn            # drain what has come, without waiting for more
                pg.consume_input()
                while pg.notifies() is not None:
                    pass
            state.pop("notified", None)
        except self._errors as e:
            self._drop("fast")
            raise DriverUnavailable(f"connection {self.name!r}: {_first_line(e)}") from e

    def tidy(self) -> str | None:
        """PostgreSQL: start a VACUUM of the jobs table (and its locks) once their dead rows pile
        up (drivers/pgtidy.py). The heart calls it every half minute; the last run's error comes
        back once, for the log."""
        if self.dialect != "postgresql":
            return None
        if self._vacuum is None:
            def connect() -> Any:
                conn = dbapi.connect(self.target)
                try:
                    conn.execute(f"SET application_name = 'farm {os.getpid()} vacuum {self.token[-12:]}'")
                except BaseException:
                    _close_quietly(conn)
                    raise
                return conn
            self._vacuum = pgtidy.Vacuum(connect, f"farm vacuum {self.config.table}")
        error, self._vacuum.error = self._vacuum.error, None
        with self._cursor("renew") as cur:
            tables, not_ours = pgtidy.overgrown(cur, [self.config.table, f"{self.config.table}_locks"])
        if tables:
            self._vacuum.start(tables)
        if not_ours and not self._vacuum.told:
            self._vacuum.told = True
            error = (f"{', '.join(not_ours)}: many dead rows, and this user does not own the table to "
                     "VACUUM it (autovacuum or the owner must)")
        return error

    def renew(self, jobs: Sequence[Reserved]) -> None:
        """Push on the reservations of the jobs held, and only those (by primary key), and of
        the finished ones whose ack is not known to have landed: lost in a cut, or sent on a
        pipeline whose reply has not come (a stalled connection must not let them lapse)."""
        with self._lock:
            rows = [j.handle for j in jobs] + self._lost_acks + self._unanswered(self._stalled_after)
        if not rows:
            return
        with self._cursor("renew") as cur:
            cur.execute(self.sql.renew_ids(rows), (time.time() + self.retry_after, self.token))

    def has_unsettled(self) -> bool:
        """Finished jobs whose ack is not known to have landed (the heart renews them too)."""
        with self._lock:
            return bool(self._lost_acks) or bool(self._unanswered())

    def renew_due_in(self) -> float | None:
        """Seconds until an ack that renew() left out (unanswered, younger than
        `_stalled_after`) needs renewing, if that is sooner than the heart's next turn."""
        with self._lock:
            due = [d for d in (acks.old_in(self._stalled_after) for acks in self._pipelines) if d is not None]
        return min(due) if due else None

    def _unanswered(self, older_than: float = 0.0) -> list[int]:
        """Rows acked on any thread's pipeline with no reply yet, for `older_than` seconds
        (read from the heart's thread)."""
        rows: list[int] = []
        for acks in self._pipelines:
            rows += acks.unconfirmed(older_than)
        return rows

    def starting(self, job: Reserved) -> bool:
        """Write the job's start before it runs (unless its predecessor's ack did): a death
        counts against the job that was running, not the rest of the dead worker's batch."""
        row = job.handle
        if row not in self._started:
            if self.dialect == "postgresql":     # pipelined: not known here, the ack matches anyway
                self._pipelined(lambda acks: acks.start(int(row), self.token))
            else:
                with self._cursor("fast") as cur:
                    cur.execute(self.sql.start, (row, self.token))
                    if cur.rowcount == 0:
                        return False    # its reservation lapsed and another worker holds it now
            self._started.add(row)
        return True

    def ack(self, job: Reserved) -> None:
        """Delete the job, and write the start of the next job of its batch in the same
        transaction (the worker starts it next, or hands it back, which takes the start back)."""
        if job.retain:
            self._ack_kept(job)
            return
        row = job.handle
        self._started.discard(row)
        self._successor.pop(self._predecessor.pop(row, None), None)
        after = self._successor.pop(row, None)
        start = None if after is None or after.handle in self._started else after.handle
        if self.dialect == "postgresql":     # pipelined: whether it matched is not known here
            self._pipelined(lambda acks: acks.send(int(row), self.token, start))
            wrote = start is not None
        elif start is None:
            with self._cursor("fast") as cur:
                cur.execute(self.sql.ack, (row, self.token))
            wrote = False
        elif self.dialect == "mysql":       # one round trip, one commit
            with self._cursor("fast") as cur:
                try:
                    cur.execute(self.sql.ack_and_start, (row, self.token, start, self.token))
                    matched = []
                    while cur.nextset():
                        matched.append(cur.rowcount)
                except BaseException:
                    _rollback_quietly(cur)
                    raise
            wrote = matched[1] == 1         # DELETE, UPDATE, COMMIT after START TRANSACTION
        else:
            with self._cursor("fast", tx=True) as cur:
                cur.execute(self.sql.ack, (row, self.token))
                cur.execute(self.sql.start, (start, self.token))
                wrote = cur.rowcount == 1
        if wrote:                           # not when this worker's hold on it lapsed
            self._started.add(start)

    def _prune_traces(self, now: float) -> None:
        """Delete the expired locks (claimed jobs' traces among them) once every `trace` seconds:
        one indexed DELETE, so the table holds a few minutes of claims."""
        self._traces_pruned = now + self.trace
        with self._cursor("fast") as cur:
            cur.execute(self.sql.prune_locks, (now - dbretry.CLOCK_SLACK,))

    def _ack_kept(self, job: Reserved) -> None:
        """A job with a `retention`: deleted and recorded as done in one transaction (the next
        job of its batch gets its start written on its own)."""
        self._settled(job)
        now = time.time()
        with self._cursor(tx=True) as cur:
            cur.execute(self.sql.ack, (job.handle, self.token))
            if cur.rowcount == 1:
                cur.execute(self.sql.delete_done, (job.id,))
                cur.execute(self.sql.insert_done, (job.id, json.dumps(done_info(job, self.name, now)),
                                                   now + job.retain))

    def _settled(self, job: Reserved) -> int:
        """Forget the job's start (1 if it was written); PostgreSQL's pipelined starts land
        first, so that a statement on another connection cannot overtake them."""
        self._successor.pop(job.handle, None)
        self._successor.pop(self._predecessor.pop(job.handle, None), None)   # no later start of it
        if self.dialect == "postgresql":
            self._pipelined(_settle)
        if job.handle in self._started:
            self._started.discard(job.handle)
            return 1
        return 0

    def release(self, job: Reserved, delay: float, body: str) -> None:
        self._settled(job)
        with self._cursor() as cur:
            cur.execute(self.sql.release, (time.time() + delay, body, job.handle, self.token))

    def give_back(self, jobs: Sequence[Reserved], delay: float = 0.0) -> None:
        """Unstarted (or abandoned, or held back by middleware) jobs: ready again after `delay`,
        their start taken back."""
        if not jobs:
            return
        now = time.time() + delay
        with self._cursor(tx=len(jobs) > 1) as cur:
            for job in jobs:
                cur.execute(self.sql.give_back, (now, self._settled(job), job.handle, self.token))

    def fail(self, job: Reserved, body: str, error: str) -> bool:
        """Move the job to the failed table; False if this worker no longer holds it."""
        self._settled(job)
        if not self.keeps_failed:           # failed_table: null: the job is only deleted
            with self._cursor() as cur:
                cur.execute(self.sql.ack, (job.handle, self.token))
                return cur.rowcount == 1
        with self._cursor(tx=True) as cur:
            cur.execute(self.sql.ack, (job.handle, self.token))
            if cur.rowcount != 1:
                return False    # its reservation lapsed and another worker has it now
            cur.execute(self.sql.delete_failed, (job.id,))
            cur.execute(self.sql.insert_failed, (job.id, self.name, job.queue, body, error, time.time()))
        return True

    def counts(self) -> dict[str, dict[str, int]]:
        now = time.time()
        out: dict[str, dict[str, int]] = {}
        with self._cursor() as cur:
            cur.execute(self.sql.counts, (now, now, now))
            for queue, ready, delayed, reserved in cur.fetchall():
                out[queue] = {"ready": int(ready or 0), "delayed": int(delayed or 0),
                              "reserved": int(reserved or 0), "failed": 0}
            if not self.keeps_failed:
                return out
            cur.execute(self.sql.failed_counts, (self.name,))
            for queue, n in cur.fetchall():
                out.setdefault(queue, {"ready": 0, "delayed": 0, "reserved": 0, "failed": 0})["failed"] = int(n)
        return out

    def clear(self, queue: str) -> int:
        with self._cursor() as cur:
            cur.execute(self.sql.clear, (queue, time.time()))
            return int(cur.rowcount)

    def lookup(self, job_id: str) -> dict[str, Any] | None:
        """The job if it is in the jobs table: its queue, state (ready, delayed, or reserved and
        by which token), starts so far and job name; None if it is not there."""
        with self._cursor() as cur:
            cur.execute(self.sql.lookup, (job_id,))
            row = cur.fetchone()
        if row is None:
            return None
        queue, body, attempts, available_at, token = row
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        return waiting_state(queue, body, int(attempts), float(available_at), token, time.time())

    def cancel(self, job_id: str) -> bool | None:
        """Delete the job if no worker holds it: True; False if one does; None if unknown."""
        with self._cursor() as cur:
            cur.execute(self.sql.cancel, (job_id,))
            if cur.rowcount > 0:
                return True
            cur.execute(self.sql.exists, (job_id,))
            return False if cur.fetchone() else None

    def close(self) -> None:
        """Settle the pipelined acks (those unanswered are acked again on a new connection),
        then close every connection; FarmError if some acks could not be confirmed."""
        problem = ""
        acks = self._local.__dict__.get("ack_pipeline")
        if acks is not None:
            try:
                self._pipelined(_settle)
            except DriverUnavailable:
                pass                    # what it had sent is in _lost_acks now
            with self._lock:            # still unanswered after settle's wait
                self._lost_acks.extend(acks.unconfirmed())
            acks.reset()
        if self._lost_acks:
            try:
                self._ack_lost()
            except FarmError as e:
                problem = f"{len(self._lost_acks)} unanswered: {_first_line(e)}"
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            _close_quietly(conn)
        self._local = threading.local()
        if problem:
            raise FarmError(f"connection {self.name!r}: acks not confirmed by the server ({problem}); "
                            "those jobs run again after retry_after")

    # -- the store ---------------------------------------------------------------------
    # failed_table: null (self.keeps_failed False): nothing is kept, so nothing is found
    def add_failed(self, entry: FailedJob) -> None:
        if not self.keeps_failed:
            return
        with self._cursor(tx=True) as cur:
            cur.execute(self.sql.delete_failed, (entry.id,))
            cur.execute(self.sql.insert_failed, (entry.id, entry.connection, entry.queue, entry.body,
                                                 entry.exception, entry.failed_at))

    def failed(self, ids: Sequence[str] | None = None, queue: str | None = None,
               limit: int | None = None) -> list[FailedJob]:
        if not self.keeps_failed:
            return []
        ids = list(ids or [])
        params: list[Any] = ids + ([queue] if queue else [])
        with self._cursor() as cur:
            cur.execute(self.sql.failed_select(len(ids), bool(queue), limit), params)
            return [FailedJob(*row) for row in cur.fetchall()]

    def failed_by_queue(self, connection: str) -> dict[str, int]:
        if not self.keeps_failed:
            return {}
        with self._cursor() as cur:
            cur.execute(self.sql.failed_counts, (connection,))
            return {q: int(n) for q, n in cur.fetchall()}

    def count_failed(self, queue: str | None = None) -> int:
        if not self.keeps_failed:
            return 0
        with self._cursor() as cur:
            if queue is None:
                cur.execute(self.sql.count_failed)
            else:
                cur.execute(self.sql.count_failed_queue, (queue,))
            return int(cur.fetchone()[0])

    def forget(self, ids: Sequence[str]) -> int:
        n = 0
        if not self.keeps_failed:
            return 0
        with self._cursor(tx=True) as cur:
            for fid in ids:
                cur.execute(self.sql.delete_failed, (fid,))
                n += max(cur.rowcount, 0)
        return n

    def retry_failed(self, entries: Sequence[FailedJob], queue: str | None = None) -> int:
        """Move failed entries back onto their queue, attempts reset, in one transaction."""
        if not self.keeps_failed:
            return 0
        now = time.time()
        with self._cursor(tx=True) as cur:
            for e in entries:
                doc = json.loads(e.body)
                doc["attempts"], doc["queue"] = 0, queue or e.queue
                doc.pop("exceptions", None)
                cur.execute(self.sql.delete_failed, (e.id,))
                if cur.rowcount == 1:
                    cur.execute(self.sql.insert, (e.id, doc["queue"], json.dumps(doc), 0, now, now))
        return len(entries)

    def prune_failed(self, before: float) -> int:
        if not self.keeps_failed:
            return 0
        with self._cursor() as cur:
            cur.execute(self.sql.prune_failed, (before,))
            return int(cur.rowcount)

    def set_stamp(self, name: str, value: float) -> None:
        with self._cursor(tx=True) as cur:
            cur.execute(self.sql.set_stamp_update, (value, name))
            if cur.rowcount == 0:
                cur.execute(self.sql.set_stamp_insert, (name, value))

    def delete_stamp(self, name: str) -> None:
        with self._cursor("renew") as cur:
            cur.execute(self.sql.delete_stamp, (name,))

    def stamp(self, name: str) -> float | None:
        with self._cursor("renew") as cur:
            cur.execute(self.sql.stamp, (name,))
            row = cur.fetchone()
        return float(row[0]) if row else None

    def stamps(self, prefix: str, role: str = "renew") -> dict[str, float]:
        """The stamps whose names start with `prefix`: a range of the primary key (a LIKE scans
        the whole table on PostgreSQL's and SQLite's default collations, claims included); read
        on the heart's connection, as `stamp` is."""
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\U0010ffff"
        with self._cursor(role) as cur:
            cur.execute(self.sql.stamps, (prefix, upper))      # a collation may let in more: filtered
            return {name: float(v) for name, v in cur.fetchall() if name.startswith(prefix)}

    def claim(self, name: str, expires: float) -> bool:
        """Take `name` if no one has: one INSERT into the stamps table, whose primary key keeps
        out a second (never a check, then an insert). Expired claims are pruned hourly."""
        now = time.time()
        if now >= self._claims_pruned:
            self._claims_pruned = now + 3600
            with self._cursor() as cur:
                cur.execute(self.sql.prune_claims, (now,))
        with self._cursor() as cur:
            cur.execute(self.sql.claim, ("claim:" + name, expires))
            return cur.rowcount == 1


    def unclaim(self, name: str) -> None:
        self.delete_stamp("claim:" + name)
    def beat(self, worker: dict[str, Any]) -> None:
        doc, now = json.dumps(worker), time.time()
        with self._cursor("renew") as cur:
            cur.execute(self.sql.beat_update, (doc, now, worker["id"]))
            if cur.rowcount == 0:
                cur.execute(self.sql.beat_insert, (worker["id"], doc, now))

    def workers(self) -> list[dict[str, Any]]:
        with self._cursor() as cur:
            cur.execute(self.sql.workers)
            return [dict(json.loads(doc), heartbeat=hb) for _, doc, hb in cur.fetchall()]

    def forget_worker(self, worker_id: str) -> None:
        with self._cursor("renew") as cur:
            cur.execute(self.sql.forget_worker, (worker_id,))

    def prune_workers(self, before: float) -> int:
        with self._cursor() as cur:
            cur.execute(self.sql.prune_workers, (before,))
            return int(cur.rowcount)

    def add_counts(self, rows: Sequence[dict[str, Any]]) -> None:
        """Add a worker's sums (farm/counts.py) to the per-minute rows and the totals: one statement."""
        keyed = counts.key_rows(rows)
        if not keyed:
            return
        params = [v for r in keyed for v in r]
        with self._cursor("renew") as cur:      # the heart's connection
            cur.execute(self.sql.add_counts(len(keyed)), params)

    def counts_by_minute(self, since: float) -> list[dict[str, Any]]:
        with self._cursor() as cur:
            cur.execute(self.sql.counts_by_minute, (int(since) // 60 * 60,))
            return [{"minute": int(m), "queue": q, "job": j, "outcome": o, "n": int(n)}
                    for m, q, j, o, n in cur.fetchall()]

    def job_totals(self) -> list[dict[str, Any]]:
        with self._cursor() as cur:
            cur.execute(self.sql.count_totals)
            return counts.totals_from(cur.fetchall())

    def prune_counts(self, before: float) -> int:
        with self._cursor("renew") as cur:
            cur.execute(self.sql.prune_counts, (before,))
            return int(cur.rowcount)

    def record_done(self, job_id: str, info: dict[str, Any], until: float) -> None:
        with self._cursor(tx=True) as cur:
            cur.execute(self.sql.delete_done, (job_id,))
            cur.execute(self.sql.insert_done, (job_id, json.dumps(info), until))

    def done_job(self, job_id: str) -> dict[str, Any] | None:
        with self._cursor() as cur:
            cur.execute(self.sql.done, (job_id, time.time()))
            row = cur.fetchone()
        return json.loads(row[0]) if row else None

    def prune_done(self, before: float) -> int:
        with self._cursor("renew") as cur:      # the heart's connection
            cur.execute(self.sql.prune_done, (before,))
            return int(cur.rowcount)

    # -- locks (farm/locks.py: unique jobs and middleware) ------------------------------------
    def incr(self, name: str, by: int, ttl: float) -> tuple[int, float]:
        """Add `by` to the counter `name` in one upsert (a missing or expired one starts from 0
        and expires at now + ttl); its value and expiry. Expired counters are pruned hourly."""
        now = time.time()
        if now >= self._locks_pruned:
            self._locks_pruned = now + 3600
            with self._cursor() as cur:
                cur.execute(self.sql.prune_locks, (now - 60,))
        params = (name, by, now + ttl, now, now)
        if self.dialect == "mysql":
            for attempt in range(3):        # InnoDB may pick racing upserts of one key as a deadlock
                try:
                    with self._cursor(tx=True) as cur:
                        cur.execute(self.sql.incr, params)
                        cur.execute(self.sql.incr_read, (name,))
                        row = cur.fetchone()
                    break
                except FarmError as e:
                    if attempt == 2 or "deadlock" not in str(e).lower():
                        raise
        else:
            with self._cursor() as cur:
                cur.execute(self.sql.incr, params)
                row = cur.fetchone()
        return int(row[0]), float(row[1])

    def drop(self, name: str, expires: float | None = None) -> bool:
        """Delete the counter; with `expires`, only while it still has that expiry (its holder's)."""
        with self._cursor() as cur:
            if expires is None:
                cur.execute(self.sql.drop_lock, (name,))
            else:
                cur.execute(self.sql.drop_held, (name, expires))
            return cur.rowcount == 1


def ddl(conn: Connection) -> str:
    """The CREATE statements for a connection's tables (and PostgreSQL's wake-up trigger),
    compiled for its dialect without opening, or creating, anything."""
    from sqlalchemy.dialects import mysql, postgresql, sqlite
    from sqlalchemy.schema import CreateIndex, CreateTable

    try:
        name = dbapi.dialect_of(conn.url or DEFAULT_URL)
    except FarmError as e:
        raise FarmError(f"connection {conn.name!r}: {e}") from None
    dialect = {"sqlite": sqlite.dialect, "postgresql": postgresql.psycopg.dialect,
               "mysql": mysql.pymysql.dialect}[name]()
    md, *_ = sql.tables(conn.table, conn.failed_table, name)
    out = []
    for table in md.sorted_tables:
        out.append(str(CreateTable(table).compile(dialect=dialect)).strip() + ";")
        out.extend(str(CreateIndex(ix).compile(dialect=dialect)).strip() + ";" for ix in table.indexes)
    if name == "postgresql":
        out.append(sql.PG_NOTIFY.format(t=conn.table).strip())
    return "\n\n".join(out) + "\n"


def waiting_state(queue: str, body: str, attempts: int, available_at: float, token: str | None,
                  now: float) -> dict[str, Any]:
    """A stored job's state as `farm.job_status` tells it: a lapsed reservation is ready again."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = {}
    name = doc.get("job") if isinstance(doc, dict) else None
    if token is not None and available_at > now:
        state = "reserved"
    else:
        state, token = ("delayed" if available_at > now else "ready"), None
    return {"queue": queue, "state": state, "attempts": attempts, "job": name, "token": token,
            "available_at": available_at}


def _is_disconnect(e: BaseException, dialect: str) -> bool:
    text = str(e).lower()
    if dialect == "sqlite":   # busy past the timeout, or the file is gone: retry later
        return any(w in text for w in ("locked", "busy", "unable to open", "disk i/o"))
    if dialect == "mysql":
        code = e.args[0] if e.args and isinstance(e.args[0], int) else 0
        return code in (2003, 2006, 2013, 2055, 1927, 1053) or "connect" in text
    # psycopg: no SQLSTATE (the client lost the socket), class 08 (connection exception), the
    # server shutting down or full; a deadlock or a statement timeout is not a disconnect
    state = getattr(e, "sqlstate", None)
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03", "53300")


def _is_refused(e: BaseException | None) -> bool:
    text = str(e).lower()
    return "refused" in text or "could not connect" in text or "can't connect" in text


def _utf8(raw: bytes) -> str | bytes:
    """SQLite's payload as text; bytes that are not UTF-8 stay bytes (the worker fails the job)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def _rollback_quietly(cur: Any) -> None:
    try:
        cur.execute("ROLLBACK")
    except Exception:
        pass


def _settle(acks: pgacks.PipelinedAcks) -> None:
    acks.settle()


def _poll(acks: pgacks.PipelinedAcks) -> None:
    acks.poll()


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:
        pass


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
