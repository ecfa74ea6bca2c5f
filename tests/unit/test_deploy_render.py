"""Rendering for a server (#13): the system supervisord's include, users, stop windows."""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import need_tool
from farm import manifest, render, stopwindow
from farm.drivers.base import Reserved
from farm.errors import FarmError, ManifestError


def _project(tmp_path: Path, body: str, jobs: str = "") -> Path:
    """A project whose `imports:` is a module of its own (a unique name: modules are cached)."""
    module = "deployjobs_" + uuid.uuid4().hex[:8]
    (tmp_path / "conf").mkdir(parents=True, exist_ok=True)
    (tmp_path / f"{module}.py").write_text("import farm\n" + jobs)
    path = tmp_path / "conf" / "farm.yaml"
    path.write_text(f"imports: [{module}]\nconnections:\n  main: {{driver: database, url: 'sqlite:///var/f.db'}}\n"
                    + body)
    return path


LONG_JOB = "class Long(farm.Job):\n    timeout = 180\n    def handle(self): pass\n"


def test_programs_go_where_the_system_supervisords_include_finds_them_with_its_extension(tmp_path):
    etc = tmp_path / "etc" / "supervisord.d"
    path = _project(tmp_path, f"supervisor: {{include: '{etc}/*.ini', user: www-data}}\n"
                    "pipelines:\n  mail: {queues: [mail]}\n  pdf: {queues: [pdf], user: reports}\n")
    m = manifest.load(path)
    files = render.render(m, "/opt/farm/bin/farmctl")
    assert sorted(files) == sorted([etc / "mail.ini", etc / "pdf.ini", tmp_path / "systemd" / "farm-mail@.service",
                                    tmp_path / "systemd" / "farm-mail.target", tmp_path / "systemd" / "farm-pdf@.service",
                                    tmp_path / "systemd" / "farm-pdf.target"])
    assert "user=www-data" in files[etc / "mail.ini"] and "user=reports" in files[etc / "pdf.ini"]
    assert "User=www-data" in files[tmp_path / "systemd" / "farm-mail@.service"]
    assert "User=reports" in files[tmp_path / "systemd" / "farm-pdf@.service"]
    render.apply(m, render.plan(m, "/opt/farm/bin/farmctl"))
    (etc / "other.ini").write_text("[program:other]\ncommand=/bin/true\n")     # the server's own
    path.write_text(path.read_text().replace("  pdf: {queues: [pdf], user: reports}\n", ""))
    m = manifest.load(path)
    p = render.plan(m, "/opt/farm/bin/farmctl")
    assert set(p.remove) == {etc / "pdf.ini", tmp_path / "systemd" / "farm-pdf.target",
                             tmp_path / "systemd" / "farm-pdf@.service"}
    render.apply(m, p)
    assert (etc / "other.ini").exists() and not (etc / "pdf.ini").exists()


def test_systemd_units_run_as_the_user_and_group_and_pass_systemd_analyze(tmp_path):
    systemd_analyze = need_tool("systemd-analyze")
    path = _project(tmp_path, "supervisor: {user: daemon, group: daemon}\npipelines:\n  mail: {queues: [mail]}\n")
    m = manifest.load(path)
    render.apply(m, render.plan(m, "/bin/true"))
    unit = tmp_path / "systemd" / "farm-mail@.service"
    text = unit.read_text()
    assert "User=daemon\nGroup=daemon\n" in text
    instance = unit.with_name("farm-mail@1.service")
    instance.write_text(text)
    cp = subprocess.run([systemd_analyze, "verify", "--man=no", str(instance)], capture_output=True, text=True)
    assert cp.returncode == 0 and str(instance.parent) not in cp.stderr, cp.stderr


def test_the_stop_window_covers_a_job_class_whose_timeout_is_three_times_its_pipelines(tmp_path):
    path = _project(tmp_path, "pipelines:\n  mail: {queues: [mail], timeout: 60}\n  fixed: {stop_wait: 500}\n",
                    jobs=LONG_JOB)
    m = manifest.load(path)
    files = render.render(m, "/opt/farm/bin/farmctl")
    assert "stopwaitsecs=210" in files[tmp_path / "supervisor" / "conf.d" / "mail.conf"]
    assert "TimeoutStopSec=210" in files[tmp_path / "systemd" / "farm-mail@.service"]
    assert "stopwaitsecs=500" in files[tmp_path / "supervisor" / "conf.d" / "fixed.conf"]
    path2 = _project(tmp_path / "b", "pipelines:\n  mail: {queues: [mail], timeout: 60}\n")
    assert "stopwaitsecs=90" in render.render(manifest.load(path2), "/x")[tmp_path / "b" / "supervisor" / "conf.d" / "mail.conf"]


def test_render_reads_job_timeouts_from_the_source_without_running_application_code(tmp_path):
    # Given a job module whose import has side effects (render often runs as root)
    marker = tmp_path / "imported"
    path = _project(tmp_path, "pipelines:\n  mail: {queues: [mail], timeout: 20}\n",
                    jobs=f"open({str(marker)!r}, 'w').close()\n" + LONG_JOB
                    + "@farm.job(timeout=400)\ndef slow(): pass\n")
    # When the stop windows are worked out
    windows, problems = stopwindow.for_manifest(manifest.load(path))
    # Then the longest literal timeout counts, and the module never ran
    assert windows == {"mail": 430} and problems == [] and not marker.exists()


def test_render_warns_when_a_job_module_cannot_be_found_and_uses_the_pipelines_timeouts(tmp_path):
    path = _project(tmp_path, "pipelines:\n  mail: {queues: [mail], timeout: 20}\n")
    path.write_text(path.read_text().replace("imports: [", "imports: [nowhere_to_be_found, "))
    windows, problems = stopwindow.for_manifest(manifest.load(path))
    assert windows == {"mail": 50} and "nowhere_to_be_found" in problems[0]


def test_rendered_workers_know_their_stop_window_and_clamp_to_it(tmp_path, monkeypatch):
    path = _project(tmp_path, "pipelines:\n  mail: {queues: [mail], timeout: 60}\n", jobs=LONG_JOB)
    files = render.render(manifest.load(path), "/x")
    assert "FARM_STOP_WINDOW=\"210\"" in files[tmp_path / "supervisor" / "conf.d" / "mail.conf"]
    assert 'Environment="FARM_STOP_WINDOW=210"' in files[tmp_path / "systemd" / "farm-mail@.service"]
    monkeypatch.setenv("FARM_STOP_WINDOW", "90")        # rendered before the class got longer
    assert stopwindow.job_limit(manifest.Pipeline(name="mail", connection="main", timeout=60), 180.0,
                                stopwindow.window_from_environment()) == 80


def test_an_amqp_pipeline_whose_jobs_outlast_consumer_timeout_is_refused_at_render(tmp_path):
    path = _project(tmp_path, "  rabbit: {driver: amqp, url: 'amqp://x', store: main, consumer_timeout: 200}\n"
                    "pipelines:\n  mail: {connection: rabbit, queues: [mail], timeout: 60}\n", jobs=LONG_JOB)
    with pytest.raises(FarmError, match="consumer_timeout"):
        render.render(manifest.load(path), "/x")


@pytest.mark.parametrize("bad, message", [
    ("supervisor: {include: /etc/supervisor/conf.d}", "supervisor.include"),
    ("supervisor: {include: '/etc/*/conf.d/*.conf'}", "supervisor.include"),
    ("supervisor: {serverurl: '/var/run/supervisor.sock'}", "supervisor.serverurl"),
    ("supervisor: {user: 'www data'}", "supervisor.user"),
    ("pipelines: {mail: {user: 'a;b'}}", "pipelines.mail.user"),
    ("pipelines: {mail: {stop_wait: 0}}", "pipelines.mail.stop_wait"),
])
def test_bad_deploy_keys_are_manifest_errors_with_their_line(tmp_path, bad, message):
    path = _project(tmp_path, bad + "\n")
    with pytest.raises(ManifestError) as e:
        manifest.load(path)
    assert any(f":{len(path.read_text().splitlines())}: {message}" in p for p in e.value.problems), e.value.problems


def test_a_worker_clamps_a_dispatched_timeout_to_its_pipelines_stop_window():
    from farm import payload
    from farm.log import Log
    from farm.worker.lifecycle import Lifecycle
    from farm.worker.options import WorkerOptions
    from farm.worker.runner import Runner

    p = manifest.Pipeline(name="mail", connection="main", timeout=60)
    options = WorkerOptions(connection="main", job_limit=stopwindow.job_limit(p, None))
    runner = Runner(None, payload.Registry(["testjobs"]), options, Log(level="error"),
                    Lifecycle(options, time.monotonic()))
    doc = {"v": 1, "id": "j", "job": "testjobs:Noop", "data": {}, "timeout": 3600}
    attempt = runner.prepare(Reserved("j", "mail", json.dumps(doc), 1))
    assert attempt is not None and attempt.timeout == 80          # window 90 less 10
    doc["timeout"] = 30
    assert runner.prepare(Reserved("j", "mail", json.dumps(doc), 1)).timeout == 30
