"""Jobs the test suite dispatches; workers import them via `imports: [testjobs]`."""
from __future__ import annotations

import os
import time

import farm


def record(path: str, line: str) -> None:
    """Append one line atomically (O_APPEND), so several worker processes can share the file."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class Noop(farm.Job):
    def handle(self) -> None:
        pass


class Record(farm.Job):
    """Writes `<tag> <attempt> <pid>` to `path`."""

    def __init__(self, path: str, tag: str, seconds: float = 0.0) -> None:
        self.path, self.tag, self.seconds = path, tag, seconds

    def handle(self) -> None:
        if self.seconds:
            record(self.path + ".started", f"{self.tag} {self.attempts} {os.getpid()}")
            time.sleep(self.seconds)
        record(self.path, f"{self.tag} {self.attempts} {os.getpid()}")


class Flaky(farm.Job):
    """Raises until attempt `succeed_on`; records every attempt and the failed() hook."""

    tries = 3

    def __init__(self, path: str, succeed_on: int = 99) -> None:
        self.path, self.succeed_on = path, succeed_on

    def handle(self) -> None:
        record(self.path, f"attempt {self.attempts}")
        if self.attempts < self.succeed_on:
            raise ValueError(f"boom on attempt {self.attempts}")

    def failed(self, exc: BaseException) -> None:
        record(self.path, f"failed {type(exc).__name__}")


class Releaser(farm.Job):
    tries = 2

    def __init__(self, path: str) -> None:
        self.path = path

    def handle(self) -> None:
        record(self.path, f"attempt {self.attempts}")
        self.release(0)


class GivesUp(farm.Job):
    tries = 5

    def __init__(self, path: str) -> None:
        self.path = path

    def handle(self) -> None:
        record(self.path, f"attempt {self.attempts}")
        self.fail("no point retrying")

    def failed(self, exc: BaseException) -> None:
        record(self.path, "failed")


class Sleeper(farm.Job):
    """Sleeps in time.sleep (or a busy C-free loop with `spin`); records start and end."""

    def __init__(self, path: str, seconds: float, spin: bool = False) -> None:
        self.path, self.seconds, self.spin = path, seconds, spin

    def handle(self) -> None:
        record(self.path, f"start {self.attempts} {os.getpid()}")
        if self.spin:
            end = time.time() + self.seconds
            while time.time() < end:
                pass
        else:
            time.sleep(self.seconds)
        record(self.path, f"end {self.attempts} {os.getpid()}")

    def failed(self, exc: BaseException) -> None:
        record(self.path, f"failed {type(exc).__name__}")


class Swallower(farm.Job):
    """Catches every Exception: a timeout must still stop it."""

    def __init__(self, path: str, seconds: float) -> None:
        self.path, self.seconds = path, seconds

    def handle(self) -> None:
        record(self.path, f"start {self.attempts}")
        end = time.time() + self.seconds
        while time.time() < end:
            try:
                time.sleep(0.05)
            except Exception:
                pass
        record(self.path, "end")


class Stuck(farm.Job):
    """Blocks SIGALRM, then sleeps: like a C call that never comes back to Python."""

    def __init__(self, path: str, seconds: float) -> None:
        self.path, self.seconds = path, seconds

    def handle(self) -> None:
        import signal

        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        record(self.path, f"start {self.attempts}")
        time.sleep(self.seconds)


class Typed(farm.Job):
    """Checks the tagged payload types survive the wire."""

    def __init__(self, path: str, **values) -> None:
        self.path = path
        self.values = values

    def handle(self) -> None:
        record(self.path, repr(sorted((k, type(v).__name__, v) for k, v in self.values.items())))


@farm.job(queue="fn")
def add(path: str, a: int, b: int = 0, *rest: int, **extra: int) -> None:
    record(path, f"sum {a + b + sum(rest) + sum(extra.values())}")


def plain(path: str, word: str) -> None:
    """A plain function: a raw pushed job may name it."""
    record(path, f"plain {word}")


class Stamp(farm.Job):
    """Records `<tag> <time the job started>`: for latency checks."""

    def __init__(self, path: str, tag: str) -> None:
        self.path, self.tag = path, tag

    def handle(self) -> None:
        record(self.path, f"{self.tag} {time.time():.6f}")


class AlwaysFails(farm.Job):
    """No tries of its own: the worker's --tries decides."""

    def __init__(self, path: str) -> None:
        self.path = path

    def handle(self) -> None:
        record(self.path, f"attempt {self.attempts}")
        raise RuntimeError("always")


class SlowFailedHook(farm.Job):
    """Fails itself at once; its failed() hook takes `seconds` (a window for a second signal)."""

    def __init__(self, path: str, seconds: float) -> None:
        self.path, self.seconds = path, seconds

    def handle(self) -> None:
        record(self.path, f"handle {os.getpid()}")
        self.fail("on purpose")

    def failed(self, exc: BaseException) -> None:
        record(self.path, "failed-start")
        time.sleep(self.seconds)
        record(self.path, "failed-end")


class Outer(farm.Job):
    """A job class nested in another: `testjobs:Outer.Inner` is a job, `Outer.helper` is not."""

    class Inner(farm.Job):
        def __init__(self, path: str) -> None:
            self.path = path

        def handle(self) -> None:
            record(self.path, "inner")

    def helper(self, path: str) -> None:
        record(path, "helper ran")


def _private(path: str) -> None:
    record(path, "private ran")


from shutil import rmtree as imported_function  # noqa: E402  (a function NOT defined here)


class ClosesItsChannel(farm.Job):
    """amqp: on its first attempt, has RabbitMQ close its worker's consuming channel (an ack of
    a delivery tag the broker never sent: PRECONDITION_FAILED, as a consumer_timeout would)."""

    def __init__(self, path: str, tag: str) -> None:
        self.path, self.tag = path, tag

    def handle(self) -> None:
        record(self.path, f"{self.tag} {self.attempts} {os.getpid()}")
        if self.attempts == 1:
            from farm import app

            consumer = app.queue()._consumer
            with consumer.lock:
                consumer.channels["default"].basic_ack(delivery_tag=999_999)
            time.sleep(1.0)          # the channel is gone before the job ends


class KillsItsWorker(farm.Job):
    """SIGKILLs the worker running it, on every attempt."""

    def __init__(self, path: str) -> None:
        self.path = path

    def handle(self) -> None:
        import signal

        record(self.path, f"start {self.attempts} {os.getpid()}")
        os.kill(os.getpid(), signal.SIGKILL)


class KillsItsWorkerTwice(farm.Job):
    """SIGKILLs the worker running it on its first two starts (counted in `path`.starts), then
    records `done` in `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def handle(self) -> None:
        import signal

        record(self.path + ".starts", f"start {self.attempts} {os.getpid()}")
        with open(self.path + ".starts") as f:
            if len(f.read().splitlines()) <= 2:
                os.kill(os.getpid(), signal.SIGKILL)
        record(self.path, f"done {self.attempts} {os.getpid()}")


# -- jobs that record when things happened (tests/integration/test_worker_lifecycle.py) ----------


class Timed(farm.Job):
    """Writes `<tag> <attempt> <pid> <time>` to `path.started` as it starts and to `path` as it
    ends; in between it sleeps `seconds`, or, with `gate`, waits until that file exists."""

    def __init__(self, path: str, tag: str, seconds: float = 0.0, gate: str = "") -> None:
        self.path, self.tag, self.seconds, self.gate = path, tag, seconds, gate

    def handle(self) -> None:
        record(self.path + ".started", f"{self.tag} {self.attempts} {os.getpid()} {time.time():.6f}")
        if self.gate:
            deadline = time.monotonic() + 50          # within the default job timeout of 60 s
            while not os.path.exists(self.gate) and time.monotonic() < deadline:
                time.sleep(0.01)
        else:
            time.sleep(self.seconds)
        record(self.path, f"{self.tag} {self.attempts} {os.getpid()} {time.time():.6f}")

    def failed(self, exc: BaseException) -> None:
        record(self.path + ".failed", f"{self.tag} {type(exc).__name__} {time.time():.6f}")


class TimedFlaky(farm.Job):
    """Raises until attempt `succeed_on`; records `attempt <n> <time>` at each start."""

    tries = 3

    def __init__(self, path: str, succeed_on: int = 99) -> None:
        self.path, self.succeed_on = path, succeed_on

    def handle(self) -> None:
        record(self.path, f"attempt {self.attempts} {time.time():.6f}")
        if self.attempts < self.succeed_on:
            raise ValueError(f"boom on attempt {self.attempts}")

    def failed(self, exc: BaseException) -> None:
        record(self.path, f"failed {type(exc).__name__} {time.time():.6f}")


class Hog(farm.Job):
    """Keeps `mb` MB for the rest of its worker's life (so the RSS stays up), then sleeps `seconds`;
    writes `<tag> <attempt> <pid>` to `path` as it ends."""

    def __init__(self, path: str, tag: str, mb: int, seconds: float) -> None:
        self.path, self.tag, self.mb, self.seconds = path, tag, mb, seconds

    def handle(self) -> None:
        _HOGGED.append(b"\x01" * (self.mb << 20))        # written, so every page is resident
        time.sleep(self.seconds)
        record(self.path, f"{self.tag} {self.attempts} {os.getpid()}")


_HOGGED: list[bytes] = []


class RaisesBaseException(farm.Job):
    """Raises what is not an Exception (asyncio's CancelledError, as asyncio.run can)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def handle(self) -> None:
        import asyncio

        record(self.path, f"attempt {self.attempts}")
        raise asyncio.CancelledError("cancelled inside the job")

    def failed(self, exc: BaseException) -> None:
        record(self.path, f"failed {type(exc).__name__}")


# -- jobs for the guarantee tests (tests/integration/test_guarantees.py) and random-kill ledgers ----


class Ledger(farm.Job):
    """Appends `start <tag> <attempt> <pid>` as it starts and `end <tag> <attempt> <pid> <how>`
    as the attempt ends, `how` being `ok`, `release` (first attempt only, then `ok`), `raise`
    (every attempt) or `fail` (fails itself): the ledger of tests that kill workers at random."""

    tries = 3
    backoff = 0

    def __init__(self, path: str, tag: str, how: str = "ok", seconds: float = 0.0) -> None:
        self.path, self.tag, self.how, self.seconds = path, tag, how, seconds

    def handle(self) -> None:
        pid = os.getpid()
        record(self.path, f"start {self.tag} {self.attempts} {pid}")
        if self.seconds:
            time.sleep(self.seconds)
        how = "ok" if self.how == "release" and self.attempts > 1 else self.how
        record(self.path, f"end {self.tag} {self.attempts} {pid} {how}")
        if how == "release":
            self.release(0)
        elif how == "raise":
            raise RuntimeError(f"{self.tag} raises on purpose")
        elif how == "fail":
            self.fail(f"{self.tag} fails itself")


def started_after_insert(path: str, tag: str, inserted: float) -> None:
    """For rows another program inserts: writes `<tag> <inserted> <now>` (epoch seconds)."""
    record(path, f"{tag} {inserted:.6f} {time.time():.6f}")


class BlockedRead(farm.Job):
    """Reads from a socket nobody writes to, with no timeout: blocked in C, out of Python's reach."""

    def __init__(self, path: str) -> None:
        self.path = path

    def handle(self) -> None:
        import socket

        record(self.path, f"start {self.attempts} {os.getpid()}")
        a, b = socket.socketpair()
        a.recv(1)
        record(self.path, "end")


class Spawner(farm.Job):
    """Dispatches a `Record` child from inside the job (from a job thread under --concurrency)."""

    def __init__(self, path: str, tag: str) -> None:
        self.path, self.tag = path, tag

    def handle(self) -> None:
        farm.dispatch(Record(self.path, self.tag))


class Kept(Record):
    """A `Record` kept as done for a minute once it succeeds (`retention`: farm.job_status)."""

    retention = 60


# -- chains and batches (tests/integration/test_workflows.py) ---------------------------------
class Link(farm.Job):
    """A chain link or batch job: records `<tag> <attempt> <pid>`; fails (no retry) while the file
    `gate` is missing, when a gate is given."""

    tries = 1

    def __init__(self, path: str, tag: str, gate: str = "") -> None:
        self.path, self.tag, self.gate = path, tag, gate

    def handle(self) -> None:
        if self.gate and not os.path.exists(self.gate):
            raise RuntimeError(f"{self.tag}: the gate is closed")
        record(self.path, f"{self.tag} {self.attempts} {os.getpid()}")


class Barrier(farm.Job):
    """Arrives at a barrier directory, waits until `n` jobs have arrived, then records `tag`:
    jobs on different workers end at the same instant."""

    def __init__(self, path: str, tag: str, barrier: str, n: int, fail: bool = False) -> None:
        self.path, self.tag, self.barrier, self.n, self.fail_at_end = path, tag, barrier, n, fail

    def handle(self) -> None:
        os.makedirs(self.barrier, exist_ok=True)
        record(os.path.join(self.barrier, self.tag), str(os.getpid()))
        deadline = time.monotonic() + 20
        while len(os.listdir(self.barrier)) < self.n and time.monotonic() < deadline:
            time.sleep(0.002)
        record(self.path, f"{self.tag} {os.getpid()}")
        if self.fail_at_end:
            self.fail("failing at the barrier")


class Grower(farm.Job):
    """Adds `n` Link jobs to its own batch and records its batch id."""

    def __init__(self, path: str, tag: str, n: int) -> None:
        self.path, self.tag, self.n = path, tag, n

    def handle(self) -> None:
        assert self.batch is not None
        self.batch.add([Link(self.path, f"{self.tag}-child{i}") for i in range(self.n)])
        record(self.path, f"{self.tag} batch={self.batch.id}")


class WhatBatch(farm.Job):
    """Records the id of its batch (`none` outside one)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def handle(self) -> None:
        record(self.path, f"batch {self.batch.id if self.batch else 'none'}")
