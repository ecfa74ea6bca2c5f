"""systemd: an instance template `farm-P@.service` and `farm-P.target` wanting 1..numprocs.

systemd resolves `%` specifiers on every line used here (`%%` is a literal `%`), splits
`ExecStart=` and `Environment=` into words at spaces outside quotes with C escapes inside
them, and substitutes `$VAR` in ExecStart= arguments (`$$` is a literal `$`).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import FarmError
from ..manifest import Manifest, Pipeline
from .supervisor import SCHEDULER_STOP, schedule_argv, scheduler_identity, work_argv

_UNSAFE = re.compile(r"[^\w@%+=:,./-]", re.ASCII)
_NOT_IN_EXECUTABLE = re.compile(r"[\"'\\]")      # systemd refuses these in an executable's name
ENV = "/usr/bin/env"


def _quote(value: str) -> str:
    """A double-quoted word with C escapes, `%` doubled (`$` is left to the caller)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def _argument(word: str) -> str:
    """One ExecStart= argument, quoted only when it needs to be."""
    text = word.replace("%", "%%") if word and not _UNSAFE.search(word) else _quote(word)
    return text.replace("$", "$$")


def exec_start(words: Sequence[str]) -> str:
    """ExecStart=: systemd substitutes nothing in the executable and refuses `'`, `"` or `\\` in
    its name; a farmctl whose path holds one runs through /usr/bin/env instead."""
    exe, *args = words
    if _NOT_IN_EXECUTABLE.search(exe):
        if "=" in exe:
            raise FarmError(f"systemd cannot run {exe!r}: it holds a quote or backslash, and '=' as well")
        exe, args = ENV, [exe, *args]
    first = exe.replace("%", "%%") if not _UNSAFE.search(exe) else _quote(exe)
    return " ".join([first, *map(_argument, args)])


def working_directory(root: Path) -> str:
    """WorkingDirectory= is taken as it stands (no quotes): only `%` can be escaped."""
    text = str(root)
    if text != text.strip() or text.endswith("\\"):
        raise FarmError(f"the project root {text!r} cannot be a systemd WorkingDirectory= "
                        "(edge spaces or a trailing backslash): choose another path")
    return text.replace("%", "%%")


def service(m: Manifest, exe: Sequence[str], p: Pipeline, head: str, stop_seconds: int) -> str:
    env = m.worker_environment(p) + [("FARM_STOP_WINDOW", str(stop_seconds))]
    return head + _unit(m, p, f"jobfarm worker %i of pipeline {p.name}", [f"PartOf=farm-{p.name}.target"],
                        env, work_argv(m, exe, p), stop_seconds, f"farm-{p.name}", f"farm-{p.name}.target")


def scheduler_service(m: Manifest, exe: Sequence[str], head: str) -> str:
    """`farm-scheduler.service`: one `farmctl schedule`, restarted whenever it exits."""
    p = scheduler_identity(m)
    return head + _unit(m, p, "jobfarm scheduler (farmctl schedule)", [], m.worker_environment(p),
                        schedule_argv(m, exe), SCHEDULER_STOP, p.name, "multi-user.target")


def _unit(m: Manifest, p: Pipeline, description: str, part_of: list[str], env: list[tuple[str, str]],
          argv: list[str], stop_seconds: int, ident: str, wanted_by: str) -> str:
    lines = [
        "[Unit]",
        f"Description={description}",
        "After=network-online.target",
        "Wants=network-online.target",
        *part_of,
        "",
        "[Service]",
        "Type=simple",
        *_identity(m, p),
        f"WorkingDirectory={working_directory(m.root)}",
        *[f"Environment={_quote(f'{k}={v}')}" for k, v in env],
        f"ExecStart={exec_start(argv)}",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        f"TimeoutStopSec={stop_seconds}",
        "Restart=always",
        "RestartSec=1",
        f"SyslogIdentifier={ident}",
        "",
        "[Install]",
        f"WantedBy={wanted_by}",
    ]
    return "\n".join(lines) + "\n"


def target(p: Pipeline, head: str) -> str:
    wants = " ".join(f"farm-{p.name}@{i}.service" for i in range(1, p.numprocs + 1))
    return head + "\n".join([
        "[Unit]",
        f"Description=jobfarm pipeline {p.name} ({p.numprocs} workers)",
        f"Wants={wants}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]) + "\n"


def _identity(m: Manifest, p: Pipeline) -> list[str]:
    user, group = m.user_of(p)
    return ([f"User={user}"] if user else []) + ([f"Group={group}"] if group else [])


def render(m: Manifest, exe: Sequence[str], head: str, windows: dict[str, int]) -> dict[Path, str]:
    files: dict[Path, str] = {}
    for p in m.pipelines.values():
        if p.drain is None:
            files[m.systemd_dir / f"farm-{p.name}@.service"] = service(m, exe, p, head, windows[p.name])
            files[m.systemd_dir / f"farm-{p.name}.target"] = target(p, head)
    if m.schedule:
        files[m.systemd_dir / f"{scheduler_identity(m).name}.service"] = scheduler_service(m, exe, head)
    return files
