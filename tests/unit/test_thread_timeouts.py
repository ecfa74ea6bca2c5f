"""The hand-off between the worker's thread raising JobTimeout and a job thread ending a job:
a timeout lands inside the job it was meant for, or not at all, never in the next one."""
from __future__ import annotations

import queue
import random
import sys
import threading
import time

from farm.errors import JobTimeout
from farm.worker.runner import Attempt
from farm.worker.threads import Running, call


class Spin:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def handle(self) -> None:
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass


def test_a_timeout_raced_against_the_end_of_a_job_never_reaches_the_next_one():
    # Given one job thread running 1,500 short jobs one after another, as a worker's thread does
    todo: queue.SimpleQueue = queue.SimpleQueue()
    results: list = []
    strays: list[BaseException] = []

    def serve() -> None:
        while True:
            try:
                run = todo.get()
                if run is None:
                    return
                results.append((run, call(run)))
            except BaseException as e:      # a timeout that escaped call(): what must never happen
                strays.append(e)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)         # hand the GIL over often, so the race has many chances
    rng = random.Random(7)
    runs = []
    for _ in range(1500):
        seconds = rng.uniform(0, 0.001)
        run = Running(Attempt(reserved=None, doc={}, job=Spin(seconds), timeout=1, started=0))
        runs.append(run)
        todo.put(run)
        # When the worker's thread raises JobTimeout in it at a random moment, often as the job ends
        deadline = time.monotonic() + 10
        while run.thread is None:
            assert time.monotonic() < deadline, f"job {len(runs)} never started: {strays}"
            time.sleep(0)
        time.sleep(rng.uniform(0, seconds * 1.5))
        run.interrupt(JobTimeout)          # as the worker's thread does at a job's timeout
    todo.put(None)
    t.join(30)
    sys.setswitchinterval(switch)
    # Then every timeout was caught inside the job it was raised for
    assert strays == []
    assert len(results) == 1500
    outcome = {id(run): exc for run, exc in results}
    interrupted = [r for r in runs if r.interrupted]
    assert interrupted, "the test never raced a timeout"
    for run in runs:
        exc = outcome[id(run)]
        # an uninterrupted job never sees a JobTimeout; an interrupted one may have ended first
        assert exc is None or (run.interrupted and isinstance(exc, JobTimeout)), (run.interrupted, exc)
    assert any(isinstance(outcome[id(r)], JobTimeout) for r in interrupted)
