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
import time
from typing import Any, Callable, Sequence

DEAD_ROWS = 20_000      # vacuum once at least this many rows are dead...
DEAD_SHARE = 0.2        # ...and they are this share of the live ones (autovacuum's own default)
BACKOFF_FIRST = 60.0    # seconds before trying again after a run that removed less than half
BACKOFF_MOST = 600.0

# dead and live rows, whether this user may vacuum the table (owner, member, superuser: a
# non-owner's VACUUM only warns), and whether a VACUUM of it is going on already (anyone's)
STATS = ("SELECT s.relname, s.n_dead_tup, s.n_live_tup, pg_has_role(c.relowner, 'USAGE'), "
         "EXISTS (SELECT 1 FROM pg_stat_progress_vacuum p WHERE p.relid = s.relid) "
         "FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid WHERE s.relid IN ({})")


def overgrown(cur: Any, tables: Sequence[str]) -> tuple[list[str], list[str]]:
    """The tables whose dead rows call for a VACUUM that no one is running, and those of them
    this user may not vacuum (statistics PostgreSQL keeps anyway: one cheap read)."""
    cur.execute(STATS.format(", ".join(["to_regclass(%s)"] * len(tables))), list(tables))
    due = [(name, mine) for name, dead, live, mine, running in cur.fetchall()
           if dead >= DEAD_ROWS and dead >= DEAD_SHARE * live and not running]
    return [name for name, mine in due if mine], [name for name, mine in due if not mine]


class Vacuum:
    """At most one VACUUM at a time from this process, and from the farm (advisory lock)."""

    def __init__(self, connect: Callable[[], Any], key: str) -> None:
        self.connect = connect          # a new autocommit connection, closed after each run
        self.key = key
        self.thread: threading.Thread | None = None
        self.runs = 0
        self.error: str | None = None   # the last run's trouble, for the worker's log
        # a run that could not remove the dead rows (an old snapshot somewhere holds them) is
        # not repeated every half minute: the wait doubles, up to ten minutes
        self.wait = BACKOFF_FIRST
        self.quiet_until = 0.0
        self.told = False               # a table this user may not vacuum: said once

    def start(self, tables: Sequence[str]) -> bool:
        """Vacuum `tables` in the background unless a run is going on here; False if one is."""
        if self.thread is not None and self.thread.is_alive() or time.monotonic() < self.quiet_until:
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
            before = _dead(conn, tables)
            for table in tables:
                conn.execute(f"VACUUM (ANALYZE) {table}")
            self.runs += 1
            if _dead(conn, tables) > before / 2:
                self.quiet_until = time.monotonic() + self.wait
                self.error = (f"VACUUM left {_dead(conn, tables)} of {before} dead rows (an open transaction "
                              f"holds them); next try in {self.wait:.0f} s")
                self.wait = min(self.wait * 2, BACKOFF_MOST)
            else:
                self.wait = BACKOFF_FIRST
        except Exception as e:          # cancelled, say: the next check tries again
            self.error = f"{type(e).__name__}: {e}".splitlines()[0]
        finally:
            try:
                conn.close()            # ends the session: the advisory lock goes with it
            except Exception:
                pass


def _dead(conn: Any, tables: Sequence[str]) -> int:
    row = conn.execute("SELECT COALESCE(SUM(n_dead_tup), 0) FROM pg_stat_user_tables WHERE relid IN ({})"
                       .format(", ".join(["to_regclass(%s)"] * len(tables))), list(tables)).fetchone()
    return int(row[0])
