"""Seconds read from the environment: the FARM_*_SECONDS knobs (producers', workers', tests')."""
from __future__ import annotations

import os

from .errors import UsageError


def seconds_from_env(name: str, default: float, *, zero: bool) -> float:
    """$name as seconds, else `default`; `zero`: whether 0 is allowed (it turns a thing off).
    A value that is no such number is a one-line UsageError naming the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not ((seconds >= 0 if zero else seconds > 0) and seconds < 1e9):     # NaN fails both
        bound = "0 or more" if zero else "above 0"
        raise UsageError(f"{name} must be a number of seconds{',' if zero else ''} {bound}, not {raw!r}")
    return seconds
