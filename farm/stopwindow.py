"""How long a stop may wait for a worker: longer than any job of its pipeline may run.

supervisord's `stopwaitsecs`, systemd's `TimeoutStopSec` (and Kubernetes' grace period) are
the stop window: past it the process manager SIGKILLs the worker, and the job with it. The
window is the pipeline's `stop_wait`, else the longest timeout its jobs can have plus a
margin: the pipeline's `timeout` or the longest `timeout` of a job class or `@farm.job`
function defined in the `imports:` modules (a literal in their source: render runs no
application code), whichever is longer. `render` writes the window into the worker's
environment (FARM_STOP_WINDOW), so a worker clamps to the window its process manager really
has, and says so when its code asks for longer (render again). A job dispatched with a
longer `timeout=` than that is clamped by the worker to the window (less its own margin), so
that a deploy never cuts a job off inside its own timeout.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from . import modsource
from .manifest import Manifest, Pipeline

MARGIN = 30            # seconds of the window beyond the longest job timeout
DEFAULT_TIMEOUT = 60.0
CLAMP_MARGIN = 10      # a clamped job must end (and its watchdog act) this long before the window


def longest_job_timeout(modules: Iterable[str], root: str | None = None) -> tuple[float | None, list[str]]:
    """The longest literal `timeout` among the jobs the modules define, read from their source
    (nothing is imported: render often runs as root), and the modules that were not found."""
    base = Path(root) if root else None
    missing = [f"cannot find {m} to read its job timeouts" for m in modules if modsource.locate(m, base) is None]
    return modsource.longest(modules, base), missing


def longest_loaded(modules: Iterable[str]) -> float | None:
    """The longest `timeout` of the jobs the modules define, as this process imported them."""
    import sys

    from .jobs import FunctionJob, Job

    found: list[float] = []
    for name in modules:
        for value in vars(sys.modules.get(name) or object()).values():
            if isinstance(value, type) and issubclass(value, Job) and value.__module__ == name:
                timeout = value.timeout
            elif isinstance(value, FunctionJob) and value.fn.__module__ == name:
                timeout = value.options.get("timeout")
            else:
                continue
            if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
                found.append(float(timeout))
    return max(found) if found else None


def window_from_environment() -> int | None:
    """The stop window `render` wrote into the worker's environment (FARM_STOP_WINDOW)."""
    try:
        return int(os.environ["FARM_STOP_WINDOW"])
    except (KeyError, ValueError):
        return None


def stop_seconds(p: Pipeline, longest_job: float | None = None) -> int:
    """The stop window of a pipeline, in whole seconds."""
    if p.stop_wait is not None:
        return int(p.stop_wait)
    return int(max(p.timeout or DEFAULT_TIMEOUT, longest_job or 0) + MARGIN)


def job_limit(p: Pipeline, longest_job: float | None = None, window: int | None = None) -> float:
    """The longest timeout a job of this pipeline may run with: the stop window it was
    rendered with (`window`), else the one render would give it now, less a margin."""
    return max(1.0, (window or stop_seconds(p, longest_job)) - CLAMP_MARGIN)


def for_manifest(m: Manifest) -> tuple[dict[str, int], list[str]]:
    """Each pipeline's stop window, and why a job module could not be read."""
    longest, problems = longest_job_timeout(m.imports, str(m.root))
    return {name: stop_seconds(p, longest) for name, p in m.pipelines.items()}, problems
