"""The worker's give-up time for a database or broker that is gone: the shipped default is the
README's "about a minute", and FARM_GIVE_UP_SECONDS (which the tests use to shorten it) is
checked at start. The path itself runs in tests/integration/test_guarantees.py."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from farm.errors import UsageError
from farm.worker.loop import GIVE_UP_SECONDS, backoff, give_up_seconds

ROOT = Path(__file__).resolve().parent.parent.parent


def test_the_shipped_give_up_time_is_about_a_minute_of_backoff_over_twelve_failures(monkeypatch):
    # Given no FARM_GIVE_UP_SECONDS in the environment
    monkeypatch.delenv("FARM_GIVE_UP_SECONDS", raising=False)
    # When a worker fails to reach its database again and again
    waits = [backoff(n, give_up_seconds()) for n in range(1, 14)]
    # Then it waits 0.5, 1, 2, 4, then 8 s between tries, and the 13th failure in a row, after
    # 71.5 s of waiting, is the one it gives up on
    assert give_up_seconds() == GIVE_UP_SECONDS == 71.5
    assert waits == [0.5, 1.0, 2.0, 4.0] + [8.0] * 8 + [None]
    assert backoff(14) is None and backoff(1000) is None


def test_a_give_up_time_from_the_environment_cuts_the_last_wait_to_end_on_it(monkeypatch):
    # Given FARM_GIVE_UP_SECONDS=20
    monkeypatch.setenv("FARM_GIVE_UP_SECONDS", "20")
    # When the backoff is worked out under it
    waits = [backoff(n, give_up_seconds()) for n in range(1, 8)]
    # Then the schedule is the shipped one until the last wait, which ends at 20 s in all
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 4.5, None]
    assert sum(w for w in waits if w) == 20


def test_a_long_give_up_time_keeps_trying_every_eight_seconds(monkeypatch):
    # Given a give-up time of a day
    monkeypatch.setenv("FARM_GIVE_UP_SECONDS", "86400")
    # Then the waits stay at 8 s for all those tries, and the last one still ends on the day
    assert backoff(5000, give_up_seconds()) == 8.0
    assert backoff(10804, give_up_seconds()) == 0.5 and backoff(10805, give_up_seconds()) is None


@pytest.mark.parametrize("raw", ["abc", "0", "-5", "nan", "inf", "1e400"])
def test_a_give_up_time_that_is_not_a_positive_number_is_a_usage_error(monkeypatch, raw):
    monkeypatch.setenv("FARM_GIVE_UP_SECONDS", raw)
    with pytest.raises(UsageError, match="FARM_GIVE_UP_SECONDS must be a number of seconds above 0"):
        give_up_seconds()


def test_farmctl_work_refuses_a_bad_give_up_time_with_one_line_and_status_2(tmp_path):
    # Given a manifest on SQLite and FARM_GIVE_UP_SECONDS=soon
    (tmp_path / "farm.yaml").write_text("connections:\n  main: {driver: database, url: 'sqlite:///farm.db'}\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "FARM_GIVE_UP_SECONDS": "soon"}
    # When a worker starts
    cp = subprocess.run([sys.executable, "-m", "farm", "work", "--config", "farm.yaml", "--once"], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=60)
    # Then it exits 2 with one line naming the variable, before it touches the database
    assert cp.returncode == 2, cp.stderr
    assert cp.stderr.splitlines() == ["farmctl: FARM_GIVE_UP_SECONDS must be a number of seconds above 0, not 'soon'"]
    assert not (tmp_path / "farm.db").exists()
