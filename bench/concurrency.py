"""scripts/bench --concurrency: threads inside one worker (`farmctl work --concurrency N`, issue 20).

1. Jobs that wait on I/O (`benchjobs.Nap`, 50 ms of sleep), all queued before the workers
   start, drained by 50 single-job worker processes started together, then by one process
   with --concurrency 50 (both with --stop-when-empty): jobs per second from the first job's
   start to the last one's end (written by the jobs, as harness.py's drain), and the peak of
   the summed RSS of every worker process and its children, sampled every 100 ms.
2. No-op jobs: harness.py's drain by one worker with no flag, with --concurrency 1 and with
   --concurrency 4, a few runs each in turn; the median of each.

Runs in .venv, like run_system.py, and prints one JSON line (main.py prints the tables):
    python bench/concurrency.py --backend sqlite [--quick]
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "systems")]

import harness  # noqa: E402

PROCESSES = 50                 # (a): this many single-job processes; (b): one with this many threads
NAPS = {False: 2000, True: 1000}          # sleeping jobs, by --quick
RUNS = {False: 5, True: 3}                # no-op drains of each kind, by --quick
NOOP = {"none": [], "c1": ["--concurrency", "1"], "c4": ["--concurrency", "4"]}
GOAL_THROUGHPUT = 0.9          # threads' jobs/s at least this share of the processes'
GOAL_RSS = 10.0                # the processes' RSS at least this many times the threads'


Flags = harness.Flags          # a system whose worker commands carry extra flags


def nap_drain(system: Any, n: int, workers: int, flags: list[str], out: Path, log: Path) -> dict[str, Any]:
    """n queued Nap jobs run by `workers` processes with --stop-when-empty, until all exited."""
    bench = harness.Bench(Flags(system, "--stop-when-empty", *flags), out, log)
    system.reset()
    for i in range(0, n, 1000):
        system.dispatch_many("nap", range(i, min(n, i + 1000)))
    bench.records.clear()
    logged = log.stat().st_size if log.exists() else 0
    peak = 0.0
    started = time.monotonic()
    procs = bench.start(workers)
    try:
        while live := [p for p in procs if p.poll() is None]:
            if time.monotonic() - started > 600:
                raise harness.Failed(f"{len(live)} workers still running after 600 s")
            try:
                peak = max(peak, bench.tree_rss_mb(live))
            except psutil.Error:        # one exited between poll() and the sample
                pass
            time.sleep(0.1)
        wall = time.monotonic() - started
    finally:
        bench.stop(procs)
    if any(p.returncode for p in procs):
        raise harness.Failed(f"worker exit statuses {sorted({p.returncode for p in procs})}")
    rows = bench.exactly_once(range(-n, n))
    first = min(t for i, t in rows if i >= 0)
    last = max(t for i, t in rows if i < 0)
    # the workers log warnings only: e.g. PostgreSQL's "too many clients" for 50 processes of two
    # connections each (worker and heart) against its default max_connections of 100, and the back-off
    warnings = log.read_bytes()[logged:].decode(errors="replace").splitlines() if log.exists() else []
    return {"per_s": n / (last - first), "rss_mb": peak, "wall_s": wall, "warnings": len(warnings),
            "warning": warnings[0][:300] if warnings else ""}


def measure(system: Any, quick: bool, out: Path, log: Path) -> dict[str, Any]:
    import benchjobs

    system.kinds["nap"] = benchjobs.Nap
    n = NAPS[quick]
    fig: dict[str, Any] = {"figure": "concurrency", "nap_jobs": n, "nap_processes": PROCESSES}
    for key, workers, flags in (("procs", PROCESSES, []), ("threads", 1, ["--concurrency", str(PROCESSES)])):
        fig.update({f"nap_{key}_{k}": v for k, v in nap_drain(system, n, workers, flags, out, log).items()})
    fig["nap_throughput_ratio"] = fig["nap_threads_per_s"] / fig["nap_procs_per_s"]
    fig["nap_rss_ratio"] = fig["nap_procs_rss_mb"] / fig["nap_threads_rss_mb"]
    drain = harness.QUICK.drain if quick else harness.Counts.drain
    rates: dict[str, list[float]] = {k: [] for k in NOOP}
    for _ in range(RUNS[quick]):
        for key, flags in NOOP.items():
            rates[key].append(harness.Bench(Flags(system, *flags), out, log).drain_rate(drain, 1))
    fig.update(noop_jobs=drain, noop_runs=RUNS[quick])
    fig.update({f"noop_{k}_per_s": statistics.median(v) for k, v in rates.items()})
    fig["noop_c1_ratio"] = fig["noop_c1_per_s"] / fig["noop_none_per_s"]
    return fig


def print_table(rows: list[dict], labels: dict[str, str]) -> None:
    ok = harness.split_failed(rows, labels)
    if not ok:
        return
    r0 = ok[0]

    def goal(ratio: float, target: float) -> str:
        return f"{ratio:.2f}x " + ("met" if ratio >= target else "missed")

    print(f"\nsleeping jobs: {r0['nap_jobs']:,} of 50 ms each; (a) {r0['nap_processes']} processes of one job "
          f"at a time, (b) one process with --concurrency {r0['nap_processes']}")
    print(f"{'':12}{'(a) jobs/s':>12}{'(b) jobs/s':>12}{'b/a, goal>=0.9':>18}"
          f"{'(a) RSS MB':>12}{'(b) RSS MB':>12}{'a/b, goal>=10':>18}{'wall s a / b':>16}")
    for r in ok:
        wall = f"{r['nap_procs_wall_s']:.1f} / {r['nap_threads_wall_s']:.1f}"
        print(f"{labels[r['backend']]:12}{r['nap_procs_per_s']:>12,.0f}{r['nap_threads_per_s']:>12,.0f}"
              f"{goal(r['nap_throughput_ratio'], GOAL_THROUGHPUT):>18}{r['nap_procs_rss_mb']:>12,.0f}"
              f"{r['nap_threads_rss_mb']:>12.1f}{goal(r['nap_rss_ratio'], GOAL_RSS):>18}{wall:>16}")
    for r in ok:
        for key, side in (("procs", "a"), ("threads", "b")):
            if r.get(f"nap_{key}_warnings"):
                print(f"  {labels[r['backend']]} ({side}): {r[f'nap_{key}_warnings']} lines of worker warnings, "
                      f"the first: {r[f'nap_{key}_warning']}")
    print(f"\nno-op drain, one worker: {r0['noop_jobs']:,} jobs, median of {r0['noop_runs']} runs each")
    print(f"{'':12}{'no flag/s':>12}{'--conc 1/s':>12}{'1 / no flag':>13}{'--conc 4/s':>12}")
    for r in ok:
        print(f"{labels[r['backend']]:12}{r['noop_none_per_s']:>12,.0f}{r['noop_c1_per_s']:>12,.0f}"
              f"{r['noop_c1_ratio']:>12.3f}x{r['noop_c4_per_s']:>12,.0f}")


def main() -> int:
    return harness.jobfarm_figure("concurrency", lambda system, quick, tmp, out, log: measure(system, quick, out, log), __doc__)


if __name__ == "__main__":
    sys.exit(main())
