"""jobfarm's own figures per backend: dispatch, drain (1 and 2 workers), idle latency, RSS.

Every drain checks that each job ran exactly once. Prints a table and appends JSON lines to
bench-results/results.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FARMCTL = str(Path(sys.executable).parent / "farmctl")
URLS = {
    "sqlite": None,
    "postgresql": os.environ.get("FARM_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    "mysql": os.environ.get("FARM_BENCH_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test"),
    "amqp": os.environ.get("FARM_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F"),
}


class Run:
    def __init__(self, backend: str, tmp: Path) -> None:
        self.backend, self.tmp = backend, tmp
        self.out = tmp / "out"
        self.out.mkdir()
        t = "bench_" + uuid.uuid4().hex[:8]
        self.table = t
        if backend == "amqp":
            conn = (f"  main: {{driver: amqp, url: '{URLS['amqp']}', store: store}}\n"
                    f"  store: {{driver: database, url: 'sqlite:///{tmp}/store.db', table: {t}, failed_table: f{t}}}\n")
        else:
            url = URLS[backend] or f"sqlite:///{tmp}/farm.db"
            conn = f"  main: {{driver: database, url: '{url}', table: {t}, failed_table: f{t}}}\n"
        self.manifest = tmp / "farm.yaml"
        self.manifest.write_text(f"imports: [benchjobs]\ndefault: main\nconnections:\n{conn}")
        self.queue = "q" + uuid.uuid4().hex[:8]
        self.env = dict(os.environ, FARM_BENCH_OUT=str(self.out), FARM_CONFIG=str(self.manifest),
                        PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]))
        import farm

        farm.configure(self.manifest)

    def records(self) -> list[str]:
        lines: list[str] = []
        for f in self.out.glob("*.txt"):
            lines.extend(f.read_text().splitlines())
        return lines

    def reset(self) -> None:
        for f in self.out.glob("*.txt"):
            f.unlink()

    def worker(self, *extra: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([FARMCTL, "work", "--queue", self.queue, "--log-level", "warning", *extra],
                                env=self.env, cwd=self.tmp)

    def dispatch_rate(self, n: int) -> float:
        import farm
        from benchjobs import Tick

        farm.dispatch(Tick(-1), queue=self.queue)      # connect and create the queue first
        t = time.perf_counter()
        for i in range(n):
            farm.dispatch(Tick(i), queue=self.queue)
        rate = n / (time.perf_counter() - t)
        self.drain(1, expect=n + 1)
        return rate

    def dispatch_many_rate(self, n: int) -> float:
        import farm
        from benchjobs import Tick

        jobs = [Tick(i) for i in range(n)]
        t = time.perf_counter()
        for i in range(0, n, 1000):
            farm.dispatch_many(jobs[i:i + 1000], queue=self.queue)
        rate = n / (time.perf_counter() - t)
        self.drain(2, expect=n)
        return rate

    def drain(self, workers: int, expect: int) -> float:
        """Start `workers` processes on a queue of `expect` jobs; seconds until all exit."""
        self.reset()
        t = time.perf_counter()
        procs = [self.worker("--stop-when-empty") for _ in range(workers)]
        for p in procs:
            if p.wait(600) != 0:
                raise SystemExit(f"a worker exited {p.returncode}")
        seconds = time.perf_counter() - t
        counts = Counter(self.records())
        if len(counts) != expect or set(counts.values()) != {1}:
            dup = sum(1 for v in counts.values() if v > 1)
            raise SystemExit(f"{self.backend}: exactly-once check failed: {len(counts)} of {expect} ran, {dup} twice")
        return seconds

    def drain_rate(self, n: int, workers: int) -> float:
        import farm
        from benchjobs import Tick

        for i in range(0, n, 1000):
            farm.dispatch_many([Tick(j) for j in range(i, min(n, i + 1000))], queue=self.queue)
        return n / self.drain(workers, expect=n)

    def latency(self, n: int) -> tuple[float, float, float]:
        """p50, p99 (ms) from dispatch to job start on an idle worker, and its idle RSS (MB)."""
        import farm
        from benchjobs import Stamp

        self.reset()
        p = self.worker("--sleep", "3")
        time.sleep(2.0)
        rss = psutil.Process(p.pid).memory_info().rss / 1048576
        sent = {}
        for i in range(n):
            sent[str(i)] = time.time()
            farm.dispatch(Stamp(i), queue=self.queue)
            time.sleep(0.02)
        deadline = time.time() + 30
        while len(self.records()) < n and time.time() < deadline:
            time.sleep(0.05)
        p.terminate()
        p.wait(30)
        lat = sorted((float(t) - sent[k]) * 1000 for k, t in (line.split() for line in self.records()))
        if len(lat) != n:
            raise SystemExit(f"{self.backend}: latency run lost jobs: {len(lat)} of {n}")
        return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))], rss


def bench(backend: str, quick: bool) -> dict[str, float]:
    n = 2000 if quick else 10000
    tmp = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    try:
        r = Run(backend, tmp)
        fig = {
            "dispatch_per_s": r.dispatch_rate(500 if quick else 2000),
            "dispatch_many_per_s": r.dispatch_many_rate(5000 if quick else 20000),
            "drain_1_per_s": r.drain_rate(n, 1),
            "drain_2_per_s": r.drain_rate(n, 2),
        }
        p50, p99, rss = r.latency(100 if quick else 200)
        fig.update(latency_p50_ms=p50, latency_p99_ms=p99, idle_rss_mb=rss)
        return fig
    finally:
        from farm import app

        app._close_all()
        if backend == "amqp":
            import pika

            conn = pika.BlockingConnection(pika.URLParameters(URLS["amqp"]))
            conn.channel().queue_delete(r.queue)
            conn.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", default="sqlite,postgresql,mysql,amqp")
    ap.add_argument("--quick", action="store_true", help="smaller counts")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    results = ROOT / "bench-results"
    results.mkdir(exist_ok=True)
    cols = ["dispatch_per_s", "dispatch_many_per_s", "drain_1_per_s", "drain_2_per_s",
            "latency_p50_ms", "latency_p99_ms", "idle_rss_mb"]
    print(f"{'backend':12}" + "".join(f"{c:>21}" for c in cols))
    for backend in args.only.split(","):
        fig = bench(backend, args.quick)
        print(f"{backend:12}" + "".join(f"{fig[c]:>21.1f}" for c in cols), flush=True)
        with (results / "results.jsonl").open("a") as f:
            f.write(json.dumps({"system": "jobfarm", "backend": backend, "quick": args.quick,
                                "time": time.time(), **fig}) + "\n")


if __name__ == "__main__":
    main()
