"""scripts/bench --scale: how jobfarm's cost grows with the work (issue 19).

Sections (scale_sections.py, scale_idle.py): backlog (drain rate with 10k/100k/1M queued,
1 and 2 workers), delayed (10k ready behind 1M delayed), queues (1/10/50 queues in priority
order), idle (1/4/16/32 idle workers: server queries and CPU; latency with 32 idle), rss (one
worker over 1M jobs), long (PostgreSQL only, asked for: 10M jobs through one table), weights
(bench/weights.py). Never asserts: figures, and a verdict (ok / MISS) against
the issue's goal per row; a run that lost or repeated a job, or crashed, is a failure.

One backend per process, in .venv, one JSON line per section (main.py prints the tables):
    python bench/scale.py --backend sqlite [--quick | --tiny] [--section backlog,idle] [--long-jobs N]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "systems")]

import harness  # noqa: E402

SECTIONS = ["backlog", "delayed", "queues", "idle", "rss", "long", "weights"]
DEFAULT = [s for s in SECTIONS if s != "long"]          # long only when asked for


def sections_of(text: str | None, long_jobs: int | None) -> list[str]:
    """The sections asked for, in run order; a bad name is a usage error."""
    asked = text.split(",") if text else list(DEFAULT)
    bad = [s for s in asked if s not in SECTIONS]
    if bad:
        print(f"bench --scale: unknown section {bad[0]!r} (known: {', '.join(SECTIONS)})", file=sys.stderr)
        raise SystemExit(2)
    if long_jobs and "long" not in asked:
        asked.append("long")
    return [s for s in SECTIONS if s in asked]


def weights_row(backend: str, jobs: int, runs: int) -> dict[str, Any] | None:
    """bench/weights.py's line: strict order against weights 6/3/1, shares and rates."""
    done = subprocess.run([sys.executable, str(HERE / "weights.py"), "--backend", backend, "--jobs", str(jobs),
                           "--runs", str(runs)], capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": "bench/weights.py: " + (done.stderr or done.stdout).strip()[-1500:]}
    return json.loads(lines[-1])


def measure(section: str, ctx: Any, quick: bool, long_jobs: int | None) -> dict[str, Any] | None:
    import scale_idle
    import scale_sections as s

    if section == "long":
        if ctx.backend != "postgresql":
            return None
        return scale_idle.long(ctx, long_jobs or ctx.counts.long_jobs)
    if section == "weights":
        return weights_row(ctx.backend, ctx.counts.weight_jobs, ctx.counts.weight_runs)
    run: Callable[[Any], dict[str, Any]] = {"backlog": s.backlog, "delayed": s.delayed, "queues": s.queues,
                                            "idle": scale_idle.idle, "rss": s.rss}[section]
    return run(ctx)


def main() -> int:
    import scale_sections

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="seconds in all (the smoke test's counts)")
    ap.add_argument("--section", default=None)
    ap.add_argument("--long-jobs", type=int, default=None)
    args = ap.parse_args()
    counts = scale_sections.TINY if args.tiny else scale_sections.QUICK if args.quick else scale_sections.Counts()
    sections = sections_of(args.section, args.long_jobs)         # a bad name: before any temp dir
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    out = tmp / "out"
    out.mkdir()
    ctx = scale_sections.Ctx(args.backend, counts, tmp, out, tmp / "workers.log")
    failed = False
    for section in sections:
        row: dict[str, Any] = {"system": "jobfarm", "figure": "scale", "section": section, "backend": args.backend,
                               "quick": args.quick, "tiny": args.tiny, "time": time.time()}
        started = time.monotonic()
        try:
            fig = measure(section, ctx, args.quick or args.tiny, args.long_jobs)
            if fig is None:
                continue
            row.update(fig)          # a section may carry an "error" beside the figures it got
        except harness.Failed as e:
            row.update(error=str(e), log_tail=ctx.log.read_text(errors="replace")[-2000:] if ctx.log.exists() else "")
        except Exception as e:        # a crash of the bench itself (a server gone): this section fails
            row.update(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-2000:])
        row["wall_s"] = time.monotonic() - started
        failed |= "error" in row
        print(json.dumps(row), flush=True)
    if not failed:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


def run_all(python: Path, backends: list[str], quick: bool, section: str | None,
            long_jobs: int | None) -> list[dict]:
    """Each backend's sections in a process of its own: every row they printed."""
    sections_of(section, long_jobs)                  # a bad name stops here, before any run
    rows: list[dict] = []
    for backend in backends:
        argv = [str(python), str(HERE / "scale.py"), "--backend", backend] + ["--quick"] * quick
        argv += ["--section", section] * bool(section) + ["--long-jobs", str(long_jobs)] * bool(long_jobs)
        print(f"  running scale on {backend} ...", file=sys.stderr, flush=True)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=6 * 3600)
        got = [json.loads(ln) for ln in done.stdout.splitlines() if ln.startswith("{")]
        if done.returncode != 0 and not any("error" in r for r in got):
            got.append({"system": "jobfarm", "figure": "scale", "section": "?", "backend": backend,
                        "error": (done.stderr or done.stdout).strip()[-1500:]})
        rows += got
    return rows


if __name__ == "__main__":
    sys.exit(main())
