"""`farmctl`: the only module that prints or exits."""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any, Callable

import click

from . import __version__ as farm_version
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
@click.version_option(farm_version, "--version", prog_name="farmctl",
                      message="%(prog)s (jobfarm) %(version)s")
@config_option
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """jobfarm: a job queue and a supervisor-managed worker farm."""
    ctx.meta["farm.verbose"] = verbose


def _queues(ctx: click.Context, param: click.Parameter,
            value: str | None) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """`--queue a,b` (strict priority) or `--queue a:6,b:3` (weighted): (names, weights)."""
    if value is None:
        return None
    from .queuespec import parse_flag

    try:
        return parse_flag(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


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
        click.option("--queue", "queues", callback=_queues, metavar="A,B|A:6,B:3",
                     help="Queues in priority order, or each with a weight (a:6,b:3): taken in proportion."),
        click.option("--pipeline", help="Take the options of this pipeline in the manifest."),
        click.option("--max-jobs", type=click.IntRange(min=0), help="Exit 0 after this many jobs."),
        click.option("--max-time", type=click.FloatRange(min=0), help="Exit 0 after this many seconds."),
        click.option("--stop-when-empty", is_flag=True, default=None, help="Exit 0 once no job is ready."),
        click.option("--sleep", type=click.FloatRange(min=0), help="Seconds to wait for a job when idle."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds one attempt may run."),
        click.option("--tries", type=click.IntRange(min=0), help="Attempts before a job fails (0: unlimited)."),
        click.option("--backoff", callback=_backoff, metavar="S[,S...]", help="Seconds before retry n."),
        click.option("--memory", type=click.IntRange(min=0), help="Exit 0 after a job past this RSS (MB)."),
        click.option("--rest", type=click.FloatRange(min=0), help="Seconds to rest between jobs."),
        click.option("--prefetch", type=click.IntRange(min=1), help="Most jobs to claim at once."),
        click.option("--concurrency", type=click.IntRange(min=1, max=1000),
                     help="Jobs to run at once, on threads (for jobs that wait on the network)."),
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
    from .worker import signals
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
        options = _limited(options, manifest, log)
    try:
        store = app.store(options.connection)
    except FarmError:
        store = None
    if options.concurrency > 1:
        from .worker.threads import ThreadedWorker

        if options.rest:
            log.warning("worker.rest_ignored", rest=options.rest, concurrency=options.concurrency,
                        detail="--rest applies to a worker without threads only")

        worker: Worker = ThreadedWorker(queue, store, options, registry, log, code=code,
                                        concurrency=options.concurrency)
    else:
        worker = Worker(queue, store, options, registry, log, code=code)
    status = worker.run()
    signals.exiting()
    ctx.exit(status)


def _limited(options: Any, manifest: Any, log: Log) -> Any:
    """No job may outlast the stop window: the one render wrote for this worker, else the one
    it would write now. Code that asks for longer than the rendered window is logged."""
    pipeline = manifest.pipeline(options.pipeline)
    window = stopwindow.window_from_environment()
    longest = stopwindow.longest_loaded(manifest.imports)
    limit = stopwindow.job_limit(pipeline, longest, window)
    if window and stopwindow.stop_seconds(pipeline, longest) > window:
        log.warning("worker.stop_window", window=window, wanted=stopwindow.stop_seconds(pipeline, longest),
                    detail="a job's timeout is longer than the rendered stop window: run farmctl render")
    return dataclasses.replace(options, job_limit=limit)


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
@click.option("--apply", "apply_", is_flag=True, help="Create the tables that are missing instead of printing.")
@config_option
def schema(connection: str | None, apply_: bool) -> None:
    """Print the SQL that creates the tables (touching no database); --apply creates them."""
    from .drivers import database

    m = load_manifest()
    conn = m.connection(connection)
    note = ""
    if conn.driver == "amqp" and conn.store:       # its failed jobs, stamps and heartbeats
        note = f"-- connection {conn.name!r} keeps its failed jobs, stamps and heartbeats in {conn.store!r}\n\n"
        conn = m.connection(conn.store)
    if conn.driver != "database":
        raise FarmError(f"connection {conn.name!r} ({conn.driver}) keeps no tables")
    if not apply_:
        click.echo(note + database.ddl(conn), nl=False)
        return
    app.queue(conn.name)                # opening the queue creates whatever is missing
    t = conn.table
    failed = f"{conn.failed_table}, " if conn.failed_table else ""      # failed_table: null: none
    click.echo(f"tables ready on connection {conn.name!r}: {t}, {failed}{t}_stamps, {t}_workers")


@cli.command()
@click.option("--queue", help="The queue (default: the document's `queue`, else `default`).")
@click.option("--connection", help="The connection (default: the manifest's default).")
@click.option("--delay", type=click.FloatRange(min=0), default=0, help="Seconds before it is ready.")
@click.argument("document")
@config_option
def push(queue: str | None, connection: str | None, delay: float, document: str) -> None:
    """Enqueue a raw v1 job document (JSON); prints its id (a new UUID when it has none)."""
    from .dispatch import new_id
    from .drivers.base import Outgoing

    try:
        doc = json.loads(document)
        if isinstance(doc, dict):
            if doc.get("id") is None:
                doc["id"] = new_id()
            doc["queue"] = queue or doc.get("queue") or "default"
        payload.check_shape(doc)
    except (ValueError, RecursionError) as e:
        raise click.UsageError(f"the job document is not JSON: {e}") from None
    except FarmError as e:
        raise click.UsageError(str(e)) from None
    load_manifest()
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
