"""Issue #15, chains and batches: real workers on every backend (farm/chains.py, farm/batches.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

import farm
from conftest import BACKENDS, LEASE_BACKENDS, ROOT, SUPPORT
from farm.log import Log
from testjobs import Barrier, Flaky, GivesUp, Grower, Link, Record, Releaser, Timed, WhatBatch

from test_worker_lifecycle import beating, finished


class NotImported(farm.Job):
    """A job a worker refuses: this module is not under the manifest's `imports:`."""

    def handle(self) -> None:
        pass


def run_until_empty(f, *args: str) -> str:
    """One worker run to an empty queue; its log."""
    p = f.worker("--stop-when-empty", "--sleep", "0.1", *args)
    assert finished(p) == 0, p.stderr.read()
    return p.stderr.read()


def tags(f, path=None) -> list[str]:
    return [line.split()[0] for line in f.lines(path)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_chain_runs_in_order_stops_at_a_failed_link_and_retry_of_that_link_resumes_it(make_farm, backend):
    # Given a chain of three links whose second fails while its gate is closed
    f = make_farm(backend)
    gate = f.tmp / "gate"
    first = farm.chain([Link(str(f.out), "a"), Link(str(f.out), "b", gate=str(gate)),
                        Link(str(f.out), "c")]).dispatch()
    # When a worker runs what is queued
    run_until_empty(f)
    # Then the first link ran, the second finally failed and the third never ran
    assert tags(f) == ["a"]
    failed = f.store().failed()
    assert len(failed) == 1 and failed[0].id != first
    doc = json.loads(failed[0].body)
    assert doc["data"]["tag"] == "b" and [d["data"]["tag"] for d in doc["chain"]] == ["c"]
    # When the gate opens and the failed link is retried
    gate.touch()
    f.farmctl("retry", failed[0].id, check=True)
    run_until_empty(f)
    # Then the chain resumes where it stopped, each link once, in order
    assert tags(f) == ["a", "b", "c"]
    assert f.store().count_failed() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_link_finishing_twice_after_a_crash_pushes_the_next_link_once(make_farm, backend):
    # Given a chain whose first link's document a worker holds
    f = make_farm(backend)
    farm.chain([Link(str(f.out), "a"), Link(str(f.out), "b"), Link(str(f.out), "c")]).dispatch()
    (reserved,) = f.wait_for(lambda: f.queue().reserve(["default"], 1, 1), what="the first link")
    doc = json.loads(reserved.body)
    # When its success is settled twice (its worker died after pushing the next link, before
    # the ack, and the link ran again), through the hook the runner calls before each ack
    runner = SimpleNamespace(queue=f.queue(), log=Log(level="error"))
    farm.chains.succeeded(runner, doc)
    farm.chains.succeeded(runner, doc)
    f.queue().ack(reserved)
    f.queue().close()           # RabbitMQ: this process's consumer lets go of what it was sent
    run_until_empty(f)
    # Then the rest of the chain ran once
    assert tags(f) == ["b", "c"]


@pytest.mark.parametrize("backend", LEASE_BACKENDS)     # amqp: one consumer holds one link at a time
def test_a_link_run_again_after_its_next_link_was_pushed_and_reserved_pushes_nothing_and_succeeds(make_farm, backend):
    # Given a chain whose first link succeeded and pushed the second, which a worker now holds
    f = make_farm(backend)
    farm.chain([Link(str(f.out), "a"), Link(str(f.out), "b")]).dispatch()
    (first,) = f.wait_for(lambda: f.queue().reserve(["default"], 1, 1), what="the first link")
    doc = json.loads(first.body)
    runner = SimpleNamespace(queue=f.queue(), log=Log(level="error"))
    farm.chains.succeeded(runner, doc)
    (second,) = f.wait_for(lambda: f.queue().reserve(["default"], 1, 1), what="the second link")
    assert json.loads(second.body)["data"]["tag"] == "b"
    # When the first link's success is settled again (it ran again after its worker died)
    # Then nothing is pushed and nothing raises (the link is not filed as failed)
    farm.chains.succeeded(runner, doc)
    f.queue().ack(first)
    f.queue().ack(second)
    assert f.queue().reserve(["default"], 1, 1) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_callbacks_run_once_when_two_workers_finish_the_last_jobs_at_the_same_instant(make_farm, backend):
    # Given two workers taking one job at a time
    f = make_farm(backend)
    calls = f.tmp / "callbacks.txt"
    for _ in range(2):
        f.worker("--sleep", "0.05", "--prefetch", "1")
    beating(f, 2)
    for rnd, fail in enumerate([False, False, True]):
        # When a batch of two jobs that wait for each other and end together is dispatched
        barrier = str(f.tmp / f"barrier{rnd}")
        b = farm.batch([Barrier(str(f.out), f"r{rnd}j{i}", barrier, 2, fail=fail) for i in range(2)],
                       name=f"round {rnd}")
        b.then(Record(str(calls), f"then{rnd}")).catch(Record(str(calls), f"catch{rnd}"))
        b.finally_(Record(str(calls), f"finally{rnd}")).dispatch()
        f.wait_for(lambda: f"finally{rnd}" in tags(f, calls), what=f"round {rnd}'s finally callback")
        status = f.wait_for(lambda: (s := farm.batch_status(b.id))["finished_at"] and s, what="the batch finished")
        # Then the two jobs ran on different workers, and each callback that is due ran once
        ran = [line.split() for line in f.lines() if line.startswith(f"r{rnd}j")]
        assert len(ran) == 2 and ran[0][1] != ran[1][1], ran
        assert (status["total"], status["pending"], status["processed"], status["failed"]) == (2, 0, 2, 2 * fail)
    # and once the workers have stopped (settling what they ran) and what is left has run, no more ran
    for p in f.procs:
        p.terminate()
    assert [finished(p) for p in f.procs] == [0, 0]
    run_until_empty(f)
    assert sorted(tags(f, calls)) == sorted(["then0", "finally0", "then1", "finally1", "catch2", "finally2"]), \
        f.lines(calls)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_status_counts_added_and_failed_jobs_and_a_cancelled_batch_skips_its_jobs(make_farm, backend):
    # Given a batch whose first job adds two jobs to it and whose last job fails
    f = make_farm(backend)
    calls = f.tmp / "callbacks.txt"
    grown = farm.batch([Grower(str(f.out), "grower", 2), WhatBatch(str(f.out)),
                        Link(str(f.out), "doomed", gate=str(f.tmp / "never"))], name="grown") \
        .then(Record(str(calls), "then")).catch(Record(str(calls), "catch")) \
        .finally_(Record(str(calls), "finally")).dispatch()
    # and a batch cancelled before any worker ran it, and a job outside any batch
    cancelled = farm.batch([Link(str(f.out), f"skip{i}") for i in range(3)], name="cancelled") \
        .then(Record(str(calls), "then-cancelled")).finally_(Record(str(calls), "finally-cancelled")).dispatch()
    assert farm.batch_cancel(cancelled) is True
    farm.dispatch(WhatBatch(str(f.out)))
    # and a batch whose job no worker can run (its class is not in the manifest's imports:)
    unrunnable = farm.batch([NotImported()]).then(Record(str(calls), "then-unrunnable")).dispatch()
    # Then before any worker, nothing has finished
    before = farm.batch_status(grown)
    assert before["name"] == "grown" and (before["total"], before["pending"], before["progress"]) == (3, 3, 0.0)
    assert before["finished_at"] is None and before["cancelled"] is False
    assert farm.batch_status("00000000-0000-4000-8000-000000000000") is None
    assert farm.batch_cancel("00000000-0000-4000-8000-000000000000") is False
    # When a threaded worker runs everything (`self.batch.add` from a job thread)
    log = run_until_empty(f, "--concurrency", "2")
    # Then the added jobs ran and counted, the failure too, and `self.batch` named the batch
    lines = f.lines()
    assert sorted(tags(f)) == sorted(["grower", "grower-child0", "grower-child1", "batch", "batch"])
    assert f"grower batch={grown}" in lines and f"batch {grown}" in lines and "batch none" in lines
    after = farm.batch_status(grown)
    assert (after["total"], after["pending"], after["processed"], after["failed"], after["progress"]) == \
        (5, 0, 5, 1, 100.0)
    assert after["finished_at"] is not None
    # and the cancelled batch's jobs were skipped (processed, not failed), its `finally_` ran, not `then`
    gone = farm.batch_status(cancelled)
    assert gone["cancelled"] is True and (gone["processed"], gone["failed"], gone["pending"]) == (3, 0, 0)
    assert log.count("job.skipped") == 3 and not any(t.startswith("skip") for t in tags(f))
    assert sorted(tags(f, calls)) == ["catch", "finally", "finally-cancelled"]
    # and the job that could not run counted as failed: its batch finished, without `then`
    bad = farm.batch_status(unrunnable)
    assert (bad["processed"], bad["failed"]) == (1, 1) and bad["finished_at"] is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_job_finished_twice_counts_once_in_its_batch_and_a_job_not_of_the_batch_not_at_all(make_farm, backend):
    # Given a batch of two jobs, in the connection's store, and their ids as queued
    f = make_farm(backend)
    b = farm.batch([Link(str(f.out), "a"), Link(str(f.out), "b")]).dispatch()
    store = farm.batches.store_of(f.queue())
    got: list = []
    f.wait_for(lambda: got.extend(f.queue().reserve(["default"], 2, 1)) or len(got) == 2, what="both jobs")
    one, two = (r.id for r in got)
    # When one job is counted twice (run again after its worker died before its ack)
    store.batch_job_finished(b, one, False)
    again = store.batch_job_finished(b, one, False)
    # and ids that are no member of it are counted (documents that only name the batch)
    stranger = store.batch_job_finished(b, "00000000-0000-4000-8000-00000000beef", True)
    # Then the member counts once, the others not at all, and the batch finishes only with the other job
    assert (again["processed"], again["finished_at"]) == (1, None)
    assert (stranger["processed"], stranger["failed"], stranger["finished_at"]) == (1, 0, None)
    last = store.batch_job_finished(b, two, True)
    assert (last["processed"], last["failed"]) == (2, 1) and last["finished_at"] is not None
    assert store.batch_job_finished("00000000-0000-4000-8000-000000000000", "x", False) is None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "redis"])
def test_foreign_documents_naming_a_batch_do_not_count_and_a_bad_batch_or_chain_key_is_refused(make_farm, backend):
    # Given a real batch of one job that waits for its gate, with a `then` callback
    f = make_farm(backend)
    calls, gate = f.tmp / "callbacks.txt", f.tmp / "gate"
    bid = farm.batch([Link(str(f.out), "member", gate=str(gate))]).then(Record(str(calls), "then")).dispatch()
    # When two foreign documents naming that batch are pushed (and a worker runs everything)
    for tag in ("x", "y"):
        doc = {"v": 1, "job": "testjobs:Link", "data": {"path": str(f.out), "tag": tag, "gate": ""}, "batch": bid}
        f.farmctl("push", json.dumps(doc), check=True)
    # Then a batch id that is too long, or a chain that is not a list of documents, is refused
    too_long = {"v": 1, "job": "testjobs:Link", "data": {"path": str(f.out), "tag": "z"}, "batch": "b" * 37}
    for bad in (too_long, dict(too_long, batch=None), dict(too_long, batch="ok", chain=[1]),
                dict(too_long, batch="ok", chain=[{}] * 1001)):
        cp = f.farmctl("push", json.dumps(bad))
        assert cp.returncode == 2 and "Traceback" not in cp.stderr and cp.stderr.strip().count("\n") == 0, cp.stderr
    # and a document with a bad batch key is queued past farmctl's check
    from farm.drivers.base import Outgoing

    raw = dict(too_long, id="00000000-0000-4000-8000-0000000000aa", queue="default")
    f.queue().push([Outgoing(id=raw["id"], queue="default", body=json.dumps(raw), available_at=0)])
    run_until_empty(f, "--tries", "1", "--backoff", "0")
    # Then the foreign jobs ran but did not count: only the member (failed, its gate closed) did,
    # so `then` never ran
    assert sorted(tags(f)) == ["x", "y"]
    status = farm.batch_status(bid)
    assert (status["total"], status["processed"], status["failed"]) == (1, 1, 1) and not tags(f, calls)
    # and the worker failed the bad document as a bad payload, naming its batch key
    (entry,) = [e for e in f.store().failed() if e.id == raw["id"]]
    assert entry.exception.startswith("PayloadError: 'batch' must be a batch id"), entry.exception


def test_a_batch_jobs_final_failure_is_failed_with_its_hook_and_event_even_when_counting_it_raises(make_farm):
    # Given a batch whose one job always fails, and a store that refuses to count it (triggers
    # that abort every write of a batch job record)
    f = make_farm("sqlite")
    doomed = Flaky(str(f.out))
    doomed.tries = 1
    bid = farm.batch([doomed]).dispatch()
    table = f"{f.app.connection('main').table}_batch_jobs"
    with f.queue()._cursor() as cur:
        for when in ("INSERT", "UPDATE"):
            cur.execute(f"CREATE TRIGGER refuse_{when} BEFORE {when} ON {table} "
                        "BEGIN SELECT RAISE(ABORT, 'counting refused'); END")
    # When a worker runs it
    log = run_until_empty(f, "--backoff", "0")
    # Then the job failed with its own exception (not a WorkerError), its failed() hook ran,
    # and the counting error was logged
    (entry,) = f.store().failed()
    assert entry.exception.startswith("ValueError"), entry.exception.splitlines()[0]
    assert f.lines() == ["attempt 1", "failed ValueError"]
    assert "batch.count_failed" in log, log
    assert farm.batch_status(bid)["processed"] == 0


def test_a_batch_job_failed_by_the_workers_last_resort_counts_as_failed_and_its_catch_fires(make_farm):
    # Given a batch of one job, with a catch callback, reserved by this process
    f = make_farm("sqlite")
    calls = f.tmp / "callbacks.txt"
    bid = farm.batch([Link(str(f.out), "a")]).catch(Record(str(calls), "catch")).dispatch()
    (reserved,) = f.queue().reserve(["default"], 1, 60)
    # When the worker's last resort fails it (an unexpected error while settling it)
    from farm.worker.runner import Runner

    runner = SimpleNamespace(queue=f.queue(), log=Log(level="error"), current=None)
    Runner.last_resort(runner, reserved, RuntimeError("unexpected"))
    # Then it is in the failed jobs, counted as failed, and the batch's catch callback is queued
    assert [e.id for e in f.store().failed()] == [reserved.id]
    status = farm.batch_status(bid)
    assert (status["processed"], status["failed"]) == (1, 1) and status["finished_at"] is not None
    run_until_empty(f)
    assert tags(f, calls) == ["catch"]


def test_a_chain_longer_than_the_cap_is_refused_before_anything_is_written(make_farm):
    # Given a chain one job longer than allowed
    f = make_farm("sqlite")
    jobs = [Link(str(f.out), str(i)) for i in range(farm.payload.MAX_CHAIN + 2)]
    # When it is made, Then it is refused with a clear error and nothing is queued
    with pytest.raises(farm.SerializationError, match="at most 1001 jobs"):
        farm.chain(jobs).dispatch()
    assert f.queue().reserve(["default"], 1, 0) == []


def test_batch_status_cancel_and_farmctl_batches_skip_a_connection_that_is_down(make_farm):
    # Given a batch on the default connection, and a second connection whose server is down
    f = make_farm("sqlite", extra="  down:\n    driver: redis\n    url: redis://127.0.0.1:1/0\n"
                                  "    prefix: gone\n")
    bid = farm.batch([Link(str(f.out), "a")], name="here").dispatch()
    # When its status is read, it is cancelled, and the batches are listed
    # Then each answers from the connection that is up
    assert farm.batch_status(bid)["name"] == "here"
    assert farm.batch_cancel(bid) is True
    assert [b["id"] for b in farm.batches.recent_batches()] == [bid]
    cp = f.farmctl("batches", "--json")
    assert cp.returncode == 0 and [b["id"] for b in json.loads(cp.stdout)] == [bid]
    # and the CLI says on stderr which connection it skipped
    assert "connection 'down' skipped" in cp.stderr and "Traceback" not in cp.stderr
    # and asking only the connection that is down is an error (exit 1, one line)
    with pytest.raises(farm.DriverUnavailable):
        farm.batch_status(bid, connection="down")
    cp = f.farmctl("batches", "--connection", "down")
    assert cp.returncode == 1 and cp.stderr.strip().count("\n") == 0 and "Traceback" not in cp.stderr, cp.stderr


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_batch_add_made_again_by_a_rerun_of_its_job_adds_nothing_twice(make_farm, backend):
    # Given a batch of one job with a `then` callback, which this process holds as a worker would
    f = make_farm(backend)
    calls = f.tmp / "callbacks.txt"
    bid = farm.batch([Link(str(f.out), "member")]).then(Record(str(calls), "then")).dispatch()
    (member,) = f.wait_for(lambda: f.queue().reserve(["default"], 1, 1), what="the member")
    # When the job adds two jobs, and its rerun (its worker died before the ack) adds them again
    first = farm.batches.BatchRef(bid, f.queue(), member.id).add([Link(str(f.out), "x"), Link(str(f.out), "y")])
    log = Log(level="warning")
    again = farm.batches.BatchRef(bid, f.queue(), member.id, log).add([Link(str(f.out), "x"), Link(str(f.out), "y")])
    # Then redis finishes the same add (the same ids, nothing pushed twice); the others skip it
    assert len(first) == 2 and again == (first if backend == "redis" else [])
    assert farm.batch_status(bid)["total"] == 3
    farm.batches.finished(SimpleNamespace(queue=f.queue(), log=log), json.loads(member.body), member.id, False)
    f.queue().ack(member)
    run_until_empty(f)
    # and each added job ran once, the batch finished and `then` ran once
    assert sorted(tags(f)) == ["x", "y"] and tags(f, calls) == ["then"]
    assert farm.batch_status(bid)["processed"] == 3


def test_a_batch_dispatched_onto_a_queue_puts_its_callbacks_there_too(make_farm):
    # Given a batch of one job with a `then` callback, dispatched onto queue "other"
    f = make_farm("sqlite")
    calls = f.tmp / "callbacks.txt"
    farm.batch([Link(str(f.out), "a")]).then(Record(str(calls), "then")).dispatch(queue="other")
    # When a worker of that queue alone runs what is there
    run_until_empty(f, "--queue", "other")
    # Then the job and its callback both ran from it
    assert tags(f) == ["a"] and tags(f, calls) == ["then"]


def test_a_redis_callback_pushed_by_a_worker_killed_before_its_mark_is_not_pushed_again(make_farm):
    # Given a redis batch of one job with a `then` callback, whose job has finished
    f = make_farm("redis")
    calls = f.tmp / "callbacks.txt"
    bid = farm.batch([Link(str(f.out), "a")]).then(Record(str(calls), "then")).dispatch()
    (member,) = f.wait_for(lambda: f.queue().reserve(["default"], 1, 1), what="the member")
    store = farm.batches.store_of(f.queue())
    done = store.batch_job_finished(bid, member.id, False)
    f.queue().ack(member)
    # When one worker pushes the callback, and dies before its lasting mark is written (the
    # mark taken away here), and another worker sees the batch finished too
    farm.batches._fire(f.queue(), store, done, None)
    f.queue().client.hdel(f"{f.queue().prefix}:{{batch:{bid}}}", "then_at")
    farm.batches._fire(f.queue(), store, done, None)
    # Then the callback was queued once (its claim and push were one step), and its mark is set
    run_until_empty(f)
    assert tags(f, calls) == ["then"]
    assert store.batch_fired(bid, "then")


def test_farmctl_batches_lists_shows_one_refuses_an_unknown_id_and_prunes_finished_ones(make_farm):
    # Given a finished batch and an unfinished one
    f = make_farm("sqlite")
    done = farm.batch([Link(str(f.out), "a")], name="done").dispatch()
    run_until_empty(f)
    waiting = farm.batch([Link(str(f.out), "b")], name="waiting").dispatch()
    # Then `batches` lists both, as a table and as JSON
    table = f.farmctl("batches", check=True).stdout
    assert "NAME" in table and "PROGRESS" in table and done in table and "waiting" in table
    listed = json.loads(f.farmctl("batches", "--json", check=True).stdout)
    assert [b["id"] for b in listed] == [waiting, done] and listed[1]["progress"] == 100.0
    one = json.loads(f.farmctl("batches", done, "--json", check=True).stdout)
    assert one == farm.batch_status(done) and one["pending"] == 0
    # with its times in ISO 8601 UTC, as job_status and failed --json show them
    import datetime as dt

    assert one["created_at"].endswith("+00:00") and dt.datetime.fromisoformat(one["finished_at"]).tzinfo
    assert listed[0]["finished_at"] is None and "T" in listed[0]["created_at"]
    # and an unknown id is exit 1 with one line
    cp = f.farmctl("batches", "00000000-0000-4000-8000-000000000000")
    assert cp.returncode == 1 and cp.stderr.strip().count("\n") == 0 and "no batch" in cp.stderr
    # When finished batches are pruned, only the finished one goes
    assert "1 finished batch" in f.farmctl("prune-batches", "--hours", "0", check=True).stdout
    assert farm.batch_status(done) is None and farm.batch_status(waiting) is not None
    assert f.farmctl("prune-batches", "--hours", "x").returncode == 2


def test_chains_and_batches_run_inline_on_the_sync_driver(make_farm):
    # Given a sync connection, whose jobs run as they are dispatched
    f = make_farm("sync")
    calls = f.tmp / "callbacks.txt"
    # When a chain and a batch are dispatched
    farm.chain([Link(str(f.out), "a"), Link(str(f.out), "b")]).dispatch()
    b = farm.batch([Link(str(f.out), "c"), WhatBatch(str(f.out))]).then(Record(str(calls), "then")).dispatch()
    # Then they ran in order, the batch finished and its callback ran
    assert f.lines() == [f"a 1 {f.lines()[0].split()[2]}", f"b 1 {f.lines()[0].split()[2]}",
                         f"c 1 {f.lines()[0].split()[2]}", f"batch {b}"]
    assert farm.batch_status(b)["progress"] == 100.0 and tags(f, calls) == ["then"]


def test_a_sync_chain_stops_at_a_link_that_fails_or_releases_itself(make_farm):
    # Given a sync connection
    f = make_farm("sync")
    # When a chain's first link fails itself (self.fail), and another's releases itself
    with pytest.raises(RuntimeError, match="no point retrying"):
        farm.chain([GivesUp(str(f.out)), Link(str(f.out), "after-fail")]).dispatch()
    farm.chain([Releaser(str(f.out)), Link(str(f.out), "after-release")]).dispatch()
    # Then neither chain went on: as on a worker, only a success pushes the next link
    assert "after-fail" not in tags(f) and "after-release" not in tags(f), f.lines()


def test_a_chain_of_a_thousand_links_runs_in_order_on_the_sync_driver(make_farm):
    # Given a sync connection
    f = make_farm("sync")
    # When a chain of 1001 links (the most allowed) is dispatched
    farm.chain([Link(str(f.out), str(i)) for i in range(farm.payload.MAX_CHAIN + 1)]).dispatch()
    # Then every link ran, in order (no recursion per link)
    assert tags(f) == [str(i) for i in range(farm.payload.MAX_CHAIN + 1)]


def test_chains_and_batches_run_on_the_async_drivers_threads(tmp_path):
    # Given a process whose connection is async (a pool of threads of its own)
    out, calls = tmp_path / "out.txt", tmp_path / "callbacks.txt"
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "farm.yaml").write_text(
        "imports: [testjobs]\ndefault: dev\nconnections:\n  dev: {driver: async, workers: 2}\n")
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""\
        import json, time, farm
        from testjobs import Grower, Link, Record
        # When it dispatches a chain and a batch whose first job adds one more
        farm.chain([Link({str(out)!r}, "a"), Link({str(out)!r}, "b")]).dispatch()
        b = farm.batch([Grower({str(out)!r}, "g", 1), Link({str(out)!r}, "x")]) \\
            .then(Record({str(calls)!r}, "then")).dispatch()
        deadline = time.monotonic() + 20
        while farm.batch_status(b)["finished_at"] is None and time.monotonic() < deadline:
            time.sleep(0.01)
        print(json.dumps(farm.batch_status(b)))
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(SUPPORT), str(ROOT)])
    env["FARM_CONFIG"] = str(tmp_path / "conf" / "farm.yaml")
    cp = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode == 0, cp.stderr
    # Then the batch finished with the added job, its callback ran once, and the chain in order
    status = json.loads(cp.stdout)
    assert (status["total"], status["processed"], status["failed"]) == (3, 3, 0) and status["finished_at"]
    assert [t for t in tags_of(out) if t in ("a", "b")] == ["a", "b"]
    assert sorted(tags_of(out)) == ["a", "b", "g", "g-child0", "x"] and tags_of(calls) == ["then"]


def tags_of(path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def test_a_batch_job_run_again_after_its_worker_died_before_the_ack_counts_once_and_fires_nothing_again(make_farm):
    # Given a PostgreSQL farm (its row locks let the test hold a job's ack) and a batch of one
    # job that waits for its gate, with callbacks; a worker has started the job
    import psycopg

    from conftest import PG_URL

    f = make_farm("postgresql", retry_after=1)
    gate, calls = f.tmp / "gate", f.tmp / "callbacks.txt"
    then, final = Record(str(calls), "then"), Record(str(calls), "finally")
    then.queue = final.queue = "callbacks"      # run by the second worker only (a killed worker's
    bid = farm.batch([Timed(str(f.out), "job", gate=str(gate))]).then(then).finally_(final).dispatch()
    first = f.worker("--sleep", "0.05")         # lost acks would run them again, rightly)
    f.wait_for(lambda: f.lines(f.tmp / "out.txt.started"), what="the job to start")
    # When the test locks the job's row, so the worker's ack waits, and the job ends
    table = farm.app.manifest().connections["main"].table
    with psycopg.connect(PG_URL.replace("+psycopg", "")) as db:
        (job_id,) = db.execute(f"SELECT uuid FROM {table} WHERE payload LIKE %s FOR UPDATE",
                               (f'%"batch":"{bid}"%',)).fetchone()
        gate.touch()
        # Then the worker counts it, finishes the batch and pushes both callbacks before its ack
        f.wait_for(lambda: farm.batch_status(bid)["finished_at"], what="the batch counted as finished")
        fired = f"SELECT 1 FROM {table}_batches WHERE id = %s AND then_at IS NOT NULL AND finally_at IS NOT NULL"
        f.wait_for(lambda: db.execute(fired, (bid,)).fetchone(), what="both callbacks pushed")
        # When the worker is killed with its ack not committed
        first.kill()
        first.wait(10)
        # (its server sessions, blocked on the lock, would not notice the closed socket before
        # the lock is gone: ended here, as a server does once it sees the client gone)
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
                   (f"farm {first.pid} %",))
        db.rollback()
    # Then another worker runs the job again (its reservation lapsed), and the callbacks
    f.worker("--sleep", "0.05", "--queue", "default,callbacks")
    f.wait_for(lambda: len(f.lines()) == 2, what="the job run a second time")
    f.wait_for(lambda: len(f.lines(calls)) >= 2, what="the callbacks")
    f.procs[-1].terminate()
    assert finished(f.procs[-1]) == 0
    run_until_empty(f, "--queue", "default,callbacks")
    # and the job counted once, each callback ran once
    assert [line.split()[:2] for line in f.lines()] == [["job", "1"], ["job", "2"]]
    assert sorted(tags(f, calls)) == ["finally", "then"]
    status = farm.batch_status(bid)
    assert (status["total"], status["processed"], status["failed"]) == (1, 1, 0)
    assert farm.job_status(job_id) is None
