"""Rendered files, byte for byte against tests/golden/expected (paths as {ROOT}, {FARMCTL})."""
from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import need_tool
from farm import manifest, render

HERE = Path(__file__).parent
EXPECTED = HERE / "expected"
FARMCTL = "/opt/farm/bin/farmctl"


@pytest.fixture
def project(tmp_path):
    (tmp_path / "conf").mkdir()
    shutil.copy(HERE / "manifest.yaml", tmp_path / "conf" / "farm.yaml")
    return tmp_path


def _placeholders(text: str, root: Path) -> str:
    return text.replace(str(root), "{ROOT}").replace(FARMCTL, "{FARMCTL}").replace(
        f" {getpass.getuser()} cd ", " {USER} cd ")


def test_rendered_files_match_the_golden_files_byte_for_byte(project):
    m = manifest.load(project / "conf" / "farm.yaml")
    files = render.render(m, FARMCTL)
    got = {str(p.relative_to(project)).replace("/", "__"): _placeholders(t, project) for p, t in files.items()}
    if os.environ.get("FARM_REGOLD"):
        for name, text in got.items():
            (EXPECTED / name).write_text(text)
    expected = {p.name: p.read_text() for p in EXPECTED.iterdir()}
    assert sorted(got) == sorted(expected)
    for name in got:
        assert got[name] == expected[name], name


def test_rendering_twice_gives_the_same_bytes_and_nothing_to_do(project):
    m = manifest.load(project / "conf" / "farm.yaml")
    first = render.plan(m, FARMCTL)
    render.apply(m, first)
    assert len(first.write) == 10
    second = render.plan(m, FARMCTL)
    assert not second.changed and len(second.unchanged) == 10
    for d in ("var/log", "supervisor/conf.d", "systemd"):
        assert (project / d).is_dir()


def test_files_of_a_removed_pipeline_go_and_files_without_the_header_stay(project):
    m = manifest.load(project / "conf" / "farm.yaml")
    render.apply(m, render.plan(m, FARMCTL))
    mine = project / "supervisor" / "conf.d" / "handmade.conf"
    mine.write_text("[program:handmade]\ncommand=/bin/true\n")
    text = (project / "conf" / "farm.yaml").read_text()
    (project / "conf" / "farm.yaml").write_text(text.replace("  invoices:\n", "  bills:\n"))
    m = manifest.load(project / "conf" / "farm.yaml")
    p = render.plan(m, FARMCTL)
    render.apply(m, p)
    assert (project / "supervisor/conf.d/bills.conf").exists()
    assert not (project / "supervisor/conf.d/invoices.conf").exists()
    assert not (project / "systemd/farm-invoices@.service").exists()
    assert mine.read_text().startswith("[program:handmade]")
    # a file in our place without our header is never overwritten
    (project / "supervisor/conf.d/bills.conf").write_text("# mine now\n")
    p = render.plan(m, FARMCTL)
    assert project / "supervisor/conf.d/bills.conf" not in p.write


def test_stopwaitsecs_and_timeoutstopsec_exceed_the_job_timeout(project):
    m = manifest.load(project / "conf" / "farm.yaml")
    files = render.render(m, FARMCTL)
    conf = files[project / "supervisor/conf.d/email_worker.conf"]
    unit = files[project / "systemd/farm-email_worker@.service"]
    assert "stopwaitsecs=90" in conf and "TimeoutStopSec=90" in unit


def test_the_systemd_units_pass_systemd_analyze_verify(project):
    need_tool("systemd-analyze")
    m = manifest.load(project / "conf" / "farm.yaml")
    render.apply(m, render.plan(m, "/bin/true"))
    units = project / "systemd"
    instance = units / "farm-email_worker@1.service"          # verify a template through an instance
    instance.write_text((units / "farm-email_worker@.service").read_text())
    for unit in [instance, units / "farm-email_worker.target"]:
        cp = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
        complaints = [x for x in cp.stderr.splitlines() if str(units) in x]
        assert cp.returncode == 0 and complaints == [], cp.stderr


def test_render_check_and_diff_report_what_is_out_of_date(tmp_path):
    from conftest import ROOT
    import sys

    (tmp_path / "conf").mkdir()
    shutil.copy(HERE / "manifest.yaml", tmp_path / "conf" / "farm.yaml")
    farmctl = [sys.executable, "-m", "farm", "--config", str(tmp_path / "conf" / "farm.yaml")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    check = subprocess.run(farmctl + ["render", "--check"], capture_output=True, text=True, env=env)
    assert check.returncode == 1 and "out of date" in check.stdout
    diff = subprocess.run(farmctl + ["render", "--diff"], capture_output=True, text=True, env=env)
    assert diff.returncode == 1 and "+[program:email_worker]" in diff.stdout
    assert not (tmp_path / "supervisor").exists(), "--check and --diff write nothing"
    subprocess.run(farmctl + ["render"], check=True, capture_output=True, env=env)
    assert subprocess.run(farmctl + ["render", "--check"], capture_output=True, env=env).returncode == 0
    bad = tmp_path / "conf" / "farm.yaml"
    bad.write_text(bad.read_text().replace("numprocs: 2", "numprocs: 0"))
    cp = subprocess.run(farmctl + ["render"], capture_output=True, text=True, env=env)
    assert cp.returncode == 2 and "Traceback" not in cp.stderr
    assert "farm.yaml:8: pipelines.email_worker.numprocs: expected a positive integer, got 0" in cp.stderr
