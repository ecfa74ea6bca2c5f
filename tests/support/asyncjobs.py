"""Jobs for tests/integration/test_async_driver.py: each records when and on which thread it ran."""
from __future__ import annotations

import threading
import time

import farm
from testjobs import record


class Timed(farm.Job):
    """Sleeps `seconds`, then records `<tag> <attempt> <thread name> <start> <end>`."""

    def __init__(self, path: str, tag: str, seconds: float = 0.0) -> None:
        self.path, self.tag, self.seconds = path, tag, seconds

    def handle(self) -> None:
        start = time.time()
        time.sleep(self.seconds)
        record(self.path, f"{self.tag} {self.attempts} {threading.current_thread().name} {start:.6f} {time.time():.6f}")


class FlakyTimed(farm.Job):
    """Raises on every attempt, recording its time; failed() records the exception's type."""

    tries = 3
    backoff = [0.3, 0.6]

    def __init__(self, path: str) -> None:
        self.path = path

    def handle(self) -> None:
        record(self.path, f"attempt {self.attempts} {time.time():.6f}")
        raise ValueError(f"boom on attempt {self.attempts}")

    def failed(self, exc: BaseException) -> None:
        record(self.path, f"failed {type(exc).__name__} {threading.current_thread().name}")


class ReleaseOnce(farm.Job):
    """Releases itself for `pause` seconds on its first attempt; records every attempt's time."""

    tries = 2

    def __init__(self, path: str, pause: float) -> None:
        self.path, self.pause = path, pause

    def handle(self) -> None:
        record(self.path, f"attempt {self.attempts} {time.time():.6f}")
        if self.attempts == 1:
            self.release(self.pause)


class Spinner(farm.Job):
    """Runs Python code for `seconds`: a timeout must stop it."""

    tries = 1
    timeout = 1

    def __init__(self, path: str, seconds: float) -> None:
        self.path, self.seconds = path, seconds

    def handle(self) -> None:
        end = time.time() + self.seconds
        while time.time() < end:
            pass
        record(self.path, "end")

    def failed(self, exc: BaseException) -> None:
        record(self.path, f"failed {type(exc).__name__}")
