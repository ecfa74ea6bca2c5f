"""`farmctl schedule`: run the manifest's `schedule:` entries, or list their next fire times."""
from __future__ import annotations

import json

import click

from .. import schedule as sched
from ..cli import cli, config_option, load_manifest
from ..log import Log


@cli.command()
@click.option("--list", "listing", is_flag=True, help="Print each entry with its next fire times, then exit.")
@click.option("--json", "as_json", is_flag=True, help="With --list: a JSON list.")
@click.option("--count", type=click.IntRange(min=1, max=100), default=3, show_default=True,
              help="With --list: fire times per entry.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@config_option
@click.pass_context
def schedule(ctx: click.Context, listing: bool, as_json: bool, count: int, log_format: str, log_level: str) -> None:
    """Dispatch each tick of each schedule: entry exactly once, with any number of schedulers."""
    m = load_manifest(ctx)
    if listing:
        _print(sched.upcoming(m, count), as_json)
        return
    ctx.exit(sched.serve(m, Log(fmt=log_format, level=log_level)))


def _print(rows: list[dict], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no schedule: entries")
        return
    for r in rows:
        where = f"{r['queue'] or '(its own queue)'} on {r['connection']}"
        click.echo(f"{r['name']}: {r['cron']} ({r['timezone']}) {r['job']} -> {where}")
        for at in r["next"]:
            click.echo(f"  {at}")
