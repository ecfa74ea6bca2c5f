"""cron.d lines for drain pipelines: `flock -n` so two drains of one pipeline never overlap.

cron runs the command with `/bin/sh -c` in a near-empty environment, so the line carries
FARM_CONFIG and the pipeline's `environment:` itself (`env NAME=value ...`; cron.d variable
lines would apply to every later line). Before the shell sees it, cron turns each unescaped
`%` into a newline (the rest becomes stdin) and `\\%` into `%`.
"""
from __future__ import annotations

import getpass
import shlex
from collections.abc import Sequence
from pathlib import Path

from ..manifest import Manifest, Pipeline


def sh(word: str) -> str:
    """A shell word that cron passes on intact: never `\\%`, where cron would eat the backslash."""
    return shlex.quote(word).replace("\\%", "\\''%")


def _environment(m: Manifest, p: Pipeline) -> str:
    pairs = m.worker_environment(p)
    return " ".join(sh(f"{k}={v}") for k, v in pairs)


def command(m: Manifest, exe: Sequence[str], p: Pipeline) -> str:
    """The shell command of one drain, `%` escaped for cron."""
    lock = m.root / "var" / f"drain-{p.name}.lock"
    argv = [*exe, "work", "--config", str(m.path), "--pipeline", p.name, *p.queue_args, "--stop-when-empty"]
    text = (f"cd {sh(str(m.root))} && env {_environment(m, p)} flock -n {sh(str(lock))} "
            f"{' '.join(map(sh, argv))} >> {sh(str(m.logs_dir / f'{p.name}.log'))} 2>&1")
    return text.replace("%", "\\%")


def render(m: Manifest, exe: Sequence[str], head: str) -> dict[Path, str]:
    drains = [p for p in m.pipelines.values() if p.drain]
    if not drains:
        return {}
    user = getpass.getuser()
    lines = ["SHELL=/bin/sh", "PATH=/usr/local/bin:/usr/bin:/bin"]
    lines += [f"{p.drain} {user} {command(m, exe, p)}" for p in drains]
    return {m.supervisor_dir / "farm.cron": head + "\n".join(lines) + "\n"}
