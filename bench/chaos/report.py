"""The chaos table: one row per scenario and backend, the columns issue 17 names."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import Sequence, TextIO

COLUMNS = ("scenario", "backend", "dispatched", "completed", "lost", "completed_twice",
           "started_twice", "allowed_twice", "seconds", "ok", "note")


@dataclass(frozen=True)
class Result:
    """One scenario on one backend. `allowed_twice`: how many jobs may run again (kills that
    landed inside a job); `ok`: the scenario's verdict on the hard promises."""

    scenario: str
    backend: str
    dispatched: int
    completed: int
    lost: int
    completed_twice: int
    started_twice: int
    seconds: float
    allowed_twice: int = 0
    ok: bool = True
    note: str = ""


def print_table(results: Sequence[Result], out: TextIO | None = None) -> None:
    """A plain-text table, columns aligned, `ok` as ok/FAIL (on stdout unless `out`)."""
    out = out or sys.stdout
    heads = ["scenario", "backend", "dispatched", "completed", "lost", "twice", "started2",
             "allowed", "seconds", "ok", "note"]
    rows = [[r.scenario, r.backend, str(r.dispatched), str(r.completed), str(r.lost),
             str(r.completed_twice), str(r.started_twice), str(r.allowed_twice), f"{r.seconds:.1f}",
             "ok" if r.ok else "FAIL", r.note] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(heads)]
    for row in [heads, *rows]:
        out.write("  ".join(c.rjust(w) if 2 <= i <= 8 else c.ljust(w)
                            for i, (c, w) in enumerate(zip(row, widths))).rstrip() + "\n")


def print_json(results: Sequence[Result], out: TextIO | None = None) -> None:
    """The results as a JSON list of objects (COLUMNS as keys)."""
    out = out or sys.stdout
    json.dump([asdict(r) for r in results], out, indent=1)
    out.write("\n")
