"""Issue 15: `farm.dispatch(job, after_commit=conn)`: the job joins the caller's transaction.

On a database connection the row is written in that transaction (rolled back: never queued);
on RabbitMQ and Redis the job is published when it commits. Each test has a real worker
running while the transactions commit and roll back.
"""
from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import farm
from conftest import DB_BACKENDS, Farm

TAGS = ["first", "connection committed", "session committed", "last"]


def dispatch_in_transactions(f: Farm, engine: sa.Engine) -> None:
    """A job in each of: a Connection transaction rolled back, one committed, a Session rolled
    back (and one closed without a commit), one committed."""
    import testjobs

    def job(tag: str) -> farm.Job:
        return testjobs.Record(str(f.out), tag)

    with engine.connect() as conn:
        tx = conn.begin()
        farm.dispatch(job("connection rolled back"), after_commit=conn)
        tx.rollback()
        with conn.begin():
            farm.dispatch(job("connection committed"), after_commit=conn)
    with Session(engine) as s:
        farm.dispatch(job("session rolled back"), after_commit=s)
        s.rollback()
        farm.dispatch(job("session committed"), after_commit=s)
        s.commit()
    with Session(engine) as s:
        farm.dispatch(job("session closed"), after_commit=s)


def run_around(f: Farm, engine: sa.Engine) -> None:
    import testjobs

    # Given a running worker that has taken a first job (so it is up and idle)
    f.worker()
    farm.dispatch(testjobs.Record(str(f.out), "first"))
    f.wait_for(lambda: len(f.lines()) == 1, timeout=15, what="the first job")

    # When jobs are dispatched in transactions that roll back and that commit
    dispatch_in_transactions(f, engine)

    # Then the committed ones run, within seconds, and after a last job nothing else has run
    f.wait_for(lambda: len(f.lines()) == 3, timeout=10, what="the two committed jobs")
    farm.dispatch(testjobs.Record(str(f.out), "last"))
    f.wait_for(lambda: len(f.lines()) >= 4, timeout=10, what="the last job")
    assert sorted(line.rsplit(" ", 2)[0] for line in f.lines()) == sorted(TAGS)
    assert sum(c.get("ready", 0) + c.get("delayed", 0) for c in f.queue().counts().values()) == 0


@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_a_job_dispatched_after_commit_is_written_in_the_callers_transaction(make_farm, backend):
    f = make_farm(backend)
    engine = sa.create_engine(f.app.connection("main").url, poolclass=sa.pool.NullPool)
    try:
        run_around(f, engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["amqp", "redis"])
def test_a_job_dispatched_after_commit_is_published_when_the_transaction_commits(make_farm, backend):
    f = make_farm(backend)
    engine = sa.create_engine(f"sqlite:///{f.tmp}/app.db", poolclass=sa.pool.NullPool)
    try:
        run_around(f, engine)
    finally:
        engine.dispose()


def test_after_commit_refuses_another_database_and_what_is_not_a_sqlalchemy_connection(make_farm):
    # Given a farm on one SQLite file and an application engine on another
    f = make_farm("sqlite")
    import testjobs

    other = sa.create_engine(f"sqlite:///{f.tmp}/other.db", poolclass=sa.pool.NullPool)

    # When a job is dispatched on a connection to the other database, or on something else
    # Then each is a clear error and nothing is queued
    with other.connect() as conn, pytest.raises(farm.FarmError, match="different database than connection 'main'"):
        farm.dispatch(testjobs.Record(str(f.out), "x"), after_commit=conn)
    with pytest.raises(farm.FarmError, match="takes an SQLAlchemy Connection or Session, got str"):
        farm.dispatch(testjobs.Record(str(f.out), "x"), after_commit="conn")
    assert f.queue().counts() == {}
    other.dispose()


def test_on_postgresql_the_notify_that_wakes_workers_goes_out_with_the_commit(make_farm):
    # Given a listener on the channel PostgreSQL workers wait on (a worker's claim loop also
    # polls every second, so this listens itself rather than timing a worker)
    import psycopg

    import testjobs
    from conftest import pg_conninfo

    f = make_farm("postgresql")
    table = f.app.connection("main").table
    f.queue()                                   # the table and its NOTIFY trigger exist
    listener = psycopg.connect(pg_conninfo(), autocommit=True)
    listener.execute(f'LISTEN "{table}"')
    engine = sa.create_engine(f.app.connection("main").url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            tx = conn.begin()
            # When a job is dispatched in the transaction, not yet committed
            farm.dispatch(testjobs.Record(str(f.out), "x"), after_commit=conn)
            # Then no worker has been told
            assert list(listener.notifies(timeout=0.3, stop_after=1)) == []
            # When it commits
            tx.commit()
        # Then the notification arrives
        assert [n.channel for n in listener.notifies(timeout=5, stop_after=1)] == [table]
    finally:
        listener.close()
        engine.dispose()
