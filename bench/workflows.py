"""scripts/bench --workflows: what each workflow feature costs a job (issue 15).

The same no-op job (benchjobs.Tick) drained by one `farmctl work` process, as harness.py's
drain (jobs per second from the first job's start to the last one's), plain and with one
feature each: an `after` and a `before` event handler, an encrypted payload, a unique lock,
one middleware (RateLimited, never reached), dispatched as batches of 1,000 and as chains of
100 links. Kinds run in turn, a few rounds, the median of each. A plain job's rate against
the code before the workflows is a paired A/B with farm-bench (see the README).

Runs in .venv and prints one JSON line (main.py prints the table):
    python bench/workflows.py --backend sqlite [--quick]
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "systems")]

import harness  # noqa: E402

KINDS = ["plain", "events", "encrypted", "unique", "middleware", "batch", "chain"]
JOBS = {False: 5000, True: 2000}
ROUNDS = {False: 5, True: 3}
CHAIN = 100          # links per chain
KEY = "bXlfYmVuY2hfa2V5X2lzX3RoaXJ0eV90d29fYnl0ZXM="     # a Fernet key (32 bytes, url-safe base64)


class Kind:
    """The jobfarm system with its dispatch turned into one kind of workflow."""

    def __init__(self, system: Any, kind: str, manifest: Path, plain: str, events: str) -> None:
        self.system, self.kind = system, kind
        self.manifest, self.text = manifest, events if kind == "events" else plain

    def __getattr__(self, name: str) -> Any:
        return getattr(self.system, name)

    def worker_commands(self, workers: int) -> list[list[str]]:
        self.manifest.write_text(self.text)      # the events kind imports benchevents in its workers
        return self.system.worker_commands(workers)

    def dispatch_many(self, kind: str, ns: Sequence[int]) -> None:
        import farm
        import benchjobs

        q = self.system.queue
        if self.kind == "batch":
            farm.batch([benchjobs.Tick(n) for n in ns], name="bench").dispatch(queue=q)
        elif self.kind == "chain":          # chains of CHAIN links (each link runs after the last)
            ns = list(ns)
            for i in range(0, len(ns), CHAIN):
                farm.chain([benchjobs.Tick(n) for n in ns[i:i + CHAIN]]).dispatch(queue=q)
        else:
            cls = {"encrypted": benchjobs.Sealed, "unique": benchjobs.Unique,
                   "middleware": benchjobs.Limited}.get(self.kind, benchjobs.Tick)
            if self.kind == "unique":           # unique jobs are dispatched one by one
                for n in ns:
                    farm.dispatch(cls(n), queue=q)
            else:
                farm.dispatch_many([cls(n) for n in ns], queue=q)


def measure(system: Any, quick: bool, tmp: Path, out: Path, log: Path) -> dict[str, Any]:
    import os

    os.environ["FARM_KEY"] = system.env["FARM_KEY"] = KEY
    manifest = tmp / "farm.yaml"
    plain = manifest.read_text()
    events = plain.replace("imports: [benchjobs]", "imports: [benchjobs, benchevents]")
    n = JOBS[quick]
    rates: dict[str, list[float]] = {k: [] for k in KINDS}
    for _ in range(ROUNDS[quick]):
        for kind in KINDS:
            bench = harness.Bench(Kind(system, kind, manifest, plain, events), out, log)
            rates[kind].append(bench.drain_rate(n, 1))
    fig: dict[str, Any] = {"figure": "workflows", "jobs": n, "rounds": ROUNDS[quick]}
    fig.update({f"{k}_per_s": statistics.median(v) for k, v in rates.items()})
    fig.update({f"{k}_ratio": fig[f"{k}_per_s"] / fig["plain_per_s"] for k in KINDS})
    return fig


def print_table(rows: list[dict], labels: dict[str, str]) -> None:
    ok = harness.split_failed(rows, labels)
    if not ok:
        return
    print(f"\nworkflow features: one worker drains {ok[0]['jobs']:,} no-op jobs of each kind, jobs/s "
          f"(median of {ok[0]['rounds']}) and the ratio to a plain job")
    print(f"{'':12}" + "".join(f"{k:>16}" for k in KINDS))
    for r in ok:
        print(f"{labels[r['backend']]:12}" + "".join(
            f"{r[f'{k}_per_s']:>9,.0f} {r[f'{k}_ratio']:>5.2f}x" for k in KINDS))


def main() -> int:
    return harness.jobfarm_figure("workflows", measure, __doc__)


if __name__ == "__main__":
    sys.exit(main())
