"""Jobs and event handlers for events, SkipRetry, tries=0, encryption and after_commit tests.

Workers import this module when the manifest lists it under `imports:`; its handlers act only
on `Watched` jobs, so a test process that imports it changes nothing for other jobs.
"""
from __future__ import annotations

import farm
from testjobs import record


class Watched(farm.Job):
    """Succeeds, or raises until attempt `succeed_on`; its events are written to `path`."""

    tries = 2

    def __init__(self, path: str, succeed_on: int = 1) -> None:
        self.path, self.succeed_on = path, succeed_on

    def handle(self) -> None:
        record(self.path, f"handle {self.attempts}")
        if self.attempts < self.succeed_on:
            raise ValueError(f"boom on attempt {self.attempts}")


def _write(ev: farm.JobEvent) -> None:
    if isinstance(ev.job, Watched):
        extra = f" {type(ev.exception).__name__}" if ev.exception is not None else ""
        record(ev.job.path, f"{ev.name} {ev.attempts} {ev.queue} {ev.connection} {ev.job_id}{extra}")


def _explode(ev: farm.JobEvent) -> None:
    if isinstance(ev.job, Watched):
        raise RuntimeError(f"handler boom at {ev.name}")


for _event in ("before", "after", "failing"):
    farm.on(_event, _write)
    farm.on(_event, _explode)        # logged as event.error; the job goes on as if it had not raised


class Skips(farm.Job):
    """Raises farm.SkipRetry on its first attempt although it has tries left."""

    tries = 5

    def __init__(self, path: str) -> None:
        self.path = path

    def handle(self) -> None:
        record(self.path, f"attempt {self.attempts}")
        raise farm.SkipRetry("the account is closed")

    def failed(self, exc: BaseException) -> None:
        record(self.path, f"failed {type(exc).__name__}")


class Unlimited(farm.Job):
    """tries = 0: retried until it succeeds on attempt `succeed_on`, or max_exceptions is reached."""

    tries = 0
    max_exceptions = 4

    def __init__(self, path: str, tag: str, succeed_on: int) -> None:
        self.path, self.tag, self.succeed_on = path, tag, succeed_on

    def handle(self) -> None:
        record(self.path, f"{self.tag} {self.attempts}")
        if self.attempts < self.succeed_on:
            raise ValueError(f"{self.tag} not yet")

    def failed(self, exc: BaseException) -> None:
        record(self.path, f"{self.tag} failed")


class NoTries(farm.Job):
    """No tries of its own: the worker's --tries decides."""

    def __init__(self, path: str, succeed_on: int) -> None:
        self.path, self.succeed_on = path, succeed_on

    def handle(self) -> None:
        record(self.path, f"attempt {self.attempts}")
        if self.attempts < self.succeed_on:
            raise ValueError("not yet")


class Secret(farm.Job):
    """An encrypted job: records a digest of its secret (never the secret) once it runs."""

    encrypted = True

    def __init__(self, path: str, secret: str, fail: bool = False) -> None:
        self.path, self.secret, self.fail_it = path, secret, fail

    def handle(self) -> None:
        import hashlib

        record(self.path, "ran " + hashlib.sha256(self.secret.encode()).hexdigest()[:16])
        if self.fail_it:
            raise ValueError("refused")        # the message never carries the secret


@farm.job(encrypted=True)
def secret_function(path: str, secret: str) -> None:
    import hashlib

    record(path, "fn " + hashlib.sha256(secret.encode()).hexdigest()[:16])
