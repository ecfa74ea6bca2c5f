"""Issue 14: a job's options are honoured where users set them: on the class (read at every
dispatch), on the instance in `__init__`, or at dispatch time, in that order of precedence."""
from __future__ import annotations

import json
import time

import pytest

import farm
from hourjobs import Plain, Urgent

OTHER = "  other: {driver: database, url: 'sqlite:///%s/other.db', table: other_jobs}\n"


@pytest.fixture
def f(make_farm, tmp_path):
    f = make_farm("sqlite", extra="")
    f.manifest.write_text(f.manifest.read_text().replace("imports: [testjobs]", "imports: [testjobs, hourjobs]")
                          .replace("connections:\n", "connections:\n" + OTHER % tmp_path, 1))
    farm.configure(f.manifest)
    return f


def stored(f, queue: str, connection: str = "main") -> dict:
    """The one ready document of `queue`, reserved and given back."""
    q = farm.app.queue(connection)
    (r,) = q.reserve([queue], 10, 0)
    q.give_back([r])
    return json.loads(r.body)


def test_issue_14_a_class_option_changed_at_run_time_takes_effect_at_the_next_dispatch(f, monkeypatch):
    # Given a job class dispatched once with its class options
    farm.dispatch(Plain(1))
    assert stored(f, "mail")["tries"] is None
    # When a test changes its class attributes (as monkeypatch does)
    monkeypatch.setattr(Plain, "queue", "patched")
    monkeypatch.setattr(Plain, "tries", 4)
    monkeypatch.setattr(Plain, "timeout", 9)
    farm.dispatch(Plain(2))
    # Then the next dispatch uses them: the first dispatch froze nothing
    doc = stored(f, "patched")
    assert (doc["data"], doc["tries"], doc["timeout"]) == ({"n": 2}, 4, 9)


def test_issue_14_options_set_on_the_instance_in_init_are_honoured_not_dropped(f):
    # Given a job whose constructor sets every option on the instance
    job = Urgent(str(f.out), urgent=True, tries=5, timeout=7, backoff=[2, 4], max_exceptions=3, delay=60,
                 connection="other")
    # When it is dispatched
    jid = farm.dispatch(job)
    # Then it went to the instance's connection and queue, delayed by the instance's delay
    assert farm.app.queue("other").counts()["high"] == {"ready": 0, "delayed": 1, "reserved": 0, "failed": 0}
    assert "high" not in farm.app.queue("main").counts()
    # and its document carries the instance's options, which are not payload
    farm.app.queue("other").clear("high")
    farm.dispatch(Urgent(str(f.out), urgent=True, tries=5, timeout=7, backoff=[2, 4], max_exceptions=3,
                         connection="other"))
    doc = stored(f, "high", "other")
    assert doc["data"] == {"path": str(f.out)}
    assert (doc["queue"], doc["tries"], doc["timeout"], doc["backoff"], doc["max_exceptions"]) == \
        ("high", 5, 7, [2, 4], 3)
    assert jid


def test_issue_14_dispatch_time_beats_the_instance_which_beats_the_class(f):
    # Given the class's tries (1), the instance's (5) and a dispatch-time value (7)
    farm.dispatch(Urgent(str(f.out)), queue="a")
    farm.dispatch(Urgent(str(f.out), tries=5), queue="b")
    farm.dispatch(Urgent(str(f.out), tries=5, queue="ignored"), queue="c", tries=7)
    # Then each document has the winner
    assert [stored(f, q)["tries"] for q in ("a", "b", "c")] == [1, 5, 7]
    # and the instance's queue beats the class's, a dispatch-time queue beats both
    farm.dispatch(Urgent(str(f.out), urgent=True))
    assert stored(f, "high")["queue"] == "high"


def test_issue_14_an_instance_option_a_worker_could_not_use_is_refused_with_its_name(f):
    # A wrong type or an unknown connection is refused at dispatch, nothing written
    with pytest.raises(farm.SerializationError, match="queue"):
        farm.dispatch(Urgent(str(f.out), queue=5))
    with pytest.raises(farm.SerializationError, match="tries"):
        farm.dispatch(Urgent(str(f.out), tries=-1))
    with pytest.raises(farm.FarmError, match="nope"):
        farm.dispatch(Urgent(str(f.out), connection="nope"))
    with pytest.raises(farm.FarmError, match="delay"):
        farm.dispatch(Urgent(str(f.out), delay="soon"))
    assert farm.app.queue("main").counts() == {}


def test_issue_14_dispatch_many_honours_instance_options_and_returns_ids_in_order(f):
    # Given jobs for two connections, interleaved
    jobs = [Urgent(str(f.out), connection="other" if n % 2 else None, queue=f"q{n}") for n in range(4)]
    # When they are dispatched together
    ids = farm.dispatch_many(jobs)
    # Then the ids come back in the order of the jobs, each stored where its instance said
    assert [stored(f, f"q{n}", "other" if n % 2 else "main")["id"] for n in range(4)] == ids


def test_issue_14_dispatch_many_stores_a_chunk_per_round_trip(f, monkeypatch):
    # Given a connection that records every push
    q = farm.app.queue("main")
    sizes: list[int] = []
    push = q.push
    monkeypatch.setattr(q, "push", lambda items: (sizes.append(len(items)), push(items))[1])
    # When 2,500 jobs are dispatched at once
    started = time.monotonic()
    ids = farm.dispatch_many([Plain(n) for n in range(2500)])
    # Then they went in chunks of 1,000, all stored
    assert sizes == [1000, 1000, 500]
    assert len(set(ids)) == 2500 and q.counts()["mail"]["ready"] == 2500
    assert time.monotonic() - started < 10


def test_issue_14_a_chunk_that_fails_says_which_jobs_were_stored(f, monkeypatch):
    q = farm.app.queue("main")
    push = q.push
    calls = []

    def flaky(items):
        calls.append(len(items))
        if len(calls) == 2:
            raise farm.DriverUnavailable("gone")
        push(items)

    monkeypatch.setattr(q, "push", flaky)
    with pytest.raises(farm.DriverUnavailable) as e:
        farm.dispatch_many([Plain(n) for n in range(1500)])
    assert len(e.value.stored) == 1000 and q.counts()["mail"]["ready"] == 1000


def test_issue_14_new_ids_are_version_4_uuids():
    import uuid

    from farm.dispatch import new_id

    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)
