"""A push whose connection dropped: find out whether it landed, store it if not, once.

A connection cut while a dispatch's commit is on the wire leaves the producer not knowing
whether the job is stored: the server may have committed and lost only its reply. Raising
then made callers dispatch again (a job twice) or give up on a job that runs. Instead the
driver reconnects, makes sure the old session can no longer commit (it is terminated and
waited for: PostgreSQL `pg_terminate_backend`, MariaDB `KILL`), and looks the ids up: a
push is one transaction, so one id found (in the jobs, failed or done table) means all of
them landed. Found: done. Not found: pushed again on the new connection, and that push is
checked the same way if it too loses its connection. This goes on for `push_retry` seconds
(FARM_DISPATCH_RETRY_SECONDS, 10 by default); then DriverUnavailable says the outcome is
unknown, naming the ids.

A job whose first commit landed and which a worker claimed, ran and acked (deleting its row)
before the look-up would not be found there: so the claim of a job created less than T seconds
ago (T = push_retry + CLOCK_SLACK: the producer's and the worker's clocks may differ) also
writes `claimed:<uuid>` into the locks table, expiring T seconds later, in the claim's own
statement or transaction (one per claimed batch, sql.py), and the look-up finds that trace: a
job claimed had landed. Written at the claim, not the ack: one statement per batch rather than
one more per job. Expired traces are pruned by each claiming worker every T seconds. With
push_retry 0 nothing is written.

The look-up scans the jobs table for the uuids (there is no index on uuid: it would cost
every job's insert and delete); it runs only after a cut.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import DriverUnavailable
from ..knobs import seconds_from_env
from .base import Outgoing

if TYPE_CHECKING:
    from .database import DatabaseQueue

DEFAULT_SECONDS = 10.0
GONE_WAIT = 5.0         # seconds to wait for a terminated session to be gone
CLOCK_SLACK = 60.0      # seconds a producer's clock (jobs' created_at) may differ from a worker's


def retry_seconds() -> float:
    """How long a push whose connection dropped keeps trying: $FARM_DISPATCH_RETRY_SECONDS,
    else 10 s (0: never, the first error is raised as it was)."""
    return seconds_from_env("FARM_DISPATCH_RETRY_SECONDS", DEFAULT_SECONDS, zero=True)


def session_of(conn: Any, dialect: str) -> int | None:
    """The server's id of this connection's session (no round trip)."""
    try:
        if dialect == "postgresql":
            return int(conn.info.backend_pid)
        if dialect == "mysql":
            return int(conn.thread_id())
    except Exception:
        return None
    return None


def push_again(q: "DatabaseQueue", items: Sequence[Outgoing], session: int | None,
               first: DriverUnavailable, started: float | None = None) -> None:
    """After a push lost its connection (`session`: the server session it was sent on, None
    if it never got one; `started`: when it was first sent, monotonic): return once the items
    are stored, once; raise DriverUnavailable naming them if the database stays away for
    q.push_retry seconds. Never pushed again more than q.push_retry seconds after it was first
    sent: a reply that hung that long (a black-holed connection) may belong to a job that ran
    and whose claim's trace has expired since, so only a look-up is safe then."""
    deadline = time.monotonic() + q.push_retry
    resend_by = (started if started is not None else time.monotonic()) + q.push_retry
    sent = session is not None
    error: DriverUnavailable = first
    pause = 0.02
    while time.monotonic() < deadline:
        try:
            if session is not None:
                _finish(q, session)
            if sent and _landed(q, items):
                return
            if sent and time.monotonic() > resend_by:
                break                   # not found, but too late to push it again safely
            session = q.durable_session()
            sent = True
            q.insert(items)
            return
        except DriverUnavailable as e:
            error = e
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 1.0)
    raise _unknown(q, items, error, sent)


def _finish(q: "DatabaseQueue", session: int) -> None:
    """Make sure the old session can no longer commit: terminate it and wait until it is gone.
    Only a session that is ours by its label (PostgreSQL: this queue's application_name, its pid
    and a random token) or user (MariaDB): behind a pooler the id may name someone else's session.
    One that outlives GONE_WAIT raises DriverUnavailable: pushing again could store it twice."""
    mine, kill = _MINE[q.dialect], _KILL[q.dialect]
    with q._cursor() as cur:
        cur.execute(mine, (session,))
        if cur.fetchone() is None:
            return                  # gone already (or not ours to end)
        try:
            cur.execute(kill, (session,))
        except Exception:           # gone meanwhile, or not allowed: it ends when it sees its socket
            pass                    # closed (a new connection that dropped fails the probe below)
        end = time.monotonic() + GONE_WAIT
        while time.monotonic() < end:
            cur.execute(mine, (session,))
            if cur.fetchone() is None:
                return
            time.sleep(0.01)
    # still there: it might yet commit, so nothing may be pushed again (the caller tries again,
    # and in the end says the outcome is unknown)
    raise DriverUnavailable(f"connection {q.name!r}: the old session {session} was still there "
                            f"{GONE_WAIT:g}s after it was ended")


_MINE = {   # the old session, if it is still there and ours (by its label or user)
    "postgresql": ("SELECT pid FROM pg_stat_activity WHERE pid = %s AND pid <> pg_backend_pid() "
                   "AND application_name = current_setting('application_name')"),
    "mysql": ("SELECT ID FROM information_schema.PROCESSLIST WHERE ID = %s AND ID <> CONNECTION_ID() "
              "AND USER = SUBSTRING_INDEX(USER(), '@', 1)"),
}
_KILL = {"postgresql": "SELECT pg_terminate_backend(%s)", "mysql": "KILL CONNECTION %s"}


def _landed(q: "DatabaseQueue", items: Sequence[Outgoing]) -> bool:
    """Whether the push landed: one of its ids in the jobs table, a claimed job's trace in the
    locks table, the failed table or the done table (the push was one transaction: one is all)."""
    ids = [o.id for o in items]
    marks = ", ".join(["%s"] * len(ids))
    t = q.config.table
    tables = [(t, "uuid", ids), (f"{t}_locks", "name", ["claimed:" + i for i in ids]), (f"{t}_done", "id", ids)]
    if q.keeps_failed:
        tables.append((q.config.failed_table, "id", ids))
    with q._cursor() as cur:
        for table, column, keys in tables:
            cur.execute(f"SELECT 1 FROM {table} WHERE {column} IN ({marks}) LIMIT 1", keys)
            if cur.fetchone() is not None:
                return True
    return False


def _unknown(q: "DatabaseQueue", items: Sequence[Outgoing], error: DriverUnavailable,
             sent: bool) -> DriverUnavailable:
    first = items[0].id
    what = f"job {first}" if len(items) == 1 else f"jobs {first} and {len(items) - 1} more"
    fate = "may or may not be stored" if sent else "not stored"
    cause = str(error)
    prefix = f"connection {q.name!r}: "
    if cause.startswith(prefix):
        cause = cause[len(prefix):]
    out = DriverUnavailable(f"connection {q.name!r}: {what} {fate} (the database stayed unreachable "
                            f"for {q.push_retry:g}s: {cause})")
    out.__cause__ = error
    out.unknown = [o.id for o in items] if sent else []        # type: ignore[attr-defined]
    return out
