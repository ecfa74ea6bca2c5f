"""The hard timeout arms its timer lazily: these check it still stops the right job, on time."""
from __future__ import annotations

import signal
import time

import pytest

from farm.errors import JobTimeout
from farm.worker import timeout


@pytest.fixture(autouse=True)
def alarm_handler():
    previous = timeout.install()
    yield
    timeout.disarm()
    signal.signal(signal.SIGALRM, previous)


def slow_job_stopped_after(seconds: float) -> float:
    started = time.monotonic()
    with pytest.raises(JobTimeout):
        with timeout.hard_timeout(seconds):
            time.sleep(5)
    return time.monotonic() - started


def test_a_slow_job_after_a_quick_one_is_stopped_at_its_own_deadline_not_the_first_ones():
    # Given a quick job whose alarm is still armed (it fires 0.4 s after it started)
    with timeout.hard_timeout(0.4):
        pass
    time.sleep(0.2)
    # When a slow job with the same timeout starts 0.2 s later
    took = slow_job_stopped_after(0.4)
    # Then it is stopped 0.4 s after its own start (the early alarm re-armed), not at 0.2 s
    assert 0.38 <= took < 0.6


def test_a_shorter_timeout_than_the_armed_alarm_rearms_the_timer():
    with timeout.hard_timeout(60):
        pass
    took = slow_job_stopped_after(0.2)
    assert 0.18 <= took < 0.4


def test_an_alarm_that_fires_between_jobs_stops_nothing():
    with timeout.hard_timeout(0.1):
        pass
    time.sleep(0.3)              # the alarm fires now, with no job running: no JobTimeout here
    with timeout.hard_timeout(5):
        time.sleep(0.05)


def test_many_quick_jobs_arm_the_timer_once(monkeypatch):
    calls = []
    real = signal.setitimer
    monkeypatch.setattr(signal, "setitimer", lambda which, s: calls.append(s) or real(which, s))
    for _ in range(1000):
        with timeout.hard_timeout(30):
            pass
    assert calls == [30]
