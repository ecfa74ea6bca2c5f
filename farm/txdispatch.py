"""Transactional dispatch: `farm.dispatch(job, after_commit=conn)` with an SQLAlchemy
`Connection` or `Session`.

On a database connection the job row is inserted on the caller's connection, inside the
caller's transaction: rolled back, it was never queued; committed, it runs (PostgreSQL's
NOTIFY trigger fires with the commit). Any other driver (amqp, redis) publishes the job
when the transaction commits; a crash between that commit and the publish loses the job
(the documented gap: there is no outbox table).
"""
from __future__ import annotations

import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

from . import app
from .drivers.base import Outgoing
from .errors import FarmError

_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
Hook = Callable[[], None]
# per Connection or Session: what waits on its transaction's outcome, as (on commit, on rollback)
_pending: "weakref.WeakKeyDictionary[Any, list[tuple[Hook | None, Hook | None]]]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def enqueue(target: Any, out: Outgoing, connection: str | None, job: Any = None,
            unique_for: float | None = None) -> str | None:
    """Write (database) or schedule the publish of (other drivers) `out` on `target`'s
    transaction; its id, or None when `unique_for` is set and another copy holds the lock."""
    from . import unique

    conn = app.manifest().connection(connection)
    sa_conn, session = _sqlalchemy(target, conn.name)
    if conn.driver != "database":
        app.queue(conn.name)            # a connection that cannot open fails now, not at the commit
        taken = None
        if unique_for is not None:      # the store's lock now; freed if the transaction rolls back
            taken = unique.take(job, out, conn.name, unique_for)
            if taken is None:
                return None
            out = taken.out
        when_settled(target if session is None else session,
                     committed=_logged(lambda: app.queue(conn.name).push([out]), out, taken),
                     rolled_back=taken.give_up if taken is not None else None)
        return out.id
    queue = app.queue(conn.name)
    bind = session.get_bind() if session is not None else sa_conn
    _same_database(bind.engine.url, queue.target, conn.name)
    if session is not None:
        sa_conn = session.connection()      # joins (or begins) the session's transaction
    try:
        if unique_for is not None:      # the lock too is written in the caller's transaction
            taken = unique.take(job, out, conn.name, unique_for, store=_InTransaction(sa_conn, queue))
            if taken is None:
                return None
            out = taken.out
        sa_conn.exec_driver_sql(queue.sql.insert, (out.id, out.queue, out.body, out.attempts, out.available_at,
                                                   time.time()))
    except Exception as e:
        import sqlalchemy as sa

        if isinstance(e, sa.exc.SQLAlchemyError):
            first = str(getattr(e, "orig", None) or e).strip().splitlines()
            raise FarmError(f"connection {conn.name!r}: after_commit: the job was not written: "
                            f"{first[0] if first else type(e).__name__}") from e
        raise
    return out.id


class _InTransaction:
    """A database connection's lock counters written on the caller's connection, inside its
    transaction: a rollback takes the unique lock back with the job, and SQLite's one writer
    (the caller, already) is not waited for by a second connection."""

    def __init__(self, sa_conn: Any, queue: Any) -> None:
        self.sa_conn, self.queue = sa_conn, queue

    def incr(self, name: str, by: int, ttl: float) -> tuple[int, float]:
        now = time.time()
        found = self.sa_conn.exec_driver_sql(self.queue.sql.incr, (name, by, now + ttl, now, now))
        if self.queue.dialect == "mysql":
            found = self.sa_conn.exec_driver_sql(self.queue.sql.incr_read, (name,))
        n, expires = found.fetchone()
        return int(n), float(expires)

    def drop(self, name: str, expires: float | None = None) -> bool:
        return self.queue.drop(name, expires)


def _sqlalchemy(target: Any, name: str) -> tuple[Any, Any]:
    """(the Connection, None) or (None, the Session); FarmError for anything else."""
    try:
        import sqlalchemy as sa
        from sqlalchemy.orm import Session
    except ImportError:                 # pragma: no cover - SQLAlchemy is a dependency
        raise FarmError("after_commit needs SQLAlchemy") from None
    if isinstance(target, Session):
        return None, target
    if isinstance(target, sa.engine.Connection):
        return target, None
    raise FarmError(f"dispatch(after_commit=...) for connection {name!r} takes an SQLAlchemy Connection or "
                    f"Session, got {type(target).__name__}")


def _same_database(url: Any, target: Any, name: str) -> None:
    """The SQLAlchemy URL names the database of the job's connection, or FarmError says how not."""
    backend = url.get_backend_name()
    backend = "mysql" if backend == "mariadb" else backend
    want = target.dialect
    theirs: tuple[Any, ...]
    ours: tuple[Any, ...]
    if backend != want:
        raise FarmError(f"after_commit: the connection is on {backend}, but connection {name!r} is on {want}: "
                        "the job must be written on the same database")
    if want == "sqlite":
        theirs, ours = (_path(url.database),), (_path(target.kwargs.get("database")),)
    else:
        kw = target.kwargs
        theirs = (_host(url.host), url.port or _DEFAULT_PORTS[want], url.database)
        ours = (_host(kw.get("host")), int(kw.get("port") or _DEFAULT_PORTS[want]),
                kw.get("dbname" if want == "postgresql" else "database"))
    if theirs != ours:
        raise FarmError(f"after_commit: the connection is to a different database than connection {name!r} "
                        f"({_show(theirs)} is not {_show(ours)}): the job must be written on the same database")


def _path(database: str | None) -> str:
    if not database or database == ":memory:":
        return ":memory:"
    return str(Path(database).resolve())


def _host(host: str | None) -> str:
    host = (host or "localhost").lower()
    return "127.0.0.1" if host in ("localhost", "::1") else host


def _show(parts: tuple[Any, ...]) -> str:
    return "/".join(str(p) for p in parts if p is not None)


def when_settled(target: Any, committed: Hook | None = None, rolled_back: Hook | None = None) -> None:
    """Call `committed` once `target`'s transaction has committed, or `rolled_back` once it has
    rolled back (or a Session closed it away): the publish of a job (amqp, redis) and the
    release of a unique lock taken for a job written in the transaction (farm/unique.py)."""
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    # the job belongs to a transaction, so one is begun now (as a statement would begin it):
    # a rollback or commit of no transaction would fire no event and leave the job waiting
    if isinstance(target, Session):
        target.connection()
    elif not target.in_transaction():
        target.begin()
    if target.in_nested_transaction():  # a SAVEPOINT's outcome is not the transaction's
        raise FarmError("dispatch(after_commit=...) inside a SAVEPOINT (begin_nested) is refused for this "
                        "job: it would be published, or its unique lock kept, by the savepoint's outcome; "
                        "dispatch it outside the nested transaction")
    with _lock:
        pending = _pending.get(target)
        if pending is None:
            pending = _pending[target] = []
            if isinstance(target, Session):
                sa.event.listen(target, "after_commit", _committed)
                sa.event.listen(target, "after_transaction_end", _ended)
            else:
                sa.event.listen(target, "commit", _committing)
                sa.event.listen(target, "rollback", _rolling_back)
        pending.append((committed, rolled_back))


def _take(target: Any) -> list[tuple[Hook | None, Hook | None]]:
    with _lock:
        found = _pending.get(target) or []
        if found:
            _pending[target] = []
        return found


def _committed(session: Any) -> None:
    """Session `after_commit`: the data is committed; publish what waited for it."""
    for hook, _ in _take(session):
        if hook is not None:
            hook()


def _ended(session: Any, transaction: Any) -> None:
    """Session `after_transaction_end` (after `after_commit` on a commit): the outermost
    transaction ended, so what still waits was rolled back or closed away."""
    if transaction.parent is None:
        for _, hook in _take(session):
            if hook is not None:
                hook()


def _committing(conn: Any) -> None:
    """Connection `commit` runs just before the DBAPI commit and has no after-commit twin, so
    the commit is made here, then the jobs are published (SQLAlchemy's own commit that
    follows finds nothing left to commit)."""
    _settle_first(conn, 0, conn.engine.dialect.do_commit)


def _rolling_back(conn: Any) -> None:
    """Connection `rollback` runs before the DBAPI rollback: that is made here first, so the
    job row's write lock (SQLite: the whole database's) is gone when a unique lock is dropped
    (SQLAlchemy's own rollback that follows finds nothing left to undo)."""
    _settle_first(conn, 1, conn.engine.dialect.do_rollback)


def _settle_first(conn: Any, side: int, finish: Callable[[Any], None]) -> None:
    """Take what waits on `conn` (side 0: on commit, 1: on rollback); if any of it is for this
    outcome, end the transaction with `finish` first, then call it."""
    hooks = [pair[side] for pair in _take(conn) if pair[side] is not None]
    if not hooks:
        return
    finish(conn.connection)
    for hook in hooks:
        hook()


def _logged(publish: Hook, out: Outgoing, taken: Any = None) -> Hook:
    """A publish whose failure, after the caller's commit, is logged as the job lost (and
    frees its unique lock, so a dispatch again is not refused); the sync driver has run the
    job by the time its publish returns, so its lock goes then."""
    def run() -> None:
        try:
            publish()
            if taken is not None and taken.sync:
                taken.give_up()
        except Exception as e:
            if taken is not None:
                taken.give_up()
            from .log import Log

            first = str(e).strip().splitlines()
            Log().error("job.lost", id=out.id, queue=out.queue,
                        error=f"{type(e).__name__}: {first[0] if first else ''}",
                        detail="after_commit: the transaction committed but the job could not be published")
    return run
