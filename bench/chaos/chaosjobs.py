"""The chaos suite's job: copied beside a temp farm's conf/ and listed in its `imports:`.

Self-contained (the workers import it from the farm's root, not from bench/): it appends
`S <id> <pid> <time>` to the ledger as handle() starts and `E <id> <pid> <time>` just before
it returns (one os.write on O_APPEND each, see bench/chaos/ledger.py).
"""
from __future__ import annotations

import os
import signal
import time

import farm

_HELD: list[bytes] = []        # memory kept by `grow` jobs, so the worker's RSS climbs


def record(path: str, kind: str, job_id: str) -> None:
    """Append one `kind job_id pid time` line in one write (a SIGKILL leaves no half line)."""
    line = f"{kind} {job_id} {os.getpid()} {time.time():.6f}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class Chaos(farm.Job):
    """One counted job. `kind`: ok (sleep `seconds`), grow (ok, and keep `mb` MB), raise (every
    attempt), hang (sleep `seconds`, meant to pass its timeout), kill (SIGKILL its own worker)."""

    tries = 3
    backoff = 0

    def __init__(self, ledger: str, seconds: float = 0.0, kind: str = "ok", mb: int = 0) -> None:
        self.ledger, self.seconds, self.kind, self.mb = ledger, seconds, kind, mb

    def handle(self) -> None:
        job_id = self.job_id or "?"
        record(self.ledger, "S", job_id)
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "raise":
            raise RuntimeError("chaos: raises on purpose")
        if self.kind == "grow":
            _HELD.append(os.urandom(self.mb * 1024 * 1024))
        if self.seconds:
            time.sleep(self.seconds)
        record(self.ledger, "E", job_id)
