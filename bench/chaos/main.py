"""scripts/chaos: run chaos scenarios against the real servers and print what happened to every job.

  scripts/chaos [--short] [--backend B]... [--scenario S]... [--json] [--jobs N]

Exit status 1 when any scenario broke a promise (0 lost; 0 run twice on graceful paths; on
SIGKILL paths only the jobs whose workers were killed holding them), 2 on bad usage.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from typing import Callable

from . import scenarios_process as proc
from .farm import BACKENDS, FULL, SHORT, ChaosFarm, Size
from .report import Result, print_json, print_table
from .scenarios_network import SCENARIOS as NETWORK

Scenario = Callable[[ChaosFarm, Size], Result]
ALL = BACKENDS
SCENARIOS: dict[str, tuple[Scenario, tuple[str, ...]]] = {
    "sigkill_storm": (proc.sigkill_storm, ALL),
    "sigterm_storm": (proc.sigterm_storm, ALL),
    "memory_recycling": (proc.memory_recycling, ALL),
    "long_jobs_renewal": (proc.long_jobs_renewal, ALL),
    "poison_mix": (proc.poison_mix, ALL),
}
SCENARIOS.update(NETWORK)


def run_one(name: str, backend: str, size: Size, keep: bool = False) -> Result:
    """One scenario on one backend in a fresh temp farm; a crash of the harness is a failed row."""
    fn = SCENARIOS[name][0]
    workdir = tempfile.mkdtemp(prefix=f"chaos-{name}-{backend}-")
    t0 = time.monotonic()
    farm = None
    try:
        farm = ChaosFarm(backend, workdir)
        return fn(farm, size)
    except Exception as e:
        return Result(name, backend, 0, 0, 0, 0, 0, round(time.monotonic() - t0, 1), ok=False,
                      note=f"harness error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                           + (f" (logs: {workdir})" if keep else ""))
    finally:
        if farm is not None:
            farm.close()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:        # type: ignore[override]
        """Bad usage: one line and exit status 2 (no usage block)."""
        self.exit(2, f"scripts/chaos: {message}\n")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios x backends, print the table; 1 if any broke a promise."""
    ap = _Parser(prog="scripts/chaos", description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true", help="small sizes (a few minutes for everything)")
    ap.add_argument("--backend", action="append", choices=BACKENDS, help="repeatable; default: all")
    ap.add_argument("--scenario", action="append", help="repeatable; default: all")
    ap.add_argument("--jobs", type=int, help="jobs per scenario (default 500, 120 with --short)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep each run's temp farm (logs, ledger)")
    args = ap.parse_args(argv)
    unknown = [s for s in args.scenario or [] if s not in SCENARIOS]
    if unknown:
        ap.exit(2, f"scripts/chaos: unknown scenario {unknown[0]!r} (known: {', '.join(SCENARIOS)})\n")
    if args.jobs is not None and args.jobs < 1:
        ap.exit(2, "scripts/chaos: --jobs: expected a positive integer\n")
    size = SHORT if args.short else FULL
    if args.jobs:
        size = dataclasses.replace(size, jobs=args.jobs)
    results = []
    for name in args.scenario or list(SCENARIOS):
        for backend in args.backend or list(BACKENDS):
            if backend not in SCENARIOS[name][1]:
                continue
            results.append(run_one(name, backend, size, keep=args.keep))
            if not args.json:
                print_table(results[-1:], sys.stderr)
    (print_json if args.json else print_table)(results)
    return 0 if all(r.ok for r in results) else 1
