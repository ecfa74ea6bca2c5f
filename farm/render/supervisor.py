"""supervisord: one `[program:P]` per resident pipeline, and a supervisord.conf for a local farm."""
from __future__ import annotations

from pathlib import Path

from ..manifest import Manifest, Pipeline

STOP_MARGIN = 30          # seconds beyond the job timeout before supervisord kills


def stop_seconds(p: Pipeline) -> int:
    """Longer than one job may run, so a graceful stop never cuts a job off."""
    return int((p.timeout or 60) + STOP_MARGIN)


def work_command(m: Manifest, exe: str, p: Pipeline) -> str:
    return f"{exe} work --config {m.path} --pipeline {p.name}"


def _environment(m: Manifest, p: Pipeline) -> str:
    pairs = [("FARM_CONFIG", str(m.path))] + [(k, v) for k, v in p.environment if k != "FARM_CONFIG"]
    return ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def program(m: Manifest, exe: str, p: Pipeline, head: str) -> str:
    logs = m.logs_dir
    lines = [
        f"[program:{p.name}]",
        f"command={work_command(m, exe, p)}",
        "process_name=%(program_name)s_%(process_num)02d",
        f"numprocs={p.numprocs}",
        f"directory={m.root}",
        "autostart=true",
        "autorestart=true",
        "startsecs=1",
        "startretries=3",
        "stopsignal=TERM",
        f"stopwaitsecs={stop_seconds(p)}",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={logs}/%(program_name)s_%(process_num)02d.log",
        "stdout_logfile_maxbytes=50MB",
        "stdout_logfile_backups=5",
        f"environment={_environment(m, p)}",
    ]
    return head + "\n".join(lines) + "\n"


def supervisord_conf(m: Manifest, head: str) -> str:
    var = m.root / "var"
    return head + f"""[unix_http_server]
file={var}/supervisor.sock
chmod=0700

[supervisord]
logfile={m.logs_dir}/supervisord.log
pidfile={var}/supervisord.pid
childlogdir={m.logs_dir}
directory={m.root}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{var}/supervisor.sock

[include]
files = {m.supervisor_dir}/conf.d/*.conf
"""


def render(m: Manifest, exe: str, head: str) -> dict[Path, str]:
    files = {m.supervisor_dir / "supervisord.conf": supervisord_conf(m, head)}
    for p in m.pipelines.values():
        if p.drain is None:
            files[m.supervisor_dir / "conf.d" / f"{p.name}.conf"] = program(m, exe, p, head)
    return files
