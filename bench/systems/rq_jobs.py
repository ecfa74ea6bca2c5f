"""The job functions RQ's workers import (by dotted path, `rq_jobs.tick`): record and nothing else."""
from __future__ import annotations

import record


def tick(n: int) -> None:
    record.write(n)


def stamp(n: int) -> None:
    record.write(n)
