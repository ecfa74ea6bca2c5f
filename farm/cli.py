"""`farmctl`: the only module that prints or exits."""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Callable

import click

from . import app, fingerprint, payload, stopwindow
from .errors import FarmError, ManifestError
from .log import Log

CONFIG_HELP = "The manifest (default: $FARM_CONFIG, then ./conf/farm.yaml)."


def _remember_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value:
        ctx.find_root().meta["farm.config"] = value
    return value


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`--config` is accepted before or after the subcommand."""
    return click.option("--config", "config", metavar="PATH", help=CONFIG_HELP, expose_value=False,
                        is_eager=True, callback=_remember_config)(fn)


def load_manifest(ctx: click.Context | None = None) -> Any:
    ctx = ctx or click.get_current_context()
    return app.configure(ctx.find_root().meta.get("farm.config"))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@config_option
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """jobfarm: a job queue and a supervisor-managed worker farm."""
    ctx.meta["farm.verbose"] = verbose


def _csv(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise click.BadParameter("expected a comma-separated list of queue names")
    return items


def _backoff(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    from .manifest import parse_backoff

    try:
        return parse_backoff(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def worker_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--connection", help="The connection to work (default: the manifest's default)."),
        click.option("--queue", "queues", callback=_csv, metavar="A,B", help="Queues in priority order."),
        click.option("--pipeline", help="Take the options of this pipeline in the manifest."),
        click.option("--max-jobs", type=click.IntRange(min=0), help="Exit 0 after this many jobs."),
        click.option("--max-time", type=click.FloatRange(min=0), help="Exit 0 after this many seconds."),
        click.option("--stop-when-empty", is_flag=True, default=None, help="Exit 0 once no job is ready."),
        click.option("--sleep", type=click.FloatRange(min=0), help="Seconds to wait for a job when idle."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds one attempt may run."),
        click.option("--tries", type=click.IntRange(min=1), help="Attempts before a job fails."),
        click.option("--backoff", callback=_backoff, metavar="S[,S...]", help="Seconds before retry n."),
        click.option("--memory", type=click.IntRange(min=0), help="Exit 0 after a job past this RSS (MB)."),
        click.option("--rest", type=click.FloatRange(min=0), help="Seconds to rest between jobs."),
        click.option("--prefetch", type=click.IntRange(min=1), help="Most jobs to claim at once."),
        click.option("--once", is_flag=True, default=None, help="Run one job, then exit."),
        click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
                     show_default=True),
        config_option,
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@cli.command()
@worker_options
@click.pass_context
def work(ctx: click.Context, log_format: str, log_level: str, **flags: Any) -> None:
    """Run a worker."""
    from .worker.loop import Worker, connect
    from .worker.options import merge

    manifest = load_manifest(ctx)
    options = merge(manifest, flags)
    sys.path.insert(0, str(manifest.root))
    log = Log(fmt=log_format, level=log_level)
    queue = connect(lambda: app.queue(options.connection), log)
    registry = payload.Registry(manifest.imports)
    _import_all(manifest.imports, log)
    code = fingerprint.loaded(manifest.imports)
    if options.pipeline:                # as long as the process manager's stop window allows
        longest, _ = stopwindow.longest_job_timeout(manifest.imports)
        options = dataclasses.replace(
            options, job_limit=stopwindow.job_limit(manifest.pipeline(options.pipeline), longest))
    try:
        store = app.store(options.connection)
    except FarmError:
        store = None
    ctx.exit(Worker(queue, store, options, registry, log, code=code).run())


def _import_all(modules: tuple[str, ...], log: Log) -> None:
    """Import the allowed modules up front: their event handlers register, their errors show."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:
            log.error("worker.import", module=name, error=f"{type(e).__name__}: {e}",
                      detail="its jobs will be failed until it imports")


@cli.command()
@click.option("--connection", help="The connection (default: the manifest's default).")
@config_option
def schema(connection: str | None) -> None:
    """Print the SQL that creates the tables, for migrations managed by hand."""
    load_manifest()
    q = app.queue(connection)
    if not hasattr(q, "ddl"):
        raise FarmError(f"connection {q.name!r} keeps no tables")
    click.echo(q.ddl(), nl=False)


@cli.command()
@click.option("--queue", help="The queue (default: the document's `queue`, else `default`).")
@click.option("--connection", help="The connection (default: the manifest's default).")
@click.option("--delay", type=click.FloatRange(min=0), default=0, help="Seconds before it is ready.")
@click.argument("document")
@config_option
def push(queue: str | None, connection: str | None, delay: float, document: str) -> None:
    """Enqueue a raw v1 job document (JSON); prints its id."""
    from .drivers.base import Outgoing

    try:
        doc = payload.parse(document)
    except FarmError as e:
        raise click.UsageError(str(e)) from None
    load_manifest()
    doc["queue"] = queue or doc.get("queue") or "default"
    doc.setdefault("attempts", 0)
    doc.setdefault("dispatched_at", payload.utcnow_iso())
    app.queue(connection).push([Outgoing(id=doc["id"], queue=doc["queue"], body=payload.dumps(doc),
                                         available_at=time.time() + delay, attempts=int(doc["attempts"]))])
    click.echo(doc["id"])


def main() -> None:
    """Entry point: map errors to one line and the exit status of DESIGN.md."""
    verbose = "-v" in sys.argv[1:] or "--verbose" in sys.argv[1:]
    try:
        status = cli.main(standalone_mode=False, prog_name="farmctl")
        sys.exit(status if isinstance(status, int) else 0)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.UsageError as e:
        click.echo(f"farmctl: {e.format_message()}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"farmctl: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except ManifestError as e:
        for problem in e.problems:
            click.echo(problem, err=True)
        sys.exit(2)
    except FarmError as e:
        if verbose:
            raise
        click.echo(f"farmctl: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


def _register() -> None:
    """Commands kept in their own modules."""
    from . import commands  # noqa: F401


_register()
