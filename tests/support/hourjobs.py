"""Jobs for issue 14's tests (options set in `__init__`); workers import them via `imports:`."""
from __future__ import annotations

import farm
from testjobs import record


class Urgent(farm.Job):
    """Options in `__init__`, as Laravel's `onQueue()` in a constructor: the instance's win."""

    queue = "mail"
    tries = 1
    timeout = 30

    def __init__(self, path: str, urgent: bool = False, **options) -> None:
        self.path = path
        if urgent:
            self.queue = "high"
        for name, value in options.items():
            setattr(self, name, value)

    def handle(self) -> None:
        record(self.path, f"attempt {self.attempts} {self.job_id}")
        raise ValueError(f"boom on attempt {self.attempts}")


class Plain(farm.Job):
    queue = "mail"

    def __init__(self, n: int) -> None:
        self.n = n

    def handle(self) -> None:
        pass
