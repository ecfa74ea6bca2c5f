"""Issue 15: `encrypted = True` jobs: data sealed with Fernet and $FARM_KEY, nowhere in plain text.

Each test reads what is really stored (the jobs table's row, the RabbitMQ message), what
`farmctl failed show` prints and the worker's log, and looks for the secret in each.
"""
from __future__ import annotations

import hashlib
import json
import uuid

import pytest

import farm
from conftest import Farm
from test_events_and_retries import drain, with_misc


def fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def raw_bodies(f: Farm) -> list[str]:
    """The job documents exactly as the backend holds them, left where they are."""
    conn = f.app.connection("main")
    if conn.driver == "amqp":
        import pika

        bodies = []
        connection = pika.BlockingConnection(pika.URLParameters(conn.url))
        try:
            ch = connection.channel()
            while True:
                method, _, body = ch.basic_get("default", auto_ack=False)
                if method is None:
                    break
                bodies.append(body.decode())
        finally:
            connection.close()            # unacked: every message goes back on the queue
        return bodies
    with f.queue()._cursor() as cur:
        cur.execute(f"SELECT payload FROM {conn.table}")
        return [r[0].decode() if isinstance(r[0], bytes) else r[0] for r in cur.fetchall()]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql", "amqp"])
def test_an_encrypted_jobs_data_is_in_no_stored_row_message_failed_entry_or_log(make_farm, backend, monkeypatch):
    # Given FARM_KEY and two encrypted jobs carrying a secret, one of which fails
    monkeypatch.setenv("FARM_KEY", fernet_key())
    f = with_misc(make_farm(backend))
    import miscjobs

    secret = f"hunter2-{uuid.uuid4().hex}"
    farm.dispatch(miscjobs.Secret(str(f.out), secret))
    bad = farm.dispatch(miscjobs.Secret(str(f.out), secret, fail=True))

    # When the stored documents are read raw
    bodies = raw_bodies(f)

    # Then only `data` is sealed: the secret is absent, the rest of the document readable
    assert len(bodies) == 2
    for body in bodies:
        assert secret not in body
        doc = json.loads(body)
        assert doc["job"] == "miscjobs:Secret" and doc["queue"] == "default"
        assert list(doc["data"]) == ["$encrypted"] and isinstance(doc["data"]["$encrypted"], str)

    # When a worker runs them (it holds the key)
    err = drain(f)

    # Then both ran with the secret decrypted, and neither the log nor `failed show` holds it
    assert f.lines() == [f"ran {digest(secret)}"] * 2
    assert secret not in err and "job.failed" in err
    for args in (("failed", "show", bad), ("failed", "show", bad, "--json")):
        out = f.farmctl(*args, check=True).stdout
        assert secret not in out
        assert "$encrypted" in out          # the document is shown, its data sealed
    assert secret not in f.farmctl("failed", "--json", check=True).stdout


def test_a_worker_without_the_right_key_fails_the_job_naming_farm_key_and_goes_on(make_farm, monkeypatch):
    # Given an encrypted job sealed with an old key, then a plain job
    old, new = fernet_key(), fernet_key()
    monkeypatch.setenv("FARM_KEY", old)
    f = with_misc(make_farm("sqlite"))
    import miscjobs
    import testjobs

    sealed = farm.dispatch(miscjobs.Secret(str(f.out), "s1"))
    farm.dispatch(testjobs.Record(str(f.out), "plain"))

    # When a worker that only has the new key runs them
    monkeypatch.setenv("FARM_KEY", new)
    drain(f)

    # Then the encrypted job failed with a reason naming FARM_KEY, and the plain job still ran
    (entry,) = f.store().failed()
    assert entry.id == sealed and "FARM_KEY" in entry.exception.splitlines()[0]
    assert [line.split()[0] for line in f.lines()] == ["plain"]

    # When the keys are rotated (the new first, the old still there) and the job is retried
    monkeypatch.setenv("FARM_KEY", f"{new},{old}")
    f.farmctl("retry", sealed, check=True)
    drain(f)

    # Then the old key opened it
    assert f.lines()[-1] == f"ran {digest('s1')}" and f.store().failed() == []


def test_dispatching_an_encrypted_job_without_farm_key_is_refused_and_writes_nothing(make_farm, monkeypatch):
    # Given no FARM_KEY
    monkeypatch.delenv("FARM_KEY", raising=False)
    f = with_misc(make_farm("sqlite"))
    import miscjobs

    # When an encrypted job (a class, and an @farm.job function) is dispatched
    # Then it is refused with a clear error and nothing was stored
    with pytest.raises(farm.FarmError, match=r"Secret is encrypted: \$FARM_KEY is not set"):
        farm.dispatch(miscjobs.Secret(str(f.out), "s"))
    with pytest.raises(farm.FarmError, match=r"FARM_KEY is not set"):
        miscjobs.secret_function.dispatch(str(f.out), "s")
    monkeypatch.setenv("FARM_KEY", "not-a-key")
    with pytest.raises(farm.FarmError, match=r"FARM_KEY: key 1 is not a Fernet key"):
        farm.dispatch(miscjobs.Secret(str(f.out), "s"))
    assert raw_bodies(f) == []


def test_an_encrypted_function_job_is_sealed_and_runs(make_farm, monkeypatch):
    # Given FARM_KEY and an @farm.job(encrypted=True) function
    monkeypatch.setenv("FARM_KEY", fernet_key())
    f = with_misc(make_farm("sqlite"))
    import miscjobs

    # When it is dispatched and a worker runs it
    miscjobs.secret_function.dispatch(str(f.out), "open sesame")
    (body,) = raw_bodies(f)
    drain(f)

    # Then its stored data was sealed and it ran with its arguments
    assert "open sesame" not in body and list(json.loads(body)["data"]) == ["$encrypted"]
    assert f.lines() == [f"fn {digest('open sesame')}"]


def test_an_encrypted_chain_link_and_batch_callback_are_sealed_where_stored_and_in_failed_show(make_farm, monkeypatch):
    # Given FARM_KEY, a chain whose failing first link carries an encrypted second link, and a
    # batch whose `then` callback is encrypted
    monkeypatch.setenv("FARM_KEY", fernet_key())
    f = with_misc(make_farm("sqlite"))
    import miscjobs
    import testjobs

    link, callback = f"CHAINSECRET-{uuid.uuid4().hex}", f"THENSECRET-{uuid.uuid4().hex}"
    first = farm.chain([miscjobs.Secret(str(f.out), "first", fail=True), miscjobs.Secret(str(f.out), link)]).dispatch()
    bid = farm.batch([testjobs.Record(str(f.out), "member")]).then(miscjobs.Secret(str(f.out), callback)).dispatch()

    # When the stored rows and the batch record are read raw
    bodies = raw_bodies(f)
    with f.queue()._cursor() as cur:
        cur.execute(f"SELECT callbacks FROM {f.app.connection('main').table}_batches")
        (callbacks,) = [r[0] for r in cur.fetchall()]

    # Then neither secret is there in plain text
    assert len(bodies) == 2 and not any(link in b or callback in b for b in bodies)
    assert callback not in callbacks and "$encrypted" in callbacks

    # When a worker runs them (the first link fails, the batch finishes and its callback runs)
    err = drain(f)

    # Then the callback ran with its secret decrypted, and `failed show` of the failed link does
    # not print the next link's secret
    assert f"ran {digest(callback)}" in f.lines() and link not in err and callback not in err
    out = f.farmctl("failed", "show", first, "--json", check=True).stdout
    assert link not in out and '"chain"' in out
    assert farm.batch_status(bid)["finished_at"] is not None
