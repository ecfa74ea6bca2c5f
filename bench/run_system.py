"""Measure one system on one backend and print its figures as one JSON line.

Runs inside the system's own environment (.venv for jobfarm, .bench-venv for the peers):
    python bench/run_system.py --system celery --backend amqp [--quick] [--soak]
"""
from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "systems")]

import harness  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--system", required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--soak", action="store_true", help="also run one worker through 100,000 jobs")
    args = ap.parse_args()
    counts = harness.QUICK if args.quick else harness.Counts()
    if not args.soak:
        counts = harness.Counts(**{**counts.__dict__, "soak": 0})
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{args.system}-"))
    out = tmp / "out"
    out.mkdir()
    log = tmp / "workers.log"
    system = importlib.import_module(f"{args.system}_sys").make(args.backend, tmp, out)
    row = {"system": args.system, "backend": args.backend, "quick": args.quick, "time": time.time()}
    try:
        row.update(harness.measure(system, counts, out, log))
    except harness.Failed as e:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        print(json.dumps({**row, "error": str(e), "log_tail": tail}))
        return 1
    finally:
        system.close()
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
