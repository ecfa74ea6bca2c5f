"""The `before` event fires just ahead of handle(): never for a job its middleware holds back
(a hold-back is not an attempt), always ahead of a job that runs."""
from __future__ import annotations

import pytest

import farm
from farm import events


class HoldBack:
    def handle(self, job, next):
        job.release(30)                 # without next(): held back, handle() never runs


class GoOn:
    def handle(self, job, next):
        return next(job)


class Held(farm.Job):
    middleware = [HoldBack()]

    def handle(self):
        raise AssertionError("a held-back job ran")


class Admitted(farm.Job):
    middleware = [GoOn()]

    def handle(self):
        seen.append("handle")


seen: list[str] = []


@pytest.fixture
def before_events():
    def record(ev):
        seen.append(f"before {type(ev.job).__name__}")

    seen.clear()
    farm.on("before", record)
    yield seen
    events.HANDLERS["before"].remove(record)


def test_a_job_held_back_by_its_middleware_fires_no_before_event(before_events):
    # When a job whose middleware holds it back is run in this process
    farm.dispatch_sync(Held())
    # Then no `before` event fired, since its handle() never ran
    assert before_events == []


def test_a_job_its_middleware_lets_through_fires_before_just_ahead_of_handle(before_events):
    farm.dispatch_sync(Admitted())
    assert before_events == ["before Admitted", "handle"]
