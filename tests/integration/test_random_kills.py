"""Issue 21: workers SIGKILLed at random moments, proven by a ledger the jobs write.

Not only mid-job: the jobs are a few milliseconds long or none, so a kill at a random moment
lands as often between jobs (while the worker claims, acks, releases or fails one) as inside
one, and some workers get a TERM first and the KILL while they hand their claims back. Every
job appends `start <tag> <attempt> <pid>` and `end <tag> <attempt> <pid> <how>` (O_APPEND, so
the file's order is the order things happened in). The README's guarantees, read off it:

- at least once: every job ran to its end (a succeeding or releasing job has an `end ... ok`,
  a raising or failing one is in the failed table), and nothing is left in the queue;
- a job is started again only after a start by a worker that was SIGKILLed, or after an
  attempt that released itself or raised with tries left (a retry); so a job whose worker
  finished it and lived is never run again, and two live workers never share one.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

import farm
from conftest import DB_BACKENDS
from testjobs import Ledger

JOBS = 300
KILLS = 20
WORKERS = 3
TRIES = Ledger.tries


def spawn(f, logs: Path) -> subprocess.Popen:
    """A worker logging to a file of its own (a pipe nobody reads could fill up and stall it)."""
    logs.mkdir(exist_ok=True)
    n = len(list(logs.iterdir()))
    with open(logs / f"worker{n}.log", "wb") as err:
        p = subprocess.Popen([sys.executable, "-m", "farm", "work", "--sleep", "0.05", "--log-level", "warning"],
                             cwd=f.tmp, env=f.env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=err)
    f.procs.append(p)
    return p


def read_ledger(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_workers_killed_at_random_moments_lose_no_job_and_rerun_only_what_a_killed_worker_started(
        make_farm, backend):
    seed = int(os.environ.get("FARM_TEST_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    why = f"(FARM_TEST_SEED={seed})"
    # Given 300 short jobs (most succeed, some release themselves once, some raise on every
    # attempt, some fail themselves) sent by a producer in chunks while three workers run
    # (retry_after 2 s, so a killed worker's claims come back within the test)
    f = make_farm(backend, retry_after=2)
    ledger, logs = f.tmp / "ledger.txt", f.tmp / "logs"
    how = {f"j{i}": rng.choices(["ok", "release", "raise", "fail"], weights=[70, 10, 10, 10])[0]
           for i in range(JOBS)}
    seconds = {tag: rng.choice([0.0, 0.0, 0.001, 0.005, 0.02, 0.1]) for tag in how}
    tags = list(how)
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for n in range(0, JOBS, 10):
                farm.dispatch_many([Ledger(str(ledger), t, how[t], seconds[t]) for t in tags[n:n + 10]])
                time.sleep(rng.uniform(0.05, 0.35))
        except BaseException as e:
            errors.append(e)

    live = [spawn(f, logs) for _ in range(WORKERS)]
    producer = threading.Thread(target=produce)
    producer.start()
    # When a worker that has started working is killed with SIGKILL every 5 to 200 ms (a
    # third of them get a TERM first: the KILL lands while they wind down and hand claims
    # back), 20 times, and each is replaced by a new worker at once; every fourth kill aims
    # at a worker inside a job (random moments alone can miss that on a slow database)
    killed: set[int] = set()
    deadline = time.monotonic() + 60

    def inside_a_job() -> list[subprocess.Popen]:
        last = {line[3]: line[0] for line in read_ledger(ledger)}
        return [p for p in live if last.get(str(p.pid)) == "start"]

    try:
        for k in range(KILLS):
            working = set()
            while not working:
                assert time.monotonic() < deadline, f"workers did not get to work {why}"
                seen = {line[3] for line in read_ledger(ledger) if line[0] == "start"}
                working = {p for p in live if str(p.pid) in seen}
                time.sleep(0.01)
            aimed: list[subprocess.Popen] = []
            if k % 4 == 0:
                until = time.monotonic() + 2
                while not aimed and time.monotonic() < until:
                    aimed = inside_a_job()
                    time.sleep(0.002)
            else:
                time.sleep(rng.uniform(0.005, 0.2))
            victim = rng.choice(sorted(aimed or working, key=lambda p: p.pid))
            if not aimed and rng.random() < 1 / 3:
                victim.send_signal(signal.SIGTERM)
                time.sleep(rng.uniform(0.0, 0.05))
            victim.send_signal(signal.SIGKILL)
            if victim.wait(10) == -signal.SIGKILL:
                killed.add(victim.pid)
            live.remove(victim)
            live.append(spawn(f, logs))
    finally:
        producer.join(60)
    assert not producer.is_alive() and errors == [], errors
    # Then the workers left finish everything: each job ran to its end or was failed, and
    # nothing is left in the queue (the killed workers' claims lapsed and were run)

    def failed_tags() -> dict[str, str]:
        import json

        return {json.loads(e.body)["data"]["tag"]: e.exception.splitlines()[0] for e in f.store().failed()}

    def ok_tags() -> set[str]:
        return {line[1] for line in read_ledger(ledger) if line[0] == "end" and line[4] == "ok"}

    def settled() -> bool:
        counts = f.queue().counts().values()
        return (not any(c["ready"] + c["delayed"] + c["reserved"] for c in counts)
                and ok_tags() | set(failed_tags()) >= set(how))

    deadline = time.monotonic() + 45
    while not settled() and time.monotonic() < deadline:       # if not, the checks below say why
        time.sleep(0.1)
    for p in live:
        p.send_signal(signal.SIGTERM)
    for p in live:
        assert p.wait(30) == 0, f"a live worker exited {p.returncode} {why}"
    assert len(killed) >= KILLS // 2, f"only {len(killed)} workers were SIGKILLed {why}"

    lines = read_ledger(ledger)
    starts: dict[str, list[tuple[int, str]]] = defaultdict(list)
    ends: dict[tuple[str, int, str], str] = {}
    for line in lines:
        if line[0] == "start":
            starts[line[1]].append((int(line[2]), line[3]))
        else:
            ends[(line[1], int(line[2]), line[3])] = line[4]
    failed, ok = failed_tags(), ok_tags()

    def killed_starts(tag: str) -> int:
        return sum(pid in {str(k) for k in killed} for _, pid in starts[tag])

    # A job was started again only after a start by a killed worker or a retry
    for tag, runs in starts.items():
        for (attempt, pid), again in zip(runs, runs[1:]):
            end = ends.get((tag, attempt, pid))
            retried = end == "release" or (end == "raise" and attempt < TRIES)
            assert int(pid) in killed or retried, \
                f"{tag} ({how[tag]}) started again by {again[1]} after attempt {attempt} by {pid}, which " \
                f"lived and ended it {end!r}: {runs} {why}"
    # and each ran to its end
    for tag, kind in how.items():
        # a job failed for its workers' deaths must have had more than two of them (README)
        if failed.get(tag, "").startswith("MaxAttemptsExceeded"):
            assert killed_starts(tag) >= 3, \
                f"{tag} ({kind}) failed as {failed[tag]!r} but was started by {killed_starts(tag)} killed workers " \
                f"({starts[tag]}) {why}"
            continue
        assert starts[tag], f"{tag} ({kind}) never started {why}"
        if kind in ("ok", "release"):
            assert tag in ok and tag not in failed, f"{tag} ({kind}): ended ok {tag in ok}, failed {failed.get(tag)} {why}"
        else:
            assert tag in failed and tag not in ok, f"{tag} ({kind}): failed {failed.get(tag)}, ended ok {tag in ok} {why}"
            assert kind in {ends.get((tag, a, pid)) for a, pid in starts[tag]}, f"{tag} never ran to its end {why}"
    left = {q: c for q, c in f.queue().counts().items() if c["ready"] + c["delayed"] + c["reserved"]}
    assert not left, f"jobs left in the queue: {left} {why}"
    # The kills landed between jobs (claim, ack, release, fail) as well as inside them
    last = {}
    for line in lines:
        last[line[3]] = line[0]
    between = sum(last.get(str(pid)) == "end" for pid in killed)
    inside = sum(last.get(str(pid)) == "start" for pid in killed)
    assert between >= 1 and inside >= 1, f"kills between jobs {between}, inside a job {inside} {why}"
