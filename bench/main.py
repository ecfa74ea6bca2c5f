"""scripts/bench: jobfarm's figures per backend, the peers' beside them, the raw broker's floor.

Each system runs in its own environment (jobfarm in .venv, the peers in .bench-venv) through
bench/run_system.py, so one library's imports never slow another; this file only starts those
runs one after the other, prints the tables and appends every figure to bench-results/results.jsonl.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = ROOT / "bench-results"
JOBFARM_PY = ROOT / ".venv" / "bin" / "python"
PEERS_PY = ROOT / ".bench-venv" / "bin" / "python"

BACKENDS = ["sqlite", "postgresql", "mysql", "amqp", "redis"]
PEERS = {"amqp": ["celery", "dramatiq"], "sqlite": ["huey"], "postgresql": ["pgqueuer", "procrastinate"],
         "redis": ["rq", "celery", "dramatiq"], "mysql": []}
# not a peer's default, so never the "best peer": the same guarantee as farm.dispatch, for reference
VARIANTS = {"amqp": ["dramatiq_confirm"]}
LABELS = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MariaDB", "amqp": "RabbitMQ", "redis": "Redis"}
COLUMNS = [("dispatch_per_s", "dispatch/s", True), ("dispatch_many_per_s", "bulk/s", True),
           ("drain_1_per_s", "drain 1w/s", True), ("drain_2_per_s", "drain 2w/s", True),
           ("latency_p50_ms", "p50 ms", False), ("latency_p99_ms", "p99 ms", False),
           ("idle_rss_mb", "RSS MB", False)]


def run(python: Path, system: str, backend: str, quick: bool, soak: bool) -> dict:
    if system in ("concurrency", "workflows"):   # bench/concurrency.py, bench/workflows.py
        argv = [str(python), str(HERE / f"{system}.py"), "--backend", backend]
    else:
        argv = [str(python), str(HERE / "run_system.py"), "--system", system, "--backend", backend]
    argv += ["--quick"] * quick + ["--soak"] * soak
    print(f"  running {system} on {backend} ...", file=sys.stderr, flush=True)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"system": system, "backend": backend, "error": (done.stderr or done.stdout).strip()[-1500:]}
    return json.loads(lines[-1])


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def print_own(rows: list[dict]) -> None:
    print(f"\njobfarm{'':5}" + "".join(f"{label:>13}" for _, label, _ in COLUMNS) + f"{'soak MB':>16}")
    for r in rows:
        if "error" in r:
            print(f"{LABELS[r['backend']]:12} FAILED: {r['error']}")
            continue
        soak = (f"{r['soak_rss_first_mb']:.1f}->{r['soak_rss_peak_mb']:.1f}" if "soak_rss_peak_mb" in r else "-")
        print(f"{LABELS[r['backend']]:12}" + "".join(f"{fmt(r.get(c)):>13}" for c, _, _ in COLUMNS) + f"{soak:>16}")


def better(ours: float, theirs: float, higher: bool) -> float:
    """How many times better jobfarm's figure is (above 1: jobfarm ahead)."""
    return ours / theirs if higher else theirs / ours


def compare(own: dict[str, dict], peers: list[dict]) -> list[dict]:
    """Per backend and figure: jobfarm's, the best peer's, and the ratio (a backend jobfarm was
    not run on is set against jobfarm's best backend for each figure)."""
    ok_own = [r for r in own.values() if "error" not in r]
    table = []
    for backend in [b for b in PEERS if PEERS[b]]:
        ok_peers = [p for p in peers if p["backend"] == backend and p["system"] in PEERS[backend]
                    and "error" not in p]
        if not ok_peers or not ok_own:
            continue
        for col, label, higher in COLUMNS:
            def score(r: dict) -> float:
                return r[col] if higher else -r[col]
            best = max(ok_peers, key=score)
            ours = own.get(backend) or max(ok_own, key=score)
            if "error" in ours:
                continue
            note = "" if ours["backend"] == backend else f" (jobfarm on {LABELS[ours['backend']]})"
            table.append({"backend": backend, "figure": col, "label": label, "jobfarm": ours[col],
                          "peer": best["system"], "peer_value": best[col],
                          "ratio": better(ours[col], best[col], higher), "note": note})
    return table


def print_peers(table: list[dict], peers: list[dict]) -> None:
    print(f"\n{'backend':12}{'figure':13}{'jobfarm':>11}{'best peer':>24}{'jobfarm is':>12}")
    for t in table:
        peer = f"{fmt(t['peer_value'])} {t['peer']}"
        print(f"{LABELS[t['backend']]:12}{t['label']:13}{fmt(t['jobfarm']):>11}{peer:>24}"
              f"{t['ratio']:>11.2f}x{t['note']}")
    print(f"\n{'peer':25}" + "".join(f"{label:>13}" for _, label, _ in COLUMNS))
    for p in peers:
        name = f"{p['system']}/{p['backend']}" + ("*" if p["system"] not in PEERS[p["backend"]] else "")
        if "error" in p:
            print(f"{name:25} FAILED: {p['error']}")
            continue
        print(f"{name:25}" + "".join(f"{fmt(p.get(c)):>13}" for c, _, _ in COLUMNS))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", default=None, help="backends, comma-separated (default: all; "
                    "sqlite,postgresql with --concurrency)")
    ap.add_argument("--quick", action="store_true", help="smaller counts, no 100,000-job soak")
    ap.add_argument("--peers", action="store_true", help="run the peers on the same backends too")
    ap.add_argument("--floor", action="store_true", help="measure the raw broker with no queue library")
    ap.add_argument("--chart", default=None, help="draw the figures of this run to a PNG at this path")
    ap.add_argument("--concurrency", action="store_true",
                    help="only `farmctl work --concurrency N` against processes (bench/concurrency.py)")
    ap.add_argument("--workflows", action="store_true",
                    help="only what each workflow feature costs a job (bench/workflows.py)")
    ap.add_argument("--scale", action="store_true",
                    help="only how the cost grows with the work: backlogs, delayed jobs, many queues, "
                         "idle workers, RSS (bench/scale.py, issue 19)")
    ap.add_argument("--section", default=None, help="with --scale: sections, comma-separated "
                    "(backlog,delayed,queues,idle,rss,long,weights; default: all but long)")
    ap.add_argument("--long-jobs", type=int, default=None,
                    help="with --scale: jobs through one PostgreSQL table (section long; default 10,000,000)")
    args = ap.parse_args()
    if (args.section or args.long_jobs) and not args.scale:
        ap.error("--section and --long-jobs go with --scale")
    if args.scale:
        import scale                # bench/scale.py, bench/scale_report.py
        import scale_report

        rows = scale.run_all(JOBFARM_PY, (args.only or ",".join(BACKENDS)).split(","), args.quick,
                             args.section, args.long_jobs)
        scale_report.print_table(rows, LABELS)
        return finish(rows, uuid.uuid4().hex[:12], args.chart, "scale_chart.py")
    narrow = args.concurrency or args.workflows
    backends = (args.only or ",".join(["sqlite", "postgresql"] if narrow else BACKENDS)).split(",")
    run_id = uuid.uuid4().hex[:12]
    RESULTS.mkdir(exist_ok=True)
    rows: list[dict] = []
    if args.concurrency:
        rows = [run(JOBFARM_PY, "concurrency", b, args.quick, soak=False) for b in backends]
        import concurrency          # bench/concurrency.py, beside this file (on sys.path as a script)

        concurrency.print_table(rows, LABELS)
        return finish(rows, run_id, None)
    if args.workflows:
        rows = [run(JOBFARM_PY, "workflows", b, args.quick, soak=False) for b in backends]
        import workflows            # bench/workflows.py

        workflows.print_table(rows, LABELS)
        return finish(rows, run_id, None)
    own = {b: run(JOBFARM_PY, "jobfarm", b, args.quick, soak=not args.quick) for b in backends}
    rows += own.values()
    print_own(list(own.values()))
    peers: list[dict] = []
    if args.peers:
        for backend in backends:
            names = PEERS.get(backend, []) + VARIANTS.get(backend, [])
            peers += [run(PEERS_PY, name, backend, args.quick, soak=False) for name in names]
        rows += peers
        print_peers(compare(own, peers), peers)
        print("* not a default: the peer with the guarantee farm.dispatch gives, never the best peer")
    if args.floor:
        floor = floor_rows(backends, args.quick)
        rows += floor
        print_floor(own, floor)
    return finish(rows, run_id, args.chart)


def finish(rows: list[dict], run_id: str, chart: str | None, drawer: str = "chart.py") -> int:
    """Append the run's figures to bench-results/results.jsonl; draw the chart (with `drawer`,
    in .bench-venv, which has matplotlib); 1 if any failed."""
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "results.jsonl").open("a") as f:
        for r in rows:
            f.write(json.dumps({"run": run_id, **r}) + "\n")
    print(f"\nraw figures: bench-results/results.jsonl (run {run_id})")
    if chart:
        subprocess.run([str(PEERS_PY), str(HERE / drawer), "--run", run_id, "--out", chart], check=True)
        print(f"chart: {chart}")
    failed = [r for r in rows if "error" in r]
    return 1 if failed else 0


def floor_rows(backends: list[str], quick: bool) -> list[dict]:
    argv = [str(JOBFARM_PY), str(HERE / "floor.py"), "--only", ",".join(b for b in backends if b != "redis")]
    done = subprocess.run(argv + ["--quick"] * quick, capture_output=True, text=True, timeout=3600)
    rows = [json.loads(ln) for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 and not rows:
        return [{"system": "floor", "backend": "?", "error": done.stderr.strip()[-1500:]}]
    return rows


def print_floor(own: dict[str, dict], floor: list[dict]) -> None:
    print(f"\n{'floor':12}{'raw figure':>28}{'raw':>11}{'jobfarm':>11}{'jobfarm/raw':>13}")
    pairs = {"claim100_per_s": "drain_1_per_s", "claim1_per_s": "drain_1_per_s",
             "insert_per_s": "dispatch_per_s", "insert_many_per_s": "dispatch_many_per_s",
             "consume_prefetch100_per_s": "drain_1_per_s", "publish_confirmed_per_s": "dispatch_per_s",
             "publish_unconfirmed_per_s": "dispatch_per_s", "latency_p50_ms": "latency_p50_ms"}
    for f in floor:
        if "error" in f:
            print(f"{f['backend']:12} FAILED: {f['error']}")
            continue
        ours = own.get(f["backend"], {})
        for key, theirs in pairs.items():
            if key in f and theirs in ours:
                print(f"{LABELS[f['backend']]:12}{key:>28}{fmt(f[key]):>11}{fmt(ours[theirs]):>11}"
                      f"{ours[theirs] / f[key]:>12.2f}x")


if __name__ == "__main__":
    t = time.monotonic()
    status = main()
    print(f"({time.monotonic() - t:.0f} s)", file=sys.stderr)
    sys.exit(status)
