"""Benchmark jobs: each records that it ran, so every run checks exactly-once."""
from __future__ import annotations

import os
import time

import farm

_fd: int | None = None


def _write(line: str) -> None:
    global _fd
    if _fd is None:
        path = os.path.join(os.environ["FARM_BENCH_OUT"], f"{os.getpid()}.txt")
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, line.encode())


class Tick(farm.Job):
    """A no-op job that records its number."""

    def __init__(self, n: int) -> None:
        self.n = n

    def handle(self) -> None:
        _write(f"{self.n}\n")


class Stamp(farm.Job):
    """Records its number and when it started, for dispatch-to-start latency."""

    def __init__(self, n: int) -> None:
        self.n = n

    def handle(self) -> None:
        _write(f"{self.n} {time.time():.6f}\n")
