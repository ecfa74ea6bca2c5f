"""supervisord: one `[program:P]` per resident pipeline, and a supervisord.conf for a local farm.

supervisord reads these files with an ini parser that strips edge spaces and starts a comment
at ` ;` or ` #`, then %-expands most values (`%%` is a literal `%`). `command=` is then split
with `shlex.split`; `environment=` with shlex in non-POSIX mode (quotes, no escapes).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import FarmError
from ..manifest import Manifest, Pipeline, env_value_problem

_UNSAFE = re.compile(r"[^\w@%+=:,./-]", re.ASCII)      # shlex.quote's own notion of safe


def work_argv(m: Manifest, exe: Sequence[str], p: Pipeline) -> list[str]:
    """The worker's command line, as words (each renderer quotes them its own way)."""
    return [*exe, "work", "--config", str(m.path), "--pipeline", p.name, *p.queue_args]


def command(words: Sequence[str]) -> str:
    """A `command=` value: a backslash before each unsafe character survives shlex.split and
    keeps ` ;`/` #` from reading as a comment; `%` doubled for the %-expansion."""
    return " ".join(_UNSAFE.sub(r"\\\g<0>", w).replace("%", "%%") if w else "''" for w in words)


def ini_value(value: str | Path, what: str) -> str:
    """A plain value (a path) for a supervisord line, `%` doubled; refused where no escape exists."""
    text = str(value)
    if text != text.strip() or re.search(r"\s[;#]", text) or "%(here)s" in text:
        raise FarmError(f"{what} {text!r} cannot be written into a supervisord config (edge spaces, "
                        "' ;' or ' #', and '%(here)s' have no escape there): choose another path")
    return text.replace("%", "%%")


def env_value(value: str, what: str) -> str:
    """One `environment=` value, in the kind of quote it does not hold, `%` doubled."""
    problem = env_value_problem(value)
    if problem:
        raise FarmError(f"{what} {value!r} cannot be written into supervisord's environment=: {problem}")
    quote = "'" if '"' in value else '"'
    return quote + value.replace("%", "%%") + quote


def _environment(pairs: list[tuple[str, str]]) -> str:
    return ",".join(f"{k}={env_value(v, k)}" for k, v in pairs)


def program(m: Manifest, exe: Sequence[str], p: Pipeline, head: str, stop_seconds: int) -> str:
    env = m.worker_environment(p) + [("FARM_STOP_WINDOW", str(stop_seconds))]
    return head + _program(m, p, work_argv(m, exe, p), stop_seconds, env, numbered=True)


def _program(m: Manifest, p: Pipeline, argv: list[str], stop_seconds: int, env: list[tuple[str, str]],
             numbered: bool) -> str:
    # stdout_logfile is %-expanded twice (supervisor/options.py: saneget, then expand), so 4 x %
    logs = ini_value(m.logs_dir, "supervisor.logs").replace("%", "%%")
    name = "%(program_name)s_%(process_num)02d" if numbered else "%(program_name)s"
    lines = [
        f"[program:{p.name}]",
        f"command={command(argv)}",
        f"process_name={name}",
        f"numprocs={p.numprocs}",
        f"directory={ini_value(m.root, 'the project root')}",
        "autostart=true",
        "autorestart=true",
        "startsecs=1",
        "startretries=3",
        "stopsignal=TERM",
        f"stopwaitsecs={stop_seconds}",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={logs}/{name}.log",
        "stdout_logfile_maxbytes=50MB",
        "stdout_logfile_backups=5",
        f"environment={_environment(env)}",
    ]
    user, _ = m.user_of(p)
    if user:
        lines.append(f"user={user}")
    return "\n".join(lines) + "\n"


SCHEDULER_STOP = 30     # seconds: a dispatch in flight is bounded by the connections' timeouts (10 s)


def schedule_argv(m: Manifest, exe: Sequence[str]) -> list[str]:
    return [*exe, "schedule", "--config", str(m.path)]


def scheduler_identity(m: Manifest) -> Pipeline:
    """The scheduler as a pipeline of one with no environment of its own: what it shares with
    the workers (FARM_CONFIG, the manifest's ${VAR}s, the user) comes from the same code."""
    from ..schedule import SCHEDULER

    return Pipeline(name=SCHEDULER, connection=m.default)


def scheduler_program(m: Manifest, exe: Sequence[str], head: str) -> str:
    """`[program:farm-scheduler]`: one `farmctl schedule`, restarted whenever it exits."""
    p = scheduler_identity(m)
    return head + _program(m, p, schedule_argv(m, exe), SCHEDULER_STOP, m.worker_environment(p), numbered=False)


def supervisord_conf(m: Manifest, head: str) -> str:
    """The local supervisord's config; `[include]` is relative to this file (supervisord
    splits its value on spaces, so an absolute path with a space could not be named)."""
    var = ini_value(m.root / "var", "the project root")
    logs = ini_value(m.logs_dir, "supervisor.logs")
    return head + f"""[unix_http_server]
file={var}/supervisor.sock
chmod=0700

[supervisord]
logfile={logs}/supervisord.log
pidfile={var}/supervisord.pid
childlogdir={logs}
directory={ini_value(m.root, 'the project root')}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{var}/supervisor.sock

[include]
files = conf.d/*.conf
"""


def render(m: Manifest, exe: Sequence[str], head: str, windows: dict[str, int]) -> dict[Path, str]:
    """Program files where supervisord's [include] finds them; a supervisord.conf of our own
    only for a local farm (with `include:`, the system's supervisord reads the programs)."""
    files = {} if m.include else {m.supervisor_dir / "supervisord.conf": supervisord_conf(m, head)}
    for p in m.pipelines.values():
        if p.drain is None:
            path = m.programs_dir / f"{p.name}{m.program_suffix}"
            files[path] = program(m, exe, p, head, windows[p.name])
    if m.schedule:
        files[m.programs_dir / f"{scheduler_identity(m).name}{m.program_suffix}"] = scheduler_program(m, exe, head)
    return files
