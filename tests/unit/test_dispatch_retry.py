"""How long a database dispatch whose connection dropped keeps trying (drivers/dbretry.py):
10 s unless FARM_DISPATCH_RETRY_SECONDS says otherwise; a bad value is a usage error. The
path itself runs in tests/integration/test_connection_cuts.py."""
from __future__ import annotations

import pytest

from farm.drivers.dbretry import DEFAULT_SECONDS, retry_seconds
from farm.errors import UsageError


def test_a_dispatch_retries_a_dropped_connection_for_ten_seconds_by_default(monkeypatch):
    # Given no FARM_DISPATCH_RETRY_SECONDS in the environment
    monkeypatch.delenv("FARM_DISPATCH_RETRY_SECONDS", raising=False)
    # Then a dispatch keeps trying for 10 s
    assert retry_seconds() == DEFAULT_SECONDS == 10.0


@pytest.mark.parametrize("raw, seconds", [("2.5", 2.5), ("0", 0.0), (" 30 ", 30.0)])
def test_the_dispatch_retry_time_comes_from_the_environment(monkeypatch, raw, seconds):
    # Given FARM_DISPATCH_RETRY_SECONDS (0: raise at once, as before)
    monkeypatch.setenv("FARM_DISPATCH_RETRY_SECONDS", raw)
    # Then that is the time
    assert retry_seconds() == seconds


@pytest.mark.parametrize("raw", ["soon", "-1", "nan", "inf"])
def test_a_bad_dispatch_retry_time_is_a_usage_error_naming_the_variable(monkeypatch, raw):
    # Given a value that is not a number of seconds, 0 or more
    monkeypatch.setenv("FARM_DISPATCH_RETRY_SECONDS", raw)
    # Then reading it is a usage error (exit status 2) that names the variable and the value
    with pytest.raises(UsageError) as e:
        retry_seconds()
    assert "FARM_DISPATCH_RETRY_SECONDS" in str(e.value) and repr(raw) in str(e.value)
