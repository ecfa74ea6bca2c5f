"""`farmctl render`: write (or check, or diff) the supervisor/systemd/cron files."""
from __future__ import annotations

import click

from .. import render as renderer
from .. import stopwindow
from ..cli import cli, config_option, load_manifest


@cli.command()
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if any rendered file is out of date.")
@click.option("--diff", "show_diff", is_flag=True, help="Write nothing; show the change a render would make.")
@config_option
@click.pass_context
def render(ctx: click.Context, check: bool, show_diff: bool) -> None:
    """Write supervisor/systemd/cron files from the manifest (deterministic: same manifest, same bytes)."""
    m = load_manifest(ctx)
    plan = renderer.plan(m)
    for problem in stopwindow.for_manifest(m)[1]:
        click.echo(f"warning: {problem}; stop windows use the pipelines' timeouts (or set stop_wait)", err=True)
    for path in renderer.skipped(m):
        click.echo(f"skipped {path}: {renderer.owner(path)}; left as it is", err=True)
    if show_diff:
        click.echo(plan.diff(), nl=False)
    if check or show_diff:
        if plan.changed:
            for path in sorted(plan.write):
                click.echo(f"out of date: {path}")
            for path in plan.remove:
                click.echo(f"to remove: {path}")
            ctx.exit(1)
        click.echo("up to date")
        return
    renderer.apply(m, plan)
    for path in sorted(plan.write):
        click.echo(f"wrote {path}")
    for path in plan.remove:
        click.echo(f"removed {path}")
    click.echo(f"{len(plan.write)} written, {len(plan.remove)} removed, {len(plan.unchanged)} unchanged")
