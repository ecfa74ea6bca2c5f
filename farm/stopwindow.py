"""How long a stop may wait for a worker: longer than any job of its pipeline may run.

supervisord's `stopwaitsecs`, systemd's `TimeoutStopSec` (and Kubernetes' grace period) are
the stop window: past it the process manager SIGKILLs the worker, and the job with it. The
window is the pipeline's `stop_wait`, else the longest timeout its jobs can have plus a
margin: the pipeline's `timeout` or the longest `timeout` of a job class or `@farm.job`
function defined in the `imports:` modules, whichever is longer. A job dispatched with a
longer `timeout=` than that is clamped by the worker to the window (less its own margin), so
that a deploy never cuts a job off inside its own timeout.
"""
from __future__ import annotations

import importlib
import sys
from typing import Iterable

from .manifest import Manifest, Pipeline

MARGIN = 30            # seconds of the window beyond the longest job timeout
DEFAULT_TIMEOUT = 60.0
CLAMP_MARGIN = 10      # a clamped job must end (and its watchdog act) this long before the window


def longest_job_timeout(modules: Iterable[str], root: str | None = None) -> tuple[float | None, list[str]]:
    """The longest `timeout` among the jobs the modules define, and the modules that would not
    import (their jobs are not counted)."""
    from .jobs import FunctionJob, Job

    if root and root not in sys.path:
        sys.path.insert(0, root)
    longest: float | None = None
    problems: list[str] = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as e:
            problems.append(f"cannot import {name} to read its job timeouts ({type(e).__name__}: {e})")
            continue
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Job) and value.__module__ == name:
                timeout = value.timeout
            elif isinstance(value, FunctionJob) and value.fn.__module__ == name:
                timeout = value.options.get("timeout")
            else:
                continue
            if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
                longest = timeout if longest is None else max(longest, timeout)
    return longest, problems


def stop_seconds(p: Pipeline, longest_job: float | None = None) -> int:
    """The stop window of a pipeline, in whole seconds."""
    if p.stop_wait is not None:
        return int(p.stop_wait)
    return int(max(p.timeout or DEFAULT_TIMEOUT, longest_job or 0) + MARGIN)


def job_limit(p: Pipeline, longest_job: float | None = None) -> float:
    """The longest timeout a job of this pipeline may run with."""
    return max(1.0, stop_seconds(p, longest_job) - CLAMP_MARGIN)


def for_manifest(m: Manifest) -> tuple[dict[str, int], list[str]]:
    """Each pipeline's stop window, and why a job module could not be read."""
    longest, problems = longest_job_timeout(m.imports, str(m.root))
    return {name: stop_seconds(p, longest) for name, p in m.pipelines.items()}, problems
