"""How the chaos suite counts jobs: a ledger file every chaos job appends to.

One line per event, written with a single os.write on an O_APPEND descriptor, so lines from
many workers never interleave and a SIGKILL leaves no half line that matters:
`S <job_id> <pid> <time>` when handle() starts, `E <job_id> <pid> <time>` just before it returns.
The writer is `record` in chaosjobs.py (copied beside each temp farm's conf/).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable


@dataclass(frozen=True)
class Tally:
    """What happened to the dispatched jobs, read off the ledger."""

    dispatched: int
    completed: int
    lost: int
    completed_twice: int
    started_twice: int
    lost_ids: tuple[str, ...] = ()
    twice_ids: tuple[str, ...] = ()     # ids completed or started more than once


@dataclass(frozen=True)
class Event:
    kind: str
    job_id: str
    pid: int
    at: float


class Ledger:
    """The ledger file of one chaos run."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def events(self) -> list[Event]:
        """Every whole line so far, in the order written (a torn last line is skipped)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] in ("S", "E"):
                try:
                    out.append(Event(parts[0], parts[1], int(parts[2]), float(parts[3])))
                except ValueError:
                    continue
        return out

    def ended(self) -> set[str]:
        """Ids with at least one E."""
        return {e.job_id for e in self.events() if e.kind == "E"}

    def last_job(self, pid: int) -> tuple[str, str] | None:
        """(kind, id) of the last line `pid` wrote, or None. Read after the pid was SIGKILLed:
        ("S", id) means the kill landed inside that job; ("E", id) that it may have landed
        between the job's end and its ack."""
        found = None
        for e in self.events():
            if e.pid == pid:
                found = (e.kind, e.job_id)
        return found

    def tally(self, dispatched_ids: Iterable[str], failed_ok: Iterable[str] = ()) -> Tally:
        """Count the dispatched ids. `failed_ok`: ids in the failed table that the scenario
        expected to fail (poison jobs): not lost, and their retries are not counted as twice."""
        ids = list(dict.fromkeys(dispatched_ids))
        expected = set(failed_ok)
        starts: Counter[str] = Counter()
        ends: Counter[str] = Counter()
        for e in self.events():
            (starts if e.kind == "S" else ends)[e.job_id] += 1
        lost = tuple(i for i in ids if ends[i] == 0 and i not in expected)
        counted = [i for i in ids if i not in expected]
        twice_c = [i for i in counted if ends[i] >= 2]
        twice_s = [i for i in counted if starts[i] >= 2]
        return Tally(dispatched=len(ids), completed=sum(1 for i in ids if ends[i] >= 1), lost=len(lost),
                     completed_twice=len(twice_c), started_twice=len(twice_s), lost_ids=lost,
                     twice_ids=tuple(dict.fromkeys(twice_c + twice_s)))
