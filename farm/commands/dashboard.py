"""`farmctl dashboard`: the web page over the farm and /metrics."""
from __future__ import annotations

import os
import signal
from typing import Any

import click

from ..cli import cli, config_option, load_manifest
from ..errors import FarmError


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (the default answers this machine only).")
@click.option("--port", type=click.IntRange(0, 65535), default=8085, show_default=True,
              help="Port to listen on (0: any free port, printed at start).")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="On a loopback --host, also answer for this Host name (a reverse proxy's); "
                   "other names are refused, so a page elsewhere cannot read the farm through DNS rebinding.")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between two readings of the farm.")
@config_option
@click.pass_context
def dashboard(ctx: click.Context, host: str, port: int, allow_hosts: tuple[str, ...], interval: float) -> None:
    """Serve the web dashboard (retry and forget need $FARM_DASHBOARD_TOKEN)."""
    from ..dashboard.data import FarmThread, Snapshot
    from ..dashboard.server import Dashboard

    load_manifest()
    token = os.environ.get("FARM_DASHBOARD_TOKEN") or None
    farm = FarmThread(ctx)
    snapshot = Snapshot(farm, interval)
    try:
        server = Dashboard((host, port), farm, snapshot, token, allow_hosts)
    except OSError as e:
        farm.close()
        raise FarmError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    snapshot.start()
    bound_host, bound_port = server.server_address[:2]
    mode = "retry and forget need the token" if token else "read-only: FARM_DASHBOARD_TOKEN is not set"
    click.echo(f"dashboard: http://{_url_host(str(bound_host))}:{bound_port}/ ({mode})")
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        snapshot.stop()
        server.server_close()
        farm.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _stop(signum: int, frame: Any) -> None:
    """TERM (supervisord, Kubernetes) stops the server as Ctrl-C does."""
    raise KeyboardInterrupt
