"""Operating a farm: failed jobs, queues, status."""
from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import click

from .. import app
from ..cli import cli, config_option, load_manifest
from ..drivers.base import FailedJob
from ..errors import FarmError, UnknownJob


def _stores() -> list[tuple[str, Any]]:
    """(connection, store) for every connection that has a store, each store once."""
    m = load_manifest()
    seen: dict[int, tuple[str, Any]] = {}
    for name, conn in m.connections.items():
        if conn.driver == "database" or (conn.driver == "amqp" and conn.store):
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
        click.echo("no failed jobs")
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


@failed.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@config_option
def failed_show(job_id: str, as_json: bool) -> None:
    """One failed job: its payload and the whole traceback."""
    _, f = _find((job_id,))[0]
    row = _row(f)
    try:
        row["payload"] = json.loads(f.body)
    except ValueError:
        row["payload"] = f.body
    row["exception"] = f.exception
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    for key in ("id", "connection", "queue", "job", "attempts", "failed_at"):
        click.echo(f"{key}: {row[key]}")
    click.echo("payload:\n" + json.dumps(row["payload"], indent=2))
    click.echo("exception:\n" + f.exception)


@cli.command()
@click.argument("ids", nargs=-1, required=True)
@click.option("--queue", help="With `all`: only failed jobs of this queue.")
@click.option("--onto", help="Put them on this queue instead of their own.")
@config_option
def retry(ids: tuple[str, ...], queue: str | None, onto: str | None) -> None:
    """Put failed jobs back on their queue, attempts reset: `retry ID...` or `retry all`."""
    total = 0
    if ids == ("all",):
        for conn, s in _stores():
            while True:
                batch = s.failed(queue=queue, limit=500)
                if not batch:
                    break
                total += _retry(s, batch, onto)
    else:
        for s, f in _find(ids):
            total += _retry(s, [f], onto)
    click.echo(f"{total} job(s) pushed back onto their queue")


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


@cli.command()
@config_option
def flush() -> None:
    """Delete every failed job."""
    n = sum(s.prune_failed(time.time() + 1) for _, s in _stores())
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
@config_option
def clear(queue: str, connection: str | None) -> None:
    """Delete the ready jobs of a queue (reserved and delayed ones stay)."""
    load_manifest()
    n = app.queue(connection).clear(queue)
    click.echo(f"{n} job(s) cleared from {queue}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_option
def status(as_json: bool) -> None:
    """Queues, live workers and supervisord's processes."""
    m = load_manifest()
    queues: dict[str, dict[str, int]] = {}
    for name, conn in m.connections.items():
        if conn.driver == "sync":
            continue
        try:
            counts = app.queue(name).counts()
        except FarmError as e:
            raise FarmError(f"connection {name!r}: {e}") from None
        for q, c in counts.items():
            agg = queues.setdefault(q, {"ready": 0, "delayed": 0, "reserved": 0, "failed": 0})
            for k, v in c.items():
                agg[k] += v
    workers = []
    for conn_name, s in _stores():
        retry_after = m.connections[conn_name].retry_after
        for w in s.workers():
            w["lost"] = time.time() - w["heartbeat"] > retry_after
            workers.append(w)
    from ..supervisor_client import process_states

    doc = {"queues": queues, "workers": workers, "supervisor": process_states(m)}
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    click.echo("queues:")
    for q, c in sorted(queues.items()):
        click.echo(f"  {q:20} ready={c['ready']} delayed={c['delayed']} reserved={c['reserved']} "
                   f"failed={c['failed']}")
    click.echo("workers:")
    for w in workers:
        click.echo(f"  {w['host']}:{w['pid']} {w.get('pipeline') or '-'} {w.get('state')} "
                   f"job={w.get('job') or '-'} done={w.get('done')} rss={w.get('rss_mb')}MB"
                   f"{' LOST' if w['lost'] else ''}")
    sup = doc["supervisor"]
    click.echo("supervisor: " + ("not reachable" if sup is None else ""))
    for p in sup or []:
        click.echo(f"  {p['group']}:{p['name']} {p['state']} pid={p['pid']}")
