"""Operating a farm: failed jobs, queues, status."""
from __future__ import annotations

import datetime as dt
import json
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import click

from .. import app, fingerprint
from ..cli import cli, config_option, load_manifest
from ..drivers.base import FailedJob
from ..errors import FarmError, UnknownJob


def _stores() -> list[tuple[str, Any]]:
    """(connection, store) for every connection that has a store, each store once."""
    m = load_manifest()
    seen: dict[int, tuple[str, Any]] = {}
    for name, conn in m.connections.items():
        if conn.driver in ("database", "redis") or (conn.driver == "amqp" and conn.store):
            s = app.store(name)
            seen.setdefault(id(s), (name, s))
    return list(seen.values())


def _row(f: FailedJob) -> dict[str, Any]:
    try:
        doc = json.loads(f.body)
    except ValueError:
        doc = {}
    return {"id": f.id, "connection": f.connection, "queue": f.queue,
            "job": doc.get("job") if isinstance(doc, dict) else None,
            "attempts": doc.get("attempts") if isinstance(doc, dict) else None,
            "failed_at": dt.datetime.fromtimestamp(f.failed_at, dt.timezone.utc).isoformat(timespec="seconds"),
            "exception": (f.exception.splitlines() or [""])[0]}


def _find(ids: tuple[str, ...]) -> list[tuple[Any, FailedJob]]:
    found: list[tuple[Any, FailedJob]] = []
    for _, s in _stores():
        found.extend((s, f) for f in s.failed(ids=list(ids)))
    missing = set(ids) - {f.id for _, f in found}
    if missing:
        raise UnknownJob(f"no failed job with id {', '.join(sorted(missing))}")
    return found


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--queue", help="Only this queue.")
@config_option
@click.pass_context
def failed(ctx: click.Context, as_json: bool, queue: str | None) -> None:
    """List failed jobs (`failed show ID` for one whole)."""
    if ctx.invoked_subcommand:
        return
    rows = [_row(f) for _, s in _stores() for f in s.failed(queue=queue)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        unkept = [name for name, s in _stores() if getattr(s, "keeps_failed", True) is False]
        click.echo("no failed jobs" + (f" (failed_table: null on connection {', '.join(map(repr, unkept))}: "
                                       "failed jobs are not kept)" if unkept else ""))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("id", "connection", "queue", "job", "attempts", "failed_at", "exception"):
        table.add_column(col, overflow="fold" if col == "exception" else "ellipsis", no_wrap=col != "exception")
    for r in rows:
        table.add_row(*(str(r[c]) if r[c] is not None else "" for c in
                        ("id", "connection", "queue", "job", "attempts", "failed_at", "exception")))
    Console(width=200 if not click.get_text_stream("stdout").isatty() else None).print(table)


def failed_doc(job_id: str) -> dict[str, Any]:
    """`failed show ID --json`'s object: the row, the whole payload and traceback."""
    _, f = _find((job_id,))[0]
    row = _row(f)
    try:
        row["payload"] = json.loads(f.body)
    except ValueError:
        row["payload"] = f.body
    row["exception"] = f.exception
    return row


@failed.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@config_option
def failed_show(job_id: str, as_json: bool) -> None:
    """One failed job: its payload and the whole traceback."""
    row = failed_doc(job_id)
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    for key in ("id", "connection", "queue", "job", "attempts", "failed_at"):
        click.echo(f"{key}: {row[key]}")
    click.echo("payload:\n" + json.dumps(row["payload"], indent=2))
    click.echo("exception:\n" + row["exception"])


@cli.command()
@click.argument("ids", nargs=-1, required=True)
@click.option("--queue", help="With `all`: only failed jobs of this queue.")
@click.option("--onto", help="Put them on this queue instead of their own.")
@config_option
def retry(ids: tuple[str, ...], queue: str | None, onto: str | None) -> None:
    """Put failed jobs back on their queue, attempts reset: `retry ID...` or `retry all`."""
    if "all" in ids and len(ids) > 1:
        raise click.UsageError("`retry all` takes no ids; `retry ID...` retries those ids")
    if queue is not None and ids != ("all",):
        raise click.UsageError("--queue picks the failed jobs of one queue for `retry all`; with ids it "
                               "would be ignored (use --onto Q to put them on another queue)")
    total = 0
    if ids == ("all",):
        stores = _stores()
        todo = sum(s.count_failed(queue) for _, s in stores)
        with _progress(todo, "retrying") as advance:
            for _, s in stores:
                while True:
                    batch = s.failed(queue=queue, limit=BATCH)     # bounded memory, one transaction each
                    if not batch:
                        break
                    n = _retry(s, batch, onto)
                    total += n
                    advance(n)
    else:
        for s, f in _find(ids):
            total += _retry(s, [f], onto)
    click.echo(f"{total} job(s) pushed back onto their queue")


BATCH = 1000


@contextmanager
def _progress(total: int, what: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal; nothing when output is piped."""
    if not sys.stdout.isatty() or total < BATCH:
        yield lambda n: None
        return
    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def _retry(store: Any, entries: list[FailedJob], onto: str | None) -> int:
    m = app.manifest()
    n = 0
    for conn_name in sorted({e.connection for e in entries}):
        group = [e for e in entries if e.connection == conn_name]
        queue = app.queue(conn_name) if conn_name in m.connections else store
        if queue is store:
            n += store.retry_failed(group, onto)
        else:
            n += _retry_elsewhere(store, queue, group, onto)
    return n


def _retry_elsewhere(store: Any, queue: Any, entries: list[FailedJob], onto: str | None) -> int:
    """A queue on another system (amqp): push first, then forget; a crash between may duplicate."""
    from ..drivers.base import Outgoing
    from .. import payload

    out = []
    for e in entries:
        doc = json.loads(e.body)
        doc["attempts"], doc["queue"] = 0, onto or e.queue
        doc.pop("exceptions", None)
        out.append(Outgoing(id=e.id, queue=doc["queue"], body=payload.dumps(doc), available_at=time.time()))
    queue.push(out)
    store.forget([e.id for e in entries])
    return len(entries)


@cli.command()
@click.argument("ids", nargs=-1, required=True)
@config_option
def forget(ids: tuple[str, ...]) -> None:
    """Delete failed jobs."""
    n = sum(s.forget([f.id]) for s, f in _find(ids))
    click.echo(f"{n} failed job(s) forgotten")


def _confirm(question: Callable[[], str], force: bool) -> None:
    """Ask on a terminal (a `y` goes ahead); scripts and cron (no TTY) and --force never are."""
    if force or not sys.stdin.isatty():
        return
    if not click.confirm(question(), default=False):
        raise FarmError("nothing deleted")


FORCE_HELP = "Do not ask (a command without a terminal never asks)."


@cli.command()
@click.option("--force", is_flag=True, help=FORCE_HELP)
@config_option
def flush(force: bool) -> None:
    """Delete every failed job."""
    stores = _stores()
    _confirm(lambda: f"Delete all {sum(s.count_failed() for _, s in stores)} failed job(s)?", force)
    n = sum(s.prune_failed(time.time() + 1) for _, s in stores)
    click.echo(f"{n} failed job(s) deleted")


@cli.command("prune-failed")
@click.option("--hours", type=click.FloatRange(min=0), default=24, show_default=True)
@config_option
def prune_failed(hours: float) -> None:
    """Delete failed jobs older than --hours."""
    n = sum(s.prune_failed(time.time() - hours * 3600) for _, s in _stores())
    click.echo(f"{n} failed job(s) older than {hours:g}h deleted")


@cli.command()
@click.option("--queue", default="default", show_default=True)
@click.option("--connection", help="The connection (default: the manifest's default).")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@config_option
def clear(queue: str, connection: str | None, force: bool) -> None:
    """Delete the ready jobs of a queue (reserved and delayed ones stay)."""
    m = load_manifest()
    q = app.queue(connection)
    _confirm(lambda: f"Delete the {q.counts().get(queue, {}).get('ready') or 0} ready job(s) of queue "
                     f"{queue!r} on connection {m.connection(connection).name!r}?", force)
    n = q.clear(queue)
    click.echo(f"{n} job(s) cleared from {queue}")


def status_doc() -> dict[str, Any]:
    """DESIGN.md's status object; `queues` adds up every connection, `connections` splits them."""
    m = load_manifest()
    queues: dict[str, dict[str, int]] = {}
    per_conn: dict[str, dict[str, dict[str, int]]] = {}
    notes: list[str] = []
    for name, conn in m.connections.items():
        if conn.driver == "sync":
            continue
        try:
            counts = app.queue(name).counts()
            notes.extend(getattr(app.queue(name), "notes", list)())    # redis: persistence off
        except FarmError as e:
            raise FarmError(f"connection {name!r}: {e}") from None
        per_conn[name] = counts
        for q, c in counts.items():
            agg = queues.setdefault(q, {"ready": 0, "delayed": 0, "reserved": 0, "failed": 0})
            for k, v in c.items():
                if v is None or agg[k] is None:
                    agg[k] = None          # unknown (amqp cannot count unacked messages)
                else:
                    agg[k] += v
    code = fingerprint.on_disk(m.imports, m.root)
    from ..supervisor_client import process_states

    from ..operations import paused

    return {"queues": queues, "connections": per_conn, "workers": _workers(code), "code": code,
            "supervisor": process_states(m), "notes": notes, "paused": paused() if _stores() else []}


FORGET_AFTER = 600.0      # seconds: a lost worker's heartbeat is deleted after max(3 x retry_after, this)


def forget_after(retry_after: float) -> float:
    """How long a silent worker stays in `status` (as `lost`) before its heartbeat is deleted:
    a worker killed without a goodbye (SIGKILL, a crash, a host gone) leaves no row for ever."""
    return max(3 * retry_after, FORGET_AFTER)


def _workers(code: str) -> list[dict[str, Any]]:
    """Every worker's last heartbeat; `lost` when silent past retry_after, `stale` when the code
    it runs is not the code on disk (`code` is that fingerprint). Heartbeats silent for longer
    than forget_after(retry_after) are deleted."""
    m = app.manifest()
    workers = []
    now = time.time()
    for conn_name, s in _stores():
        retry_after = m.connections[conn_name].retry_after
        gone = now - forget_after(retry_after)
        try:
            s.prune_workers(gone)
        except FarmError:
            pass                        # a read-only store: they are still left out below
        for w in s.workers():
            if w["heartbeat"] < gone:
                continue
            w["lost"] = now - w["heartbeat"] > retry_after
            if w["lost"]:
                w["state"] = "lost"
            w["stale"] = w.get("code") != code
            workers.append(w)
    return workers


@cli.command()
@click.option("--wait", is_flag=True, help="Return once every live worker runs the code on disk.")
@click.option("--timeout", type=click.FloatRange(min=0), default=300, show_default=True,
              help="With --wait: give up after this many seconds (exit 1, stragglers listed).")
@config_option
def restart(wait: bool, timeout: float) -> None:
    """Ask every worker on every host to exit after its current job (they are started again)."""
    m = load_manifest()
    stores = _stores()
    code = fingerprint.on_disk(m.imports, m.root)
    expected = len([w for w in _workers(code) if not w["lost"]])
    now = time.time()
    for _, s in stores:
        s.set_stamp("restart", now)
    click.echo(f"restart requested: workers exit after their current job ({len(stores)} store(s))")
    if wait:
        _wait_for_code(code, now, expected, timeout)


def status_view(doc: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table

    q = Table(title="queues", title_justify="left", box=None)
    for col in ("connection", "queue", "ready", "delayed", "reserved", "failed"):
        q.add_column(col, justify="right" if col not in ("connection", "queue") else "left")
    for conn, counts in sorted(doc["connections"].items()):
        for name, c in sorted(counts.items()):
            q.add_row(conn, name, *("-" if c[k] is None else str(c[k])
                                    for k in ("ready", "delayed", "reserved", "failed")))
    w = Table(title="workers", title_justify="left", box=None)
    for col in ("host", "pid", "pipeline", "state", "job", "for", "done", "rss", "heartbeat", "code"):
        w.add_column(col)
    now = time.time()
    for x in doc["workers"]:
        w.add_row(str(x.get("host")), str(x.get("pid")), x.get("pipeline") or "-", x.get("state") or "-",
                  _job_column(x), f"{x['job_seconds']:.0f}s" if x.get("job_seconds") is not None else "-",
                  str(x.get("done")), f"{x.get('rss_mb')}MB", f"{now - x['heartbeat']:.0f}s ago",
                  "STALE" if x.get("stale") else "current")
    parts: list[Any] = [*(f"warning: {n}" for n in doc.get("notes", [])), q, w]
    if doc.get("paused"):
        parts.insert(-1, f"paused (farmctl resume QUEUE): {', '.join(doc['paused'])}")
    if doc["supervisor"] is None:
        parts.append("supervisord: not reachable")
    else:
        sp = Table(title="supervisord", title_justify="left", box=None)
        for col in ("program", "state", "pid"):
            sp.add_column(col)
        for p in doc["supervisor"]:
            sp.add_row(f"{p['group']}:{p['name']}", p["state"], str(p["pid"] or "-"))
        parts.append(sp)
    return Group(*parts)


SETTLE = 10.0      # seconds to wait for the farm to be back to its size once no straggler is left


def _job_column(worker: dict[str, Any]) -> str:
    """The job it runs; with --concurrency, the first of them and how many more."""
    job, more = worker.get("job"), int(worker.get("jobs") or 0) - 1
    return (job or "-") + (f" (+{more})" if job and more > 0 else "")


def _wait_for_code(code: str, stamp: float, expected: int, timeout: float) -> None:
    """Until no live worker started before the restart or runs other code than `code`, and as
    many are live as before (or SETTLE seconds have passed since the last straggler went: a
    farm that shrank, or a worker that was killed, does not hold this up)."""
    deadline = time.monotonic() + timeout
    cleared: float | None = None
    while True:
        live = [w for w in _workers(code) if not w["lost"]]
        stragglers = [w for w in live if w["stale"] or float(w.get("started") or 0) < stamp]
        if stragglers:
            cleared = None
        else:
            cleared = cleared or time.monotonic()
            if len(live) >= expected or time.monotonic() - cleared >= SETTLE:
                click.echo(f"{len(live)} live worker(s) run code {code}")
                return
        if time.monotonic() >= deadline:
            for w in stragglers:
                click.echo(f"still on {w.get('code') or 'unknown code'}: {w.get('host')} pid {w.get('pid')} "
                           f"({w.get('pipeline') or 'no pipeline'}, {w.get('state')})", err=True)
            raise FarmError(f"after {timeout:g}s: {len(live) - len(stragglers)} of {expected} worker(s) "
                            f"restarted on code {code}, {len(stragglers)} not yet")
        time.sleep(0.5)


@cli.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (with --watch: one per refresh, a line each).")
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@config_option
def status(as_json: bool, watch: bool, interval: float) -> None:
    """Queues, live workers and supervisord's processes."""
    if as_json and watch:
        _watch_json(interval)
        return
    if as_json:
        click.echo(json.dumps(status_doc(), indent=2, default=str))
        return
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    if not watch:
        console.print(status_view(status_doc()))
        return
    from rich.live import Live

    try:
        with Live(status_view(status_doc()), console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                live.update(status_view(status_doc()))
    except KeyboardInterrupt:
        pass


def _watch_json(interval: float) -> None:
    """One status object per line, flushed, every `interval` seconds until Ctrl-C or the reader
    goes away (`farmctl status --json --watch | jq -c .queues`)."""
    import os

    try:
        while True:
            sys.stdout.write(json.dumps(status_doc(), default=str, separators=(",", ":")) + "\n")
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:             # the reader has gone: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
