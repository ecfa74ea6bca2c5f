"""`farmctl metrics`: the farm's metrics once, in Prometheus' text format."""
from __future__ import annotations

import click

from ..cli import cli, config_option, load_manifest


@cli.command()
@config_option
def metrics() -> None:
    """Print the metrics a scrape of the dashboard's /metrics returns (queues, jobs, workers)."""
    from .. import metrics as farm_metrics      # prometheus_client: loaded by this command only

    click.echo(farm_metrics.render(load_manifest()).decode(), nl=False)
