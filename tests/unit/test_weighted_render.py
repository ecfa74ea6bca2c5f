"""Weighted queues (issue #19) in rendered files: the worker commands carry the weights."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from farm import manifest, render

FARMCTL = str(Path(sys.executable).parent / "farmctl")
FLAG = "critical:6,default:3,low:1"


def _project(tmp_path: Path, kube: bool = False) -> Path:
    """Three pipelines on one connection; with `kube`, on PostgreSQL (KEDA counts its jobs: the
    URL is only rendered, never opened) with a scaled Deployment."""
    (tmp_path / "conf").mkdir(parents=True, exist_ok=True)
    path = tmp_path / "conf" / "farm.yaml"
    url = "postgresql+psycopg://farm@db/farm" if kube else "sqlite:///var/f.db"
    path.write_text(
        "imports: [farm.demo]\n"
        f"connections:\n  main: {{driver: database, url: '{url}'}}\n"
        "pipelines:\n"
        "  weighted:\n    queues: {critical: 6, default: 3, low: 1}\n"
        + ("    scale: {min: 0, max: 4, per_worker: 10}\n" if kube else "")
        + "  drained: {queues: {critical: 6, default: 3, low: 1}, drain: '*/5 * * * *'}\n"
        "  strict: {queues: [critical, default, low]}\n"
        + ("kubernetes: {image: 'app:1', env_secret: farm-env}\n" if kube else ""))
    return path


def _command(text: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith("command="))
    return shlex.split(line[len("command="):].replace("%%", "%"))


def test_a_weighted_pipeline_renders_its_weights_on_every_worker_command(tmp_path):
    m = manifest.load(_project(tmp_path, kube=True))
    files = render.render(m, FARMCTL)
    sup = m.programs_dir
    assert _command(files[sup / f"weighted{m.program_suffix}"])[-4:] == ["--pipeline", "weighted", "--queue", FLAG]
    assert _command(files[sup / f"strict{m.program_suffix}"])[-2:] == ["--pipeline", "strict"]   # unchanged
    assert f"--pipeline weighted --queue {FLAG}\n" in files[tmp_path / "systemd" / "farm-weighted@.service"]
    assert f"--pipeline drained --queue {FLAG} --stop-when-empty" in files[m.supervisor_dir / "farm.cron"]
    deploy = yaml.safe_load(files[tmp_path / "kubernetes" / "weighted.yaml"].split("\n---\n")[0])
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-2:] == ["--queue", FLAG]
    # the KEDA trigger counts the ready jobs of the queues by name
    assert "'critical', 'default', 'low'" in files[tmp_path / "kubernetes" / "weighted.yaml"]


def test_the_rendered_command_starts_a_weighted_worker(tmp_path):
    # Given the supervisord program of a weighted pipeline
    m = manifest.load(_project(tmp_path))
    argv = _command(render.render(m, FARMCTL)[m.programs_dir / f"weighted{m.program_suffix}"])
    # When it runs (here until its queues are empty)
    cp = subprocess.run([*argv, "--stop-when-empty", "--log-format", "json"], capture_output=True, text=True,
                        timeout=60, cwd=tmp_path)
    # Then the worker starts with the weights
    assert cp.returncode == 0, cp.stderr
    start = next(json.loads(x) for x in cp.stderr.splitlines() if '"worker.start"' in x)
    assert start["queues"] == FLAG and start["pipeline"] == "weighted"
