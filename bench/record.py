"""The completion signal every benchmarked system shares: a job appends `n time` to a file.

No import of any queue library, so jobfarm's and the peers' jobs record the same way: one
`os.write` of one line to `$BENCH_OUT/<pid>.txt`, the start time taken as the job begins.
"""
from __future__ import annotations

import os
import time

_fd: int | None = None
_pid: int | None = None


def write(n: int) -> None:
    """Record that job `n` started now (its line is the job's whole work)."""
    global _fd, _pid
    now = time.time()
    if _fd is None or _pid != os.getpid():          # a forked child writes its own file
        _pid = os.getpid()
        _fd = os.open(os.path.join(os.environ["BENCH_OUT"], f"{_pid}.txt"),
                      os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, f"{n} {now:.6f}\n".encode())
