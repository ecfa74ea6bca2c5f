"""farmctl job ID, cancel ID, pause QUEUE, resume QUEUE (farm/operations.py)."""
from __future__ import annotations

import json

import click

from .. import operations
from ..cli import cli, config_option, load_manifest
from ..errors import FarmError, UnknownJob

CONNECTION_HELP = "Only this connection (default: every connection of the manifest)."


@cli.command("job")
@click.argument("job_id")
@click.option("--connection", help=CONNECTION_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_option
def job(job_id: str, connection: str | None, as_json: bool) -> None:
    """Where a job is: ready, delayed, reserved (by which worker), failed or done (exit 1: unknown)."""
    m = load_manifest()
    found = operations.job_status(job_id, connection)
    if found is None:
        amqp = any(c.driver == "amqp" for c in m.connections.values())
        raise UnknownJob(f"no job with id {job_id} (a finished job is kept only with a `retention`"
                         + ("; RabbitMQ shows a job only while a worker runs it)" if amqp else ")"))
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    width = max(len(k) for k in found)
    for key, value in found.items():
        if value is not None:
            click.echo(f"{key.ljust(width)}  {value}")


@cli.command("cancel")
@click.argument("job_id")
@click.option("--connection", help=CONNECTION_HELP)
@config_option
def cancel(job_id: str, connection: str | None) -> None:
    """Remove a job no worker has started (ready, delayed, or waiting for its retry)."""
    load_manifest()
    done = operations.cancel_job(job_id, connection)
    if not done.ok:
        raise FarmError(f"not cancelled: {done.reason}")
    click.echo(f"cancelled {job_id}")


@cli.command("pause")
@click.argument("queue")
@click.option("--connection", help="Only the workers of this connection's store (default: every store).")
@config_option
def pause(queue: str, connection: str | None) -> None:
    """Every worker stops taking jobs from QUEUE within a second; running jobs finish."""
    load_manifest()
    operations.pause(queue, connection)
    click.echo(f"paused {queue}: workers take no new job from it until `farmctl resume {queue}`")


@cli.command("resume")
@click.argument("queue")
@click.option("--connection", help="Only the workers of this connection's store (default: every store).")
@config_option
def resume(queue: str, connection: str | None) -> None:
    """Workers take jobs from QUEUE again within a second (a queue not paused: nothing to do)."""
    load_manifest()
    was = operations.resume(queue, connection)
    click.echo(f"resumed {queue}" if was else f"{queue} was not paused")
