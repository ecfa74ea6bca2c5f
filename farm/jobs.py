"""Jobs: `farm.Job` subclasses and `@farm.job` functions, and their payloads."""
from __future__ import annotations

import datetime as dt
import functools
import inspect
from typing import Any, Callable

from .errors import PayloadError

# Attributes that are options of the job, never part of its payload.
OPTIONS = frozenset({"queue", "connection", "tries", "backoff", "timeout", "max_exceptions", "delay",
                     "retention", "unique_for", "unique_until", "middleware", "encrypted"})


class Job:
    """A unit of work; its public attributes are the payload, `handle()` the work."""

    queue: str | None = None
    connection: str | None = None
    tries: int | None = None
    backoff: int | float | list[float] | None = None
    timeout: float | None = None
    max_exceptions: int | None = None
    delay: Any = None         # seconds, a timedelta or an aware datetime
    retention: float | None = None   # seconds a finished job stays visible as done (farm.job_status)
    unique_for: float | None = None  # seconds a dispatched copy keeps out duplicates (farm/unique.py)
    unique_until: str = "done"       # or "processing": the unique lock is freed when the job starts
    middleware: list[Any] = []       # run in the worker around handle() (farm/middleware.py)
    encrypted: bool = False          # the payload is stored encrypted with $FARM_KEY (farm/crypto.py)

    def handle(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.handle() is not written")

    def failed(self, exc: BaseException) -> None:
        """Called once, in the worker, when the job has finally failed."""

    def retry_until(self) -> dt.datetime | None:
        """An aware datetime after which the job is not retried; None for no limit."""
        return None

    # -- during handle() ------------------------------------------------------------
    def release(self, delay: float | dt.timedelta = 0) -> None:
        """Put the job back on its queue after `delay`; the attempt counts (unless a middleware
        calls it instead of `next`: that holds the job back, farm/middleware.py)."""
        seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else float(delay)
        self._farm_outcome = ("release", max(0.0, seconds))

    def fail(self, exc: BaseException | str | None = None) -> None:
        """Fail the job now, with no further retry."""
        if exc is None or isinstance(exc, str):
            exc = RuntimeError(exc or "the job failed itself")
        self._farm_outcome = ("fail", exc)

    @property
    def job_id(self) -> str | None:
        return getattr(self, "_farm_id", None)

    @property
    def attempts(self) -> int:
        return getattr(self, "_farm_attempts", 0)

    @property
    def batch(self) -> Any:
        """The batch this job runs in (`.id`, `.add([...])`, farm/batches.py), else None."""
        return getattr(self, "_farm_batch", None)

    # -- dispatching --------------------------------------------------------------------
    def dispatch(self, **options: Any) -> str | None:
        from .dispatch import dispatch

        return dispatch(self, **options)

    def payload(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in OPTIONS}

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> "Job":
        """The job with its payload attributes set, without calling `__init__` (as Laravel does).

        Data may only set public data attributes: never a private name (`_farm_id`), an option
        (`queue`, `tries`, ...) or anything the class defines as a method or property.
        """
        known = _DATA_KEYS.setdefault(cls, set())
        for key in data:
            if key in known:
                continue
            if key.startswith("_") or key in OPTIONS or _is_behaviour(cls, key):
                raise PayloadError(f"data: {key[:50]!r} is not a payload attribute of {cls.__qualname__}")
            if len(known) < 256:        # the hot path checks a class's usual keys once
                known.add(key)
        job = cls.__new__(cls)
        job.__dict__.update(data)
        return job


_DATA_KEYS: dict[type, set[str]] = {}     # per job class: payload keys already found allowed


def _is_behaviour(cls: type, key: str) -> bool:
    """A method, property or other descriptor of the class, which data must not shadow."""
    found = inspect.getattr_static(cls, key, None)
    return callable(found) or hasattr(found, "__get__") or isinstance(found, (staticmethod, classmethod))


def job_name(obj: Job) -> str:
    if isinstance(obj, FunctionCall):
        return obj.function.name
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


class FunctionJob:
    """What `@farm.job` makes of a function: still callable, plus `.dispatch()` and `.job()`."""

    def __init__(self, fn: Callable[..., Any], **options: Any) -> None:
        unknown = set(options) - OPTIONS
        if unknown:
            raise TypeError(f"@farm.job got unknown options: {', '.join(sorted(unknown))}")
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.options = options
        self.signature = inspect.signature(fn)
        self.name = f"{fn.__module__}:{fn.__qualname__}"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def job(self, *args: Any, **kwargs: Any) -> "FunctionCall":
        """A job object for this call, to dispatch with options or put in a chain or batch."""
        bound = self.signature.bind(*args, **kwargs)
        return FunctionCall(self, dict(bound.arguments))

    def dispatch(self, *args: Any, **kwargs: Any) -> str | None:
        return self.job(*args, **kwargs).dispatch()

    def run(self, data: dict[str, Any]) -> Any:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for p in self.signature.parameters.values():
            if p.name not in data:
                continue
            value = data[p.name]
            if p.kind is p.VAR_POSITIONAL:
                args.extend(value)
            elif p.kind is p.VAR_KEYWORD:
                kwargs.update(value)
            elif p.kind is p.KEYWORD_ONLY or kwargs:
                kwargs[p.name] = value
            else:
                args.append(value)
        unknown = set(data) - set(self.signature.parameters)
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in self.signature.parameters.values()):
            raise TypeError(f"{self.name} got unexpected arguments: {', '.join(sorted(unknown))}")
        return self.fn(*args, **kwargs)


class FunctionCall(Job):
    """One call of a `@farm.job` function (or any callable named in a raw job) as a Job."""

    def __init__(self, function: FunctionJob, data: dict[str, Any]) -> None:
        self._function = function
        self._data = data

    @property
    def function(self) -> FunctionJob:
        return self._function

    def payload(self) -> dict[str, Any]:
        return self._data

    def option(self, name: str) -> Any:
        return self._function.options.get(name)

    def handle(self) -> Any:
        return self._function.run(self._data)


def job(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Make a function a job: `@farm.job` or `@farm.job(queue="emails", tries=3)`."""
    if fn is not None:
        return FunctionJob(fn)
    return lambda f: FunctionJob(f, **options)


def option(obj: Job, name: str) -> Any:
    """A job's own option: set on the function for `@farm.job`, else the class attribute."""
    if isinstance(obj, FunctionCall):
        return obj.option(name)
    return getattr(type(obj), name, None)


def instantiate(target: Any, data: dict[str, Any]) -> Job:
    """The job object a worker runs for a resolved `module:Qualname` and its data."""
    if isinstance(target, type) and issubclass(target, Job):
        return target.from_payload(data)
    if isinstance(target, FunctionJob):
        return FunctionCall(target, data)
    if inspect.isfunction(target):
        return FunctionCall(FunctionJob(target), data)
    raise TypeError(f"{target!r} is neither a farm.Job subclass nor a function")
