"""Weighted queues (issue #19): shares and drain rate of one weighted worker against strict order.

N no-op jobs (`benchjobs.Tick`) spread evenly over critical, default and low are drained by
one `farmctl work --stop-when-empty` on `critical,default,low` (strict order), then again on
`critical:6,default:3,low:1` (weighted); `--runs` times each, in turn. The rate is jobs per
second from the first job's start to the last one's (as harness.py's drain); the shares are
those of the jobs the weighted worker ran while every queue still had some (its file is in
the order it ran them). Prints one JSON line:
    {"backend", "jobs", "runs", "strict_per_s", "weighted_per_s", "ratio", "shares", "weights", "cpu_s"}
rates being the median of the runs, shares those of the last weighted run, and `cpu_s` the
median CPU seconds of the worker process per drain (user + system; the server's not included).

    .venv/bin/python bench/weights.py --backend sqlite --jobs 10000 [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "systems")]

import jobfarm_sys  # noqa: E402

BACKENDS = ("sqlite", "postgresql", "mysql", "amqp", "redis")
WEIGHTS = {"critical": 6, "default": 3, "low": 1}


def drain(system: Any, names: list[str], flag: str, jobs: int, out: Path) -> tuple[list[tuple[int, float]], float]:
    """Queue `jobs` Ticks (job n on queue n % 3), run one worker on `flag` until they are done;
    its records, and the CPU seconds the worker used (less noisy than a shared machine's clock)."""
    import benchjobs
    import farm

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for start in range(0, jobs, 1000):
        batch = range(start, min(jobs, start + 1000))
        for i, name in enumerate(names):
            farm.dispatch_many([benchjobs.Tick(n) for n in batch if n % len(names) == i], queue=name)
    cmd = [jobfarm_sys.FARMCTL, "work", "--queue", flag, "--stop-when-empty", "--log-level", "warning"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, env=system.env, capture_output=True, text=True, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"bench/weights.py: the worker exited {done.returncode}: {done.stderr.strip()[-500:]}")
    rows = [(int(n), float(t)) for f in out.glob("*.txt") for n, t in (x.split() for x in f.read_text().splitlines())]
    if len(rows) != jobs or len({n for n, _ in rows}) != jobs:
        raise SystemExit(f"bench/weights.py: {len(rows)} records for {jobs} jobs")
    return rows, cpu


def rate(rows: list[tuple[int, float]]) -> float:
    times = [t for _, t in rows]
    return (len(rows) - 1) / max(max(times) - min(times), 1e-9)


def shares(rows: list[tuple[int, float]], per_queue: int) -> dict[str, float]:
    """Each queue's share of the jobs run before the first queue ran out."""
    names = list(WEIGHTS)
    seen: Counter[str] = Counter()
    for n, _ in rows:                    # one worker, one file: the lines are in the order it ran them
        name = names[n % len(names)]
        seen[name] += 1
        if seen[name] >= per_queue:
            break
    total = sum(seen.values())
    return {name: round(seen[name] / total, 4) for name in names}


def run(backend: str, jobs: int, runs: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="farm-weights-"))
    out = tmp / "out"
    system = jobfarm_sys.make(backend, tmp, out)
    suffix = uuid.uuid4().hex[:6]
    names = [f"{name}_{suffix}" for name in WEIGHTS]     # a run's own queues (amqp, redis: shared servers)
    strict = ",".join(names)
    weighted = ",".join(f"{n}:{w}" for n, w in zip(names, WEIGHTS.values()))
    rates: dict[str, list[float]] = {"strict": [], "weighted": []}
    cpu: dict[str, list[float]] = {"strict": [], "weighted": []}
    last: list[tuple[int, float]] = []
    try:
        for _ in range(runs):
            for kind, flag in (("strict", strict), ("weighted", weighted)):
                last, seconds = drain(system, names, flag, jobs, out)
                rates[kind].append(rate(last))
                cpu[kind].append(seconds)
    finally:
        _close(system, backend, names)
        shutil.rmtree(tmp, ignore_errors=True)
    strict_rate, weighted_rate = statistics.median(rates["strict"]), statistics.median(rates["weighted"])
    last.sort(key=lambda r: r[1])
    return {"backend": backend, "jobs": jobs, "runs": runs, "strict_per_s": round(strict_rate),
            "weighted_per_s": round(weighted_rate), "ratio": round(weighted_rate / strict_rate, 3),
            "shares": shares(last, jobs // len(WEIGHTS)), "weights": WEIGHTS,
            "cpu_s": {k: round(statistics.median(v), 3) for k, v in cpu.items()}}


def _close(system: Any, backend: str, names: list[str]) -> None:
    if backend == "amqp":                # Jobfarm.close deletes its own queue name only
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(jobfarm_sys.URLS["amqp"]))
        ch = conn.channel()
        for name in names:
            ch.queue_delete(name)
        conn.close()
    system.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=BACKENDS, default="sqlite")
    ap.add_argument("--jobs", type=int, default=10000, help="jobs per drain, spread evenly over the queues")
    ap.add_argument("--runs", type=int, default=3, help="drains of each kind, in turn (the median rate)")
    a = ap.parse_args()
    if a.jobs < 30 or a.runs < 1:
        ap.error("--jobs at least 30, --runs at least 1")
    print(json.dumps(run(a.backend, a.jobs, a.runs)))


if __name__ == "__main__":
    main()
