"""farmctl batches [ID], prune-batches --hours N (farm/batches.py)."""
from __future__ import annotations

import datetime as dt
import json

import click

from .. import batches as batches_mod
from ..cli import cli, config_option, load_manifest
from ..errors import UnknownJob


@cli.command("batches")
@click.argument("batch_id", required=False)
@click.option("--connection", help="Only this connection's store (default: every store).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Batches listed.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of batches (with ID: the one object).")
@config_option
def batches(batch_id: str | None, connection: str | None, limit: int, as_json: bool) -> None:
    """The recent batches and their progress; with ID, that batch (exit 1: unknown)."""
    load_manifest()
    if batch_id is not None:
        found = batches_mod.batch_status(batch_id, connection, _skipped)
        if found is None:
            raise UnknownJob(f"no batch with id {batch_id}")
        if as_json:
            click.echo(json.dumps(found, indent=2))
            return
        width = max(len(k) for k in found)
        for key, value in found.items():
            click.echo(f"{key.ljust(width)}  {_cell(key, value)}")
        return
    listed = batches_mod.recent_batches(limit, connection, _skipped)
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    head = ["ID", "NAME", "TOTAL", "PENDING", "FAILED", "PROGRESS", "CREATED", "FINISHED", "CANCELLED"]
    rows = [[b["id"], b["name"] or "-", str(b["total"]), str(b["pending"]), str(b["failed"]),
             f"{b['progress']:.0f}%", _cell("created_at", b["created_at"]), _cell("finished_at", b["finished_at"]),
             "yes" if b["cancelled"] else "-"] for b in listed]
    if not rows:
        click.echo("no batches")
        return
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@cli.command("prune-batches")
@click.option("--hours", type=click.FloatRange(min=0), default=24, show_default=True,
              help="Forget batches that finished more than this many hours ago.")
@click.option("--connection", help="Only this connection's store (default: every store).")
@config_option
def prune_batches(hours: float, connection: str | None) -> None:
    """Forget finished batches older than --hours (unfinished ones stay)."""
    load_manifest()
    n = batches_mod.prune_batches(hours, connection, _skipped)
    click.echo(f"{n} finished batch(es) older than {hours:g}h deleted")


def _skipped(name: str, e: Exception) -> None:
    click.echo(f"farmctl: connection {name!r} skipped (its store did not answer): {str(e).splitlines()[0]}",
               err=True)


def _cell(key: str, value: object) -> str:
    if value is None:
        return "-"
    if key.endswith("_at") and isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(float(value), dt.timezone.utc).isoformat(timespec="seconds")
    return str(value)
