"""`farmctl listen` (Laravel's queue:listen): every job in a fresh `farmctl work --once` process.

Code edited on disk is used by the next job with no restart. The listener itself never
imports job code; it waits until one of its queues has a ready job, then runs a child.
Signals: the child is a normal worker in the listener's process group, so a TERM from
supervisord (stopasgroup) reaches both: the child finishes its job, then both exit 0. A TERM
sent to the listener alone waits for the child's job too; a second one is passed on, so the
child gives its job back.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import click

from .. import app, waker
from ..cli import cli, load_manifest, worker_options
from ..errors import FarmError
from ..log import Log
from ..worker import signals
from ..worker.options import WorkerOptions, merge
from ..worker.weights import Rotation

PASSED_ON = ("connection", "queues", "timeout", "tries", "backoff", "memory", "prefetch")


def child_command(config: str, options: WorkerOptions, log_format: str, log_level: str) -> list[str]:
    cmd = [sys.executable, "-m", "farm", "work", "--once", "--stop-when-empty", "--config", config,
           "--log-format", log_format, "--log-level", log_level]
    for name in PASSED_ON:
        value = getattr(options, name)
        if name == "prefetch":
            value = value or 1          # the child runs one job: holding more would reorder the queue
        if value is None:
            continue
        if isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        cmd += ["--" + name.rstrip("s") if name == "queues" else "--" + name.replace("_", "-"), str(value)]
    return cmd


class Listener:
    def __init__(self, queue: Any, options: WorkerOptions, command: list[str], log: Log) -> None:
        self.queue, self.options, self.command, self.log = queue, options, command, log
        self.stops = 0
        self.child: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")   # an edit in the same second still counts
        # weighted: each child runs one job, so the listener keeps the rotation and hands each
        # child the order of its one claim as a strict --queue
        self.rotation = Rotation(options.queues, options.weights) if options.weights else None
        self.live: tuple[str, ...] = options.queues

    def next_command(self) -> list[str]:
        """The child's command; for a weighted listener with the next order of the rotation."""
        if self.rotation is None or "--queue" not in self.command:
            return self.command
        cmd = list(self.command)
        cmd[cmd.index("--queue") + 1] = ",".join(self.rotation.next_order(self.live))
        return cmd

    def on_signal(self, signum: int, frame: Any) -> None:
        self.stops += 1
        if self.stops >= 2 and self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)     # the child's own second TERM: give the job back
            self.child.send_signal(signal.SIGTERM)

    def ready(self) -> bool:
        """A queue of ours that is not paused (`farmctl pause`) has a ready job."""
        from ..operations import paused

        counts = self.queue.counts()
        try:
            held = set(paused(self.options.connection))
        except FarmError:
            held = set()                # no store (amqp without `store:`): nothing can be paused
        self.live = tuple(q for q in self.options.queues if q not in held) or self.options.queues
        return any(counts.get(q, {}).get("ready", 0) > 0 for q in self.options.queues if q not in held)

    def run(self) -> int:
        """Run children until a limit; `--once`: one job (or none, after one wait), as `work --once`."""
        o = self.options
        started, runs, status, waited = time.monotonic(), 0, 0, False
        self.log.info("listener.start", queues=o.queue_flag, connection=o.connection)
        while not self.stops:
            if ((o.max_jobs and runs >= o.max_jobs) or (o.once and runs)
                    or (o.max_time and time.monotonic() - started >= o.max_time)):
                break
            if not self.ready():
                if o.stop_when_empty or (o.once and waited):
                    break
                waker.wait(min(o.sleep, 1.0))
                waited = True
                continue
            self.child = subprocess.Popen(self.next_command(), env=self.env)
            while True:
                try:
                    status = self.child.wait()
                    break
                except InterruptedError:
                    continue
            self.child = None
            runs += 1
            if status not in (0,) and self.stops < 2:
                self.log.warning("listener.child", status=status)
            if o.rest:
                waker.wait(o.rest)
        self.log.info("listener.stop", runs=runs, reason="signal" if self.stops else "limit")
        return 1 if self.stops >= 2 else 0


@cli.command()
@worker_options
@click.pass_context
def listen(ctx: click.Context, log_format: str, log_level: str, **flags: Any) -> None:
    """Like `work`, but each job runs in a fresh process, so edited code is picked up."""
    manifest = load_manifest(ctx)
    options = merge(manifest, flags)
    queue = app.queue(options.connection)
    listener = Listener(queue, options, child_command(str(manifest.path), options, log_format, log_level),
                        Log(fmt=log_format, level=log_level))
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, listener.on_signal) for s in handled}
    try:
        with signals.wakeup():
            code = listener.run()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    ctx.exit(code)
