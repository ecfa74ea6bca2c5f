"""scripts/bench --scale, sections idle and long (issue 19).

idle: 1, 4, 16, 32 idle workers for a quiet spell after a warm-up: the server's queries (or
broker operations) per second and its CPU, the workers' summed CPU, each per worker too; then,
with the most workers still idle, single jobs one at a time (each after every poll back-off has
run out) and their dispatch-to-start latency. On PostgreSQL it runs in a database of its own,
so the counters are the bench's alone.

long (PostgreSQL only): many jobs through ONE table in rounds: fill a round, drain it with two
workers; per-round rate, then the table's and its indexes' size, dead tuples and autovacuums.
"""
from __future__ import annotations

import contextlib
import sys
import time
import uuid
from typing import Any, Iterator

import harness
import jobfarm_sys
import scale_probe
from scale_sections import Ctx, rate

# the README's idle-latency promise per backend: (p99 goal in ms, its words)
IDLE_GOAL = {
    "postgresql": (50.0, "NOTIFY: an idle worker starts a new job within milliseconds"),
    "sqlite": (1100.0, "idle workers poll, backing off to at most a second"),
    "mysql": (1100.0, "polled as on SQLite, backing off to at most a second"),
    "amqp": (50.0, "pushed by the broker (p50 0.9 ms in the README's table)"),
    "redis": (50.0, "an idle worker waits on pub/sub and starts a pushed job within a millisecond or two"),
}


@contextlib.contextmanager
def own_pg_database() -> Iterator[str]:
    """A PostgreSQL database made for this section and dropped after: its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(jobfarm_sys.URLS["postgresql"])
    name = "scale_" + uuid.uuid4().hex[:8]
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def wait_beating(system: Any, workers: int, seconds: float = 90) -> int:
    """Until `workers` heartbeats are in the store (every worker started): how many were seen."""
    from farm import app

    deadline = time.monotonic() + seconds
    seen = 0
    while time.monotonic() < deadline:
        seen = len(app.store().workers())
        if seen >= workers:
            break
        time.sleep(0.5)
    return seen


def cpu_delta(before: dict[int, float] | None, after: dict[int, float] | None) -> float | None:
    if before is None or after is None:
        return None
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def quiet_spell(probe: scale_probe.Probe, procs: list[Any], seconds: float) -> dict[str, Any]:
    """The counters before and after `seconds` of nothing dispatched."""
    wpids = scale_probe.tree_pids(procs)
    spids = probe.server_pids()
    ops0, srv0, w0 = probe.ops(), scale_probe.cpu_seconds(spids), scale_probe.cpu_seconds(wpids)
    t0 = time.monotonic()
    time.sleep(seconds)
    ops1 = probe.ops()
    srv1, w1 = scale_probe.cpu_seconds(probe.server_pids()), scale_probe.cpu_seconds(wpids)
    dt = time.monotonic() - t0
    n = len(procs)
    row: dict[str, Any] = {"workers": n, "seconds": dt}
    if ops0 is not None and ops1 is not None:
        row["ops_per_s"] = max(0, ops1 - ops0 - probe.own) / dt
        row["ops_per_worker_s"] = row["ops_per_s"] / n
    srv = cpu_delta(srv0, srv1)
    if srv is not None and spids:
        row["server_cpu_pct"] = srv / dt * 100
    wcpu = cpu_delta(w0, w1)
    if wcpu is not None:
        row["workers_cpu_pct"] = wcpu / dt * 100
        row["worker_cpu_pct"] = row["workers_cpu_pct"] / n
    return row


def idle_latency(ctx: Ctx, system: Any, procs: list[Any], jobs: int) -> tuple[float, float]:
    """Single jobs to idle workers, each after the last ran and a gap: p50, p99 ms."""
    b = ctx.bench(system)
    b.records.clear()
    sent: dict[int, float] = {}
    for i in range(jobs):
        time.sleep(ctx.counts.idle_gap)
        sent[i] = time.time()
        system.dispatch("stamp", i)
        b.records.wait(i + 1, 60, procs)
    rows = b.exactly_once(list(range(jobs)))
    lat = sorted((t - sent[i]) * 1000 for i, t in rows)
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def idle(ctx: Ctx) -> dict[str, Any]:
    """Each count of idle workers in turn; a count whose workers die (PostgreSQL refusing
    connections past max_connections) is a failed point, the counts before it keep theirs."""
    c = ctx.counts
    with (own_pg_database() if ctx.backend == "postgresql" else contextlib.nullcontext(None)) as url:
        points, fig = [], {}
        for n in c.idle_workers:
            with ctx.fresh(url) as system:
                try:
                    points.append(idle_point(ctx, system, n, url))
                except harness.Failed as e:
                    points.append({"workers": n, "error": f"{e}; the workers' last log line: {last_line(ctx)}"})
                fig.update(note=ctx.probe_note, unit=ctx.probe_unit)
    goal, words = IDLE_GOAL[ctx.backend]
    fig.update(points=points, latency_goal_ms=goal, latency_promise=words, latency_jobs=c.idle_jobs,
               exactly_once=True)
    failed = [p for p in points if "error" in p]
    if failed:
        fig["error"] = f"idle with {failed[0]['workers']} workers: {failed[0]['error']}"
    return fig


def idle_point(ctx: Ctx, system: Any, n: int, url: str | None) -> dict[str, Any]:
    """n idle workers: warm-up, the quiet spell; with the most workers, the start latency too."""
    c = ctx.counts
    b = ctx.bench(system)
    procs: list[Any] = []
    probe = scale_probe.make(ctx.backend, lambda: procs, url or system.url or jobfarm_sys.URLS.get(ctx.backend))
    ctx.probe_note, ctx.probe_unit = probe.note, probe.unit
    try:
        procs += b.start(n)
        seen = wait_beating(system, n)
        time.sleep(min(3.0, c.idle_seconds))             # warm-up: every poll backed off
        dead = [p.returncode for p in procs if p.poll() is not None]
        if dead:
            raise harness.Failed(f"{len(dead)} of {n} idle workers exited (status {dead[0]})")
        point = {**quiet_spell(probe, procs, c.idle_seconds), "beating": seen}
        if n == max(c.idle_workers):
            point["latency_p50_ms"], point["latency_p99_ms"] = idle_latency(ctx, system, procs, c.idle_jobs)
        return point
    finally:
        b.stop(procs)
        probe.close()


def last_line(ctx: Ctx) -> str:
    lines = ctx.log.read_text(errors="replace").splitlines() if ctx.log.exists() else []
    return lines[-1][-300:] if lines else "-"


LONG_SQL = """SELECT pg_relation_size(c.oid), pg_indexes_size(c.oid), pg_total_relation_size(c.oid),
 s.n_dead_tup, s.n_live_tup, s.autovacuum_count, s.vacuum_count
 FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.relname = %s"""


def long(ctx: Ctx, total: int) -> dict[str, Any]:
    """`total` jobs through one table in rounds of min(1M, total/10), two workers each."""
    import psycopg
    from sqlalchemy.engine import make_url

    size = min(1_000_000, max(1_000, total // 10))
    rounds = []
    with ctx.fresh() as system:
        b = ctx.bench(system)
        conninfo = make_url(system.url).set(drivername="postgresql").render_as_string(hide_password=False)
        for r in range(max(1, total // size)):
            b.fill(size, chunk=10_000)
            rounds.append({"round": r + 1, "jobs": size, "per_s": rate(b._drain(list(range(size)), 2))})
            with psycopg.connect(conninfo, autocommit=True) as conn:     # the table's size as it goes
                sizes = conn.execute(LONG_SQL, (system.table,)).fetchone() or (None, None)
            rounds[-1].update(table_bytes=sizes[0], indexes_bytes=sizes[1])
            print(f"    long: round {r + 1}: {rounds[-1]['per_s']:,.0f} jobs/s, table {(sizes[0] or 0) / 2**20:,.0f} MB, "
                  f"indexes {(sizes[1] or 0) / 2**20:,.0f} MB", file=sys.stderr, flush=True)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            row = conn.execute(LONG_SQL, (system.table,)).fetchone()
            settings = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN "
                                         "('autovacuum', 'autovacuum_vacuum_scale_factor', "
                                         "'autovacuum_vacuum_threshold', 'autovacuum_naptime')").fetchall())
    keys = ("table_bytes", "indexes_bytes", "total_bytes", "n_dead_tup", "n_live_tup", "autovacuum_count",
            "vacuum_count")
    return {"jobs": size * len(rounds), "round_jobs": size, "rounds": rounds, **dict(zip(keys, row or ())),
            "settings": settings, "ratio": rounds[-1]["per_s"] / rounds[0]["per_s"], "exactly_once": True}
