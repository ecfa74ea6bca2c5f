"""cron.d lines for drain pipelines: `flock -n` so two drains of one pipeline never overlap."""
from __future__ import annotations

import getpass
from pathlib import Path

from ..manifest import Manifest


def render(m: Manifest, exe: str, head: str) -> dict[Path, str]:
    drains = [p for p in m.pipelines.values() if p.drain]
    if not drains:
        return {}
    user = getpass.getuser()
    var = m.root / "var"
    lines = ["SHELL=/bin/sh", "PATH=/usr/local/bin:/usr/bin:/bin"]
    for p in drains:
        lines.append(f"{p.drain} {user} cd {m.root} && flock -n {var}/drain-{p.name}.lock "
                     f"{exe} work --config {m.path} --pipeline {p.name} --stop-when-empty "
                     f">> {m.logs_dir}/{p.name}.log 2>&1")
    return {m.supervisor_dir / "farm.cron": head + "\n".join(lines) + "\n"}
