"""What happens after an attempt that did not succeed: a pure decision."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay: float = 0.0
    reason: str = ""


def backoff_delay(backoff: Sequence[float], attempt: int) -> float:
    """Seconds before retry n (1-based); the last value repeats."""
    if not backoff:
        return 0.0
    return float(backoff[min(attempt, len(backoff)) - 1])


def decide(*, attempts: int, tries: int, backoff: Sequence[float], exceptions: int,
           max_exceptions: int | None, retry_until: dt.datetime | None, now: dt.datetime,
           raised: bool) -> Decision:
    """Retry (after the backoff) or fail, for an attempt that raised or released itself.

    `attempts` counts this one. With `retry_until` set, `tries` no longer limits retries,
    as in Laravel; `max_exceptions` still does. `tries` 0 is unlimited.
    """
    if raised and max_exceptions is not None and exceptions >= max_exceptions:
        return Decision(False, reason=f"{exceptions} exceptions, the job allows {max_exceptions}")
    if retry_until is not None:
        if now >= retry_until:
            return Decision(False, reason=f"past its retry_until {retry_until.isoformat()}")
    elif tries and attempts >= tries:           # tries = 0: unlimited
        return Decision(False, reason=f"{attempts} attempts, the job allows {tries}")
    return Decision(True, delay=backoff_delay(backoff, attempts))


def parse_until(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        until = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return until if until.tzinfo else until.replace(tzinfo=dt.timezone.utc)
