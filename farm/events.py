"""Job events: `farm.on("before" | "after" | "failing", fn)`, called in the worker.

Handlers register when the worker imports the manifest's `imports:` modules, so they live in
one of those modules. A handler that raises is logged (`event.error`) and changes nothing
about the job: the job's outcome was decided (or is decided) without it. A plain worker
with no handler pays one empty-list check per call site.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import FarmError

EVENTS = ("before", "after", "failing")
HANDLERS: dict[str, list[Callable[["JobEvent"], Any]]] = {name: [] for name in EVENTS}


@dataclass(frozen=True)
class JobEvent:
    """What a handler is told: the job (its payload attributes set) and where it runs."""

    name: str                        # before, after or failing
    job: Any                         # the farm.Job instance
    job_id: str | None
    queue: str | None
    connection: str | None
    attempts: int
    exception: BaseException | None = None   # set for `failing`


def on(event: str, fn: Callable[[JobEvent], Any]) -> Callable[[JobEvent], Any]:
    """Call `fn(ev)` at `event` for every job this process runs; returns `fn` (a decorator too)."""
    if event not in HANDLERS:
        raise FarmError(f"farm.on: unknown event {event!r} (known: {', '.join(EVENTS)})")
    if not callable(fn):
        raise FarmError(f"farm.on({event!r}, ...): the handler must be callable, got {type(fn).__name__}")
    HANDLERS[event].append(fn)
    return fn


def fire(event: str, log: Any, job: Any, job_id: str | None, queue: str | None, connection: str | None,
         attempts: int, exception: BaseException | None = None) -> None:
    """Call the handlers of `event` in the order they registered; each one's error is logged."""
    handlers = HANDLERS[event]
    if not handlers:
        return
    ev = JobEvent(event, job, job_id, queue, connection, attempts, exception)
    for fn in list(handlers):
        try:
            fn(ev)
        except Exception as e:       # a handler's trouble is never the job's
            text = str(e).strip().splitlines()
            error = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
            if log is None:          # dispatch_sync, the sync driver: the process's stderr
                from .log import Log

                log = Log()
            log.error("event.error", on=event, id=job_id, handler=_name(fn), error=error)


def _name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
