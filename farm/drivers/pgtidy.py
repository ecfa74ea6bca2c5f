"""PostgreSQL: a worker vacuums the jobs table when its dead rows pile up.

Every job leaves three dead row versions behind (its claim, its start and its ack), so a
busy jobs table is mostly dead rows unless VACUUM reclaims them. Autovacuum does that on a
stock server, but it may be off, or busy for hours on a large table elsewhere; then the
table and its claim index grow with every job ever run and claims slow down with them
(500,000 jobs a round, autovacuum off: 406 MB after one round, 839 MB after two, drain
10.0k/s -> 8.0k/s). So the workers check the table's dead rows every half minute, and once
there are many, one of them (an advisory lock) runs VACUUM (ANALYZE) on a connection of its
own, in a thread of its own, while the others go on claiming: VACUUM blocks no reads or
writes. Where autovacuum keeps up, the threshold is never reached and this never runs.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

DEAD_ROWS = 20_000      # vacuum once at least this many rows are dead...
DEAD_SHARE = 0.2        # ...and they are this share of the live ones (autovacuum's own default)

STATS = ("SELECT relname, n_dead_tup, n_live_tup FROM pg_stat_user_tables "
         "WHERE relid IN ({})")


def overgrown(cur: Any, tables: Sequence[str]) -> list[str]:
    """The tables whose dead rows call for a VACUUM (statistics PostgreSQL keeps anyway: one
    cheap read)."""
    cur.execute(STATS.format(", ".join(["to_regclass(%s)"] * len(tables))), list(tables))
    return [name for name, dead, live in cur.fetchall()
            if dead >= DEAD_ROWS and dead >= DEAD_SHARE * live]


class Vacuum:
    """At most one VACUUM at a time from this process, and from the farm (advisory lock)."""

    def __init__(self, connect: Callable[[], Any], key: str) -> None:
        self.connect = connect          # a new autocommit connection, closed after each run
        self.key = key
        self.thread: threading.Thread | None = None
        self.runs = 0
        self.error: str | None = None   # the last run's trouble, for the worker's log

    def start(self, tables: Sequence[str]) -> bool:
        """Vacuum `tables` in the background unless a run is going on here; False if one is."""
        if self.thread is not None and self.thread.is_alive():
            return False
        self.thread = threading.Thread(target=self._run, args=(list(tables),), name="farm-vacuum", daemon=True)
        self.thread.start()
        return True

    def _run(self, tables: list[str]) -> None:
        try:
            conn = self.connect()
        except Exception as e:          # the database is away: the next check tries again
            self.error = f"cannot connect: {e}".splitlines()[0]
            return
        try:
            (mine,) = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (self.key,)).fetchone()
            if not mine:
                return                  # another worker is vacuuming
            for table in tables:
                conn.execute(f"VACUUM (ANALYZE) {table}")
            self.runs += 1
        except Exception as e:          # cancelled, say: the next check tries again
            self.error = f"{type(e).__name__}: {e}".splitlines()[0]
        finally:
            try:
                conn.close()            # ends the session: the advisory lock goes with it
            except Exception:
                pass
