"""systemd: an instance template `farm-P@.service` and `farm-P.target` wanting 1..numprocs."""
from __future__ import annotations

from pathlib import Path

from ..manifest import Manifest, Pipeline
from .supervisor import stop_seconds, work_command


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def service(m: Manifest, exe: str, p: Pipeline, head: str) -> str:
    env = [("FARM_CONFIG", str(m.path))] + [(k, v) for k, v in p.environment if k != "FARM_CONFIG"]
    lines = [
        "[Unit]",
        f"Description=jobfarm worker %i of pipeline {p.name}",
        "After=network-online.target",
        "Wants=network-online.target",
        f"PartOf=farm-{p.name}.target",
        "",
        "[Service]",
        "Type=simple",
        f"WorkingDirectory={m.root}",
        *[f"Environment={_quote(f'{k}={v}')}" for k, v in env],
        f"ExecStart={work_command(m, exe, p)}",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        f"TimeoutStopSec={stop_seconds(p)}",
        "Restart=always",
        "RestartSec=1",
        f"SyslogIdentifier=farm-{p.name}",
        "",
        "[Install]",
        f"WantedBy=farm-{p.name}.target",
    ]
    return head + "\n".join(lines) + "\n"


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


def render(m: Manifest, exe: str, head: str) -> dict[Path, str]:
    files: dict[Path, str] = {}
    for p in m.pipelines.values():
        if p.drain is None:
            files[m.systemd_dir / f"farm-{p.name}@.service"] = service(m, exe, p, head)
            files[m.systemd_dir / f"farm-{p.name}.target"] = target(p, head)
    return files
