"""Regression tests of the hardening issue (#12) that need no server and no subprocess."""
from __future__ import annotations

import json
import signal
import time
import uuid

import pytest

import farm
from farm import payload
from farm.drivers.base import Reserved
from farm.jobs import instantiate
from farm.worker.heart import Heart
from farm.worker.lifecycle import Lifecycle, StopReason
from farm.worker.options import WorkerOptions
from farm.worker.runner import Attempt, Runner

ATTACKS = ["testjobs:farm.app.os.system", "testjobs:os.system", "testjobs:time.sleep",
           "testjobs:imported_function", "testjobs:_private", "testjobs:Outer.helper",
           "testjobs:Record.__init__", "testjobs:record.__globals__", "testjobs:farm"]


@pytest.mark.parametrize("name", ATTACKS)
def test_issue_12_a_job_name_resolves_only_to_job_code_defined_in_the_allowed_module(name):
    registry = payload.Registry(["testjobs"])
    with pytest.raises(farm.PayloadError, match="defines no job"):
        registry.resolve(name)


def test_issue_12_nested_job_classes_functions_and_farm_jobs_defined_there_still_resolve():
    import testjobs

    registry = payload.Registry(["testjobs"])
    assert registry.resolve("testjobs:Outer.Inner") is testjobs.Outer.Inner
    assert registry.resolve("testjobs:plain") is testjobs.plain
    assert registry.resolve("testjobs:add") is testjobs.add


@pytest.mark.parametrize("key", ["_farm_id", "_farm_outcome", "_anything", "queue", "tries", "timeout",
                                 "connection", "backoff", "handle", "failed", "release", "job_id"])
def test_issue_12_payload_data_cannot_set_private_option_or_method_attributes(key):
    from testjobs import Record

    with pytest.raises(farm.PayloadError, match="not a payload attribute"):
        instantiate(Record, {"path": "/dev/null", "tag": "x", key: 1})


def _doc(**over):
    doc = {"v": 1, "id": str(uuid.uuid4()), "job": "testjobs:Record", "data": {"path": "/x", "tag": "t"}}
    doc.update(over)
    return doc


MALFORMED = [
    _doc(data={"d": {"$decimal": "abc"}}),
    _doc(data={"d": {"$datetime": "yesterday"}}),
    _doc(data={"d": {"$uuid": "nope"}}),
    _doc(data={"d": {"$bytes": "!!"}}),
    _doc(data={"d": {"$date": "2026-13-45"}}),
    _doc(timeout=-1), _doc(timeout="10"), _doc(tries=-2), _doc(tries=1.5), _doc(attempts=-1),
    _doc(backoff=["a"]), _doc(backoff=[-1]), _doc(max_exceptions=0), _doc(retry_until="soon"),
    _doc(queue=""), _doc(id=""), _doc(id="x" * 37), _doc(job="no-colon"), _doc(exceptions="2"),
]


@pytest.mark.parametrize("doc", MALFORMED, ids=lambda d: json.dumps({k: v for k, v in d.items()
                                                                     if k not in ("v", "id")})[:60])
def test_issue_12_a_malformed_document_is_a_payload_error_never_another_exception(doc):
    with pytest.raises(farm.PayloadError):
        parsed = payload.parse(json.dumps(doc))
        payload.decode_data(parsed["data"])


def test_issue_12_deep_nesting_and_huge_numbers_are_payload_errors():
    deep = '{"v": 1, "id": "a", "job": "m:X", "data": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    with pytest.raises(farm.PayloadError, match="nested too deeply"):
        payload.parse(deep)
    with pytest.raises(farm.PayloadError):
        payload.parse('{"v": 1, "id": "a", "job": "m:X", "data": {}, "timeout": 1e999}')
    with pytest.raises(farm.PayloadError):
        payload.parse('{"v": 1, "id": "a", "job": "m:X", "data": {"n": ' + "9" * 5000 + "}}")
    tagged_deep = {"x": {"$decimal": "1"}}
    for _ in range(5000):
        tagged_deep = {"x": [tagged_deep]}
    with pytest.raises(farm.PayloadError, match="nested too deeply"):
        payload.decode_data(tagged_deep)


class _Queue:
    """Records what the runner settles (a stand-in only for the settle calls)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def fail(self, job, body, error):
        self.calls.append(("fail", error.splitlines()[0]))

    def ack(self, job):
        self.calls.append(("ack", job.id))

    def release(self, job, delay, body):
        self.calls.append(("release", job.id))

    def give_back(self, jobs):
        self.calls.extend(("give_back", j.id) for j in jobs)


def _runner(lifecycle: Lifecycle | None = None) -> tuple[Runner, _Queue]:
    from farm.log import Log

    options = WorkerOptions(connection="x")
    q = _Queue()
    lifecycle = lifecycle or Lifecycle(options, time.monotonic())
    return Runner(q, payload.Registry(["testjobs"]), options, Log(level="error"), lifecycle), q


def test_issue_12_preparing_a_document_with_a_bad_tag_fails_it_with_one_line():
    runner, q = _runner()
    body = json.dumps(_doc(data={"path": "/x", "tag": {"$decimal": "abc"}}))
    assert runner.prepare(Reserved("j1", "default", body, 1)) is None
    assert q.calls == [("fail", "PayloadError: data: {'$decimal': 'abc'} is not a valid decimal (InvalidOperation)")]


def test_issue_12_a_second_signal_after_handle_returned_does_not_abandon_the_finished_job(tmp_path):
    """The busy window covers handle() only: a second TERM during settling is not a give-back."""
    from testjobs import Record

    options = WorkerOptions(connection="x")
    lifecycle = Lifecycle(options, time.monotonic())
    runner, q = _runner(lifecycle)
    job = Record(str(tmp_path / "out"), "t")
    attempt = Attempt(Reserved("j1", "default", json.dumps(_doc()), 1), _doc(), job, 10.0, time.monotonic())
    lifecycle.on_signal(signal.SIGTERM)
    assert runner.run(attempt) == "done"
    assert lifecycle.busy is False
    assert lifecycle.on_signal(signal.SIGTERM) is False      # nothing runs: nothing to interrupt
    assert q.calls == [("ack", "j1")]
    assert lifecycle.should_stop(time.monotonic(), 0, 1) is StopReason.ABANDON


def test_issue_12_sigquit_stops_gracefully_like_term():
    lifecycle = Lifecycle(WorkerOptions(connection="x"), time.monotonic())
    lifecycle.busy = True
    assert lifecycle.on_signal(signal.SIGQUIT) is False
    assert lifecycle.should_stop(time.monotonic(), 0, 0) is StopReason.SIGNAL
    assert lifecycle.on_signal(signal.SIGQUIT) is True       # the second one abandons handle()


class _FakeWorker:
    def __init__(self, runner: Runner, queue: _Queue, lifecycle: Lifecycle) -> None:
        from farm.log import Log

        self.runner, self.queue, self.lifecycle = runner, queue, lifecycle
        self.options = WorkerOptions(connection="x", retry_after=90)
        self.held: list[Reserved] = []
        self.log = Log(level="error")
        self.store = None


def test_issue_12_the_watchdog_never_settles_an_attempt_the_main_thread_is_settling(monkeypatch):
    from testjobs import Record

    lifecycle = Lifecycle(WorkerOptions(connection="x"), time.monotonic())
    runner, q = _runner(lifecycle)
    heart = Heart(_FakeWorker(runner, q, lifecycle))   # type: ignore[arg-type]
    exits: list[int] = []
    monkeypatch.setattr("farm.worker.heart.os._exit", exits.append)
    job = Record("/dev/null", "t")
    overdue = Attempt(Reserved("j1", "default", json.dumps(_doc()), 1), _doc(), job, 1.0, time.monotonic() - 10)
    runner.current = overdue
    assert runner.claim(overdue, "main")          # handle() has returned; main settles it
    heart.watchdog(time.monotonic())
    assert q.calls == [] and exits == []

    other = Attempt(Reserved("j2", "default", json.dumps(_doc()), 1), _doc(), job, 1.0, time.monotonic() - 10)
    runner.current = other
    heart.watchdog(time.monotonic())              # stuck past its timeout: the watchdog settles it
    assert exits == [1] and q.calls == [("fail", "JobTimeout: the job ran past its timeout of 1s")]
    assert not runner.claim(other, "main")        # and the main thread never does


def test_issue_12_a_finished_job_whose_ack_fails_is_kept_and_acked_again_never_failed(tmp_path):
    from testjobs import Record

    runner, q = _runner()
    acks = {"left_to_fail": 1}

    def ack(job):
        if acks["left_to_fail"]:
            acks["left_to_fail"] -= 1
            raise farm.DriverUnavailable("the database went away")
        q.calls.append(("ack", job.id))

    q.ack = ack
    job = Record(str(tmp_path / "out"), "t")
    attempt = Attempt(Reserved("j1", "default", json.dumps(_doc()), 1), _doc(), job, 10.0, time.monotonic())
    assert runner.run(attempt) == "done"
    assert q.calls == [] and [r.id for r in runner.unacked] == ["j1"]
    runner.ack_again()
    assert q.calls == [("ack", "j1")] and runner.unacked == []


def test_a_failed_renew_is_tried_again_a_second_after_it_failed_and_the_tick_goes_on(monkeypatch):
    from farm.errors import DriverUnavailable

    clock = [1000.0]
    monkeypatch.setattr("farm.worker.heart.time.monotonic", lambda: clock[0])

    class Slow:
        """A renew that fails after 10 s (a statement cut short), then one that works."""
        def __init__(self) -> None:
            self.calls = 0

        def renew(self, held: list[Reserved]) -> None:
            self.calls += 1
            clock[0] += 10.0
            if self.calls == 1:
                raise DriverUnavailable("connection 'main': canceling statement due to statement timeout")

    lifecycle = Lifecycle(WorkerOptions(connection="x"), time.monotonic())
    runner, _ = _runner(lifecycle)
    q = Slow()
    heart = Heart(_FakeWorker(runner, q, lifecycle))   # type: ignore[arg-type]
    job = Reserved("j1", "default", "{}", 1)
    # Given a renew (retry_after 90: every 30 s) that failed after 10 s: it does not raise,
    # so the rest of the heart's tick (beat, pause, restart) still runs
    now = clock[0]
    assert heart.due("renew", heart.renew_every, now)
    heart.renew([job], now)
    # Then it is due again a second after it failed, not at once and not 30 s later
    assert not heart.due("renew", heart.renew_every, clock[0] + 0.5)
    assert heart.due("renew", heart.renew_every, clock[0] + 1.01)
    clock[0] += 1.01
    heart.renew([job], clock[0])
    # and once it went through, the next is a third of retry_after away again
    assert not heart.due("renew", heart.renew_every, clock[0] + 10)
    assert heart.due("renew", heart.renew_every, clock[0] + 30) and q.calls == 2


def test_an_ack_left_out_of_a_renew_brings_the_next_renew_forward(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("farm.worker.heart.time.monotonic", lambda: clock[0])

    class Fresh:
        """A database queue whose renew left out an ack 0.4 s short of being renewed."""
        def renew(self, held: list[Reserved]) -> None: ...

        def renew_due_in(self) -> float | None:
            return 0.4

    lifecycle = Lifecycle(WorkerOptions(connection="x"), time.monotonic())
    runner, _ = _runner(lifecycle)
    heart = Heart(_FakeWorker(runner, Fresh(), lifecycle))   # type: ignore[arg-type]
    now = clock[0]
    assert heart.due("renew", heart.renew_every, now)
    heart.renew([], now)
    # Then the next renew comes when that ack is old enough, not a third of retry_after later
    assert not heart.due("renew", heart.renew_every, now + 0.3)
    assert heart.due("renew", heart.renew_every, now + 0.41)
