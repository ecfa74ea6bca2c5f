"""Operations (issue #16): `farm.job_status` / `farmctl job`, `farm.cancel` / `farmctl cancel`,
`farm.pause` / `farm.resume` / `farmctl pause|resume`, against real workers and servers.

RabbitMQ cannot find a message by id: there a job is known only while a worker runs it, once
it failed, or once it is done with a retention, and nothing is cancelled (README "Operations").
"""
from __future__ import annotations

import json
import time

import pytest

import farm
from conftest import BACKENDS
from testjobs import AlwaysFails, Kept, Record, Timed

from test_worker_lifecycle import beating, finished


def tags(lines: list[str]) -> list[str]:
    return [line.split()[0] for line in lines]


@pytest.mark.parametrize("backend", BACKENDS)
def test_job_status_follows_jobs_through_every_state_and_cancel_takes_only_waiting_ones(make_farm, backend):
    # Given a job that runs until its gate opens, one queued behind it, and one delayed
    f = make_farm(backend)
    gate = f.tmp / "gate"
    held = farm.dispatch(Timed(str(f.out), "held", gate=str(gate)))
    behind = farm.dispatch(Record(str(f.out), "behind"))
    later = farm.dispatch(Record(str(f.out), "later"), delay=60)
    amqp = backend == "amqp"
    # Then before any worker runs, they are ready and delayed (RabbitMQ cannot say)
    if amqp:
        assert farm.job_status(held) is None and farm.job_status(later) is None
    else:
        assert farm.job_status(held)["state"] == "ready"
        status = farm.job_status(later)
        assert (status["state"], status["queue"], status["worker"]) == ("delayed", "default", None)
        assert status["available_at"]
    # When a worker starts the first one
    p = f.worker("--sleep", "0.2")
    f.wait_for(lambda: f.lines(f.tmp / "out.txt.started"), what="the held job to start")
    worker_ids = {w["id"] for w in beating(f)}
    # Then it is reserved, by that worker (as `status` shows it)
    status = f.wait_for(lambda: (farm.job_status(held) or {}).get("worker") and farm.job_status(held),
                        what="the held job reserved by its worker")
    assert status["state"] == "reserved" and status["worker"] in worker_ids, status
    assert status["queue"] == "default" and status["id"] == held
    # And cancel refuses it (it still completes below); the waiting ones go (not on RabbitMQ)
    assert farm.cancel(held) is False
    assert farm.cancel(behind) is (not amqp)
    assert farm.cancel(later) is (not amqp)
    assert farm.cancel("00000000-0000-4000-8000-000000000000") is False
    if not amqp:
        assert farm.job_status(behind) is None and farm.job_status(later) is None
    # When it ends, and a failing job and one with a retention follow
    failing = farm.dispatch(AlwaysFails(str(f.tmp / "fails.txt")))
    kept = farm.dispatch(Kept(str(f.out), "kept"))
    plain = farm.dispatch(Record(str(f.out), "plain"))
    gate.touch()
    f.wait_for(lambda: "plain" in tags(f.lines()), what="the jobs after the held one to run")
    # Then the held job ran once, the cancelled ones never (on RabbitMQ the one behind it ran)
    ran = tags(f.lines())
    assert ran.count("held") == 1 and "later" not in ran and ("behind" in ran) is amqp, ran
    # And the failed one is failed, the kept one done, the plain one (no retention) unknown
    failed = f.wait_for(lambda: farm.job_status(failing), what="the failed job")
    assert (failed["state"], failed["queue"], failed["attempts"]) == ("failed", "default", 1)
    done = farm.job_status(kept)
    assert (done["state"], done["queue"], done["job"], done["attempts"]) == ("done", "default", "testjobs:Kept", 1)
    assert farm.job_status(plain) is None
    if not amqp:            # RabbitMQ: reserved is read from heartbeats, which lag up to 5 s
        assert farm.job_status(held) is None
    assert farm.cancel(kept) is False and farm.cancel(failing) is False
    p.terminate()
    assert finished(p) == 0


@pytest.mark.parametrize("backend,concurrency", [(b, "1") for b in BACKENDS] + [("amqp", "2")])
def test_a_paused_queue_is_not_taken_from_within_a_second_while_others_go_on(make_farm, backend, concurrency):
    # Given a worker on queues a and b, running a job of a that waits for its gate
    f = make_farm(backend)
    gate = f.tmp / "gate"
    farm.dispatch(Timed(str(f.out), "running", gate=str(gate)), queue="a")
    p = f.worker("--queue", "a,b", "--sleep", "0.2", "--concurrency", concurrency)
    f.wait_for(lambda: f.lines(f.tmp / "out.txt.started"), what="the job of a to start")
    # When a is paused, and a second has passed
    farm.pause("a")
    assert farm.paused() == ["a"]
    time.sleep(1.0)
    # Then a job of a is not taken, one of b is, and the running job of a finishes
    farm.dispatch(Record(str(f.out), "a-waits"), queue="a")
    farm.dispatch(Record(str(f.out), "b-goes"), queue="b")
    gate.touch()
    f.wait_for(lambda: {"running", "b-goes"} <= set(tags(f.lines())), what="the running job and b's job")
    time.sleep(0.5)
    assert "a-waits" not in tags(f.lines())
    # When a is resumed, its job runs
    assert farm.resume("a") is True and farm.paused() == []
    f.wait_for(lambda: "a-waits" in tags(f.lines()), timeout=10, what="a's job after resume")
    assert sorted(tags(f.lines())) == ["a-waits", "b-goes", "running"]
    # and each ran on its first attempt: nothing was requeued as a redelivery (amqp hands a
    # paused queue's buffered deliveries back as fresh messages; the running one stays valid).
    # Known limit on amqp: a delivery the broker sends as the paused queue's consumer is
    # cancelled comes back marked redelivered, which RabbitMQ cannot tell from a death, so that
    # one job may show its second attempt (README, "Attempts and deaths").
    first = [line for line in f.lines() if not (backend == "amqp" and line.startswith("a-waits"))]
    assert {line.split()[1] for line in first} == {"1"}, f.lines()
    assert all(int(line.split()[1]) <= 2 for line in f.lines()), f.lines()
    p.terminate()
    assert finished(p) == 0, p.stderr.read()


def test_cli_job_cancel_pause_resume_exit_codes_and_one_line_errors(make_farm):
    # Given a farm whose pipeline keeps finished jobs for a minute
    f = make_farm("sqlite", extra="pipelines:\n  keep: {queues: [default], retention: 60}\n")
    unknown = "00000000-0000-4000-8000-000000000000"
    # Then an unknown id is exit 1 with one line, for job and cancel
    for args in (("job", unknown), ("job", unknown, "--json"), ("cancel", unknown)):
        cp = f.farmctl(*args)
        assert cp.returncode == 1 and len(cp.stderr.strip().splitlines()) == 1, (args, cp.stderr)
        assert unknown in cp.stderr and "Traceback" not in cp.stderr
    assert f.farmctl("job").returncode == 2
    # And a waiting job shows, as text and JSON, and is cancelled once
    jid = farm.dispatch(Record(str(f.out), "x"), delay=60)
    cp = f.farmctl("job", jid, check=True)
    assert "delayed" in cp.stdout and "testjobs:Record" in cp.stdout
    assert json.loads(f.farmctl("job", jid, "--json", check=True).stdout)["state"] == "delayed"
    assert f.farmctl("cancel", jid).returncode == 0
    assert f.farmctl("cancel", jid).returncode == 1
    # And a plain job run by the pipeline is kept as done (its `retention:`)
    jid = farm.dispatch(Record(str(f.out), "y"))
    assert finished(f.worker("--pipeline", "keep", "--stop-when-empty")) == 0
    assert json.loads(f.farmctl("job", jid, "--json", check=True).stdout)["state"] == "done"
    # And pause shows in status until resume
    assert f.farmctl("pause", "emails").returncode == 0
    doc = json.loads(f.farmctl("status", "--json", check=True).stdout)
    assert doc["paused"] == ["emails"]
    assert "paused" in f.farmctl("status", check=True).stdout
    assert f.farmctl("resume", "emails").returncode == 0
    assert json.loads(f.farmctl("status", "--json", check=True).stdout)["paused"] == []
    cp = f.farmctl("pause", " ")
    assert cp.returncode == 2 and len(cp.stderr.strip().splitlines()) == 1


def test_a_pause_or_resume_that_cannot_reach_a_store_fails_instead_of_skipping_it(make_farm):
    # Given a manifest with a second connection whose Redis is not there
    f = make_farm("sqlite", extra="")
    f.manifest.write_text(f.manifest.read_text().replace(
        "connections:\n", "connections:\n  gone: {driver: redis, url: 'redis://127.0.0.1:1/0'}\n", 1))
    # Then pause and resume say so with one line and exit 1: workers of that store would not see it
    for verb in ("pause", "resume"):
        cp = f.farmctl(verb, "emails")
        assert cp.returncode == 1 and len(cp.stderr.strip().splitlines()) == 1, (verb, cp.stderr)
        assert "Traceback" not in cp.stderr


def test_an_idle_worker_waiting_for_a_job_does_not_start_one_of_a_queue_paused_a_second_ago(make_farm):
    # Given an idle worker whose claims wait up to a second for a job
    f = make_farm("sqlite")
    p = f.worker("--queue", "a", "--sleep", "3")
    beat = f.wait_for(lambda: f.store().workers(), what="the worker's first heartbeat")
    assert beat
    for i in range(3):
        # When a is paused, and a job of a comes a second later (while a claim may be waiting)
        farm.pause("a")
        time.sleep(1.0)
        farm.dispatch(Record(str(f.out), f"r{i}"), queue="a")
        time.sleep(0.6)
        # Then it is not started until a is resumed
        assert f"r{i}" not in tags(f.lines()), i
        farm.resume("a")
        f.wait_for(lambda: f"r{i}" in tags(f.lines()), what="the job after resume")
    p.terminate()
    assert finished(p) == 0


def test_a_pipeline_retention_is_validated_with_its_line(tmp_path):
    from farm import manifest
    from farm.errors import ManifestError

    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "farm.yaml"
    path.write_text("connections:\n  db: {driver: database}\ndefault: db\n"
                    "pipelines:\n  keep: {queues: [default], retention: 0}\n  ok: {retention: 3600}\n")
    with pytest.raises(ManifestError) as e:
        manifest.load(path)
    assert any("farm.yaml:5: pipelines.keep.retention" in problem for problem in e.value.problems), e.value.problems
    path.write_text(path.read_text().replace("retention: 0", "retention: 30"))
    assert manifest.load(path).pipelines["keep"].retention == 30


def test_retention_travels_in_the_document_only_for_jobs_that_set_it():
    from farm import payload
    from farm.dispatch import build
    from farm.errors import PayloadError

    # Given a job class with a retention and one without
    kept, plain = build(Kept("/dev/null", "k")), build(Record("/dev/null", "p"))
    # Then only the first document carries it (a plain job's document is as before)
    assert kept["retention"] == 60 and "retention" not in plain
    assert "retention" not in kept["data"]                 # an option, never payload
    # And a document with a negative retention is refused
    with pytest.raises(PayloadError):
        payload.check_shape(dict(kept, retention=-1))


def test_a_paused_queue_is_left_by_a_worker_from_its_start_and_by_listen(make_farm):
    # Given a job on a paused queue
    f = make_farm("sqlite")
    farm.dispatch(Record(str(f.out), "waits"), queue="a")
    farm.pause("a")
    # When a worker starts and looks once (as each of listen's children does), and listen drains
    assert f.farmctl("work", "--queue", "a", "--once").returncode == 0
    assert f.farmctl("listen", "--queue", "a", "--stop-when-empty").returncode == 0
    # Then the job has not run; resumed, it does
    assert f.lines() == []
    farm.resume("a")
    assert f.farmctl("listen", "--queue", "a", "--stop-when-empty", "--max-jobs", "1").returncode == 0
    assert tags(f.lines()) == ["waits"]
