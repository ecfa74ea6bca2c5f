"""Issue "Hardening": rendered files carry any manifest value to the worker byte for byte.

Each file is read back the way its consumer reads it: supervisord's own config parser,
`sh -c` after cron's `%` handling, systemd's quoting rules (and `systemd-analyze verify`).
"""
from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need_tool
from farm import manifest, render

# Values no quoting scheme gets right by accident: quotes of one kind, %, $, backslashes,
# the separators of each format (`,` `=` `;` `#`), edge spaces, a tab and nothing at all.
VALUES = {
    "DQ": 'say "hi" 100%',
    "SQ": "it's $HOME \\n, a=b",
    "PCT": "%(ENV_HOME)s 50%% %",
    "EDGES": "  lead and trail  ",
    "BACKSLASH": "back\\slash\\",
    "SEPARATORS": "a;b#c,d=e $x `y` * ~",
    "TAB": "a\tb",
    "EMPTY": "",
}
ODD_ROOT = "it's 100% $HOME a\\b c;d#e"          # a project directory a person could create


def _project(base: Path, *, drain: bool = False) -> Path:
    """A project at an awkward path whose one pipeline has every awkward value."""
    root = base / ODD_ROOT
    (root / "conf").mkdir(parents=True)
    env = ", ".join(f"{k}: {json.dumps(v)}" for k, v in VALUES.items())
    extra = '    drain: "*/10 * * * *"\n' if drain else ""
    (root / "conf" / "farm.yaml").write_text(
        "connections:\n  main: {driver: database, url: 'sqlite:///var/farm.db'}\n"
        f"pipelines:\n  w:\n    queues: [a]\n{extra}    environment: {{{env}}}\n")
    return root


def _stub_farmctl(directory: Path) -> Path:
    """An executable that prints its argv and environment as JSON, in place of farmctl."""
    directory.mkdir(parents=True, exist_ok=True)
    exe = directory / "farmctl"
    exe.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                   "print(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ)}))\n")
    exe.chmod(0o755)
    return exe


def _expected_env(m: manifest.Manifest) -> dict[str, str]:
    return {"FARM_CONFIG": str(m.path), **VALUES}


# supervisord ---------------------------------------------------------------------------

def _supervisord_programs(conf: Path) -> list:
    from supervisor.options import ServerOptions

    options = ServerOptions()
    options.realize(args=["-c", str(conf)])
    return [p for g in options.process_group_configs for p in g.process_configs]


def test_hardening_supervisord_reads_back_command_directory_and_environment_byte_for_byte(tmp_path):
    # Given a project at an awkward path, a farmctl at another, and awkward environment values
    root = _project(tmp_path)
    m = manifest.load(root / "conf" / "farm.yaml")
    exe = str(tmp_path / "bin it's 50% $x;y #z" / "farmctl")
    # When it is rendered and supervisord's own parser reads the result
    render.apply(m, render.plan(m, exe))
    (program,) = _supervisord_programs(root / "supervisor" / "supervisord.conf")
    # Then supervisord runs exactly that farmctl, there, with exactly those values
    assert shlex.split(program.command) == [exe, "work", "--config", str(m.path), "--pipeline", "w"]
    assert program.directory == str(root)
    assert program.environment == {**_expected_env(m), "FARM_STOP_WINDOW": "90"}
    assert program.stdout_logfile == f"{root}/var/log/w_00.log"


# cron ----------------------------------------------------------------------------------

def _as_cron_runs_it(line: str) -> str:
    """The command part of a cron.d line as cron hands it to sh (cronie's do_command.c):
    `\\%` becomes `%`, and an unescaped `%` would end the command (the rest is stdin)."""
    command = line.split(None, 6)[6]
    out: list[str] = []
    escaped = False
    for ch in command:
        if escaped:
            escaped = False
            if ch == "%":
                out[-1] = "%"
                continue
        elif ch == "\\":
            escaped = True
        elif ch == "%":
            raise AssertionError(f"an unescaped % cuts the cron command short: {command}")
        out.append(ch)
    return "".join(out)


def test_hardening_the_cron_drain_gets_its_arguments_and_the_pipelines_environment(tmp_path):
    need_tool("flock")
    # Given a drain pipeline with awkward values, at an awkward path, with a stub farmctl
    root = _project(tmp_path, drain=True)
    m = manifest.load(root / "conf" / "farm.yaml")
    exe = _stub_farmctl(tmp_path / "bin it's 50% $x;y #z\\q")
    render.apply(m, render.plan(m, str(exe)))
    (line,) = [x for x in (root / "supervisor" / "farm.cron").read_text().splitlines() if "--pipeline w" in x]
    # When cron runs its command with cron's empty environment
    cron_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh"}
    cp = subprocess.run(["sh", "-c", _as_cron_runs_it(line)], env=cron_env, cwd="/", timeout=60)
    # Then farmctl got its arguments and the pipeline's environment, byte for byte
    assert cp.returncode == 0
    seen = json.loads((root / "var" / "log" / "w.log").read_text())
    assert seen["argv"] == ["work", "--config", str(m.path), "--pipeline", "w", "--stop-when-empty"]
    assert {k: seen["env"].get(k) for k in _expected_env(m)} == _expected_env(m)


# systemd -------------------------------------------------------------------------------

def test_hardening_systemd_lines_follow_systemds_quoting_rules(tmp_path):
    # Given awkward values, project path and farmctl path
    root = _project(tmp_path)
    m = manifest.load(root / "conf" / "farm.yaml")
    # When the unit is rendered
    unit = render.render(m, "/opt/my farm%/bin$/farmctl")[root / "systemd" / "farm-w@.service"]
    lines = unit.splitlines()
    # Then: specifiers doubled everywhere, $ doubled in arguments (not in the executable,
    # where systemd substitutes nothing), C escapes inside double quotes
    config = str(m.path).replace("\\", "\\\\").replace("%", "%%").replace("$", "$$")
    assert f'ExecStart="/opt/my farm%%/bin$/farmctl" work --config "{config}" --pipeline w' in lines
    assert "WorkingDirectory=" + str(root).replace("%", "%%") in lines
    assert 'Environment="DQ=say \\"hi\\" 100%%"' in lines
    assert 'Environment="SQ=it\'s $HOME \\\\n, a=b"' in lines
    assert 'Environment="PCT=%%(ENV_HOME)s 50%%%% %%"' in lines
    assert 'Environment="BACKSLASH=back\\\\slash\\\\"' in lines
    assert 'Environment="EMPTY="' in lines


def _verify(unit: Path) -> None:
    cp = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    complaints = [x for x in cp.stderr.splitlines() if unit.name in x or str(unit.parent) in x]
    assert cp.returncode == 0 and complaints == [], cp.stderr


@pytest.mark.parametrize("bindir", ["bin 50% $x;y", "bin it's \"q\" a\\b"])
def test_hardening_systemd_analyze_accepts_the_unit_and_finds_the_executable(tmp_path, bindir):
    need_tool("systemd-analyze")
    # Given a farmctl at an awkward path (systemd refuses ' " \ in an executable's name)
    root = _project(tmp_path)
    m = manifest.load(root / "conf" / "farm.yaml")
    exe = _stub_farmctl(tmp_path / bindir)
    # When the unit is rendered and verified through an instance
    render.apply(m, render.plan(m, str(exe)))
    units = root / "systemd"
    instance = units / "farm-w@1.service"
    instance.write_text((units / "farm-w@.service").read_text())
    # Then systemd finds the executable and has no complaint about any line
    _verify(instance)


# modes and ownership -------------------------------------------------------------------

def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_hardening_files_that_hold_environment_values_are_private(tmp_path):
    # Given a render with a resident and a drain pipeline, one program file once written 0644
    root = _project(tmp_path)
    text = (root / "conf" / "farm.yaml").read_text()
    (root / "conf" / "farm.yaml").write_text(text + "  r:\n    drain: '0 * * * *'\n    environment: {K: v}\n")
    m = manifest.load(root / "conf" / "farm.yaml")
    old = os.umask(0o022)
    try:
        render.apply(m, render.plan(m, "/bin/true"))
        (root / "supervisor/conf.d/w.conf").chmod(0o644)
        # When it is rendered again
        again = render.plan(m, "/bin/true")
        render.apply(m, again)
    finally:
        os.umask(old)
    # Then files with environment values are 0600 (the old 0644 one tightened), the rest 0644
    assert again.write == {root / "supervisor/conf.d/w.conf": (root / "supervisor/conf.d/w.conf").read_text()}
    assert again.diff() == f"# {root / 'supervisor/conf.d/w.conf'}: mode becomes 0600 (it holds environment values)\n"
    for private in ["supervisor/conf.d/w.conf", "systemd/farm-w@.service", "supervisor/farm.cron"]:
        assert _mode(root / private) == 0o600, private
    for public in ["supervisor/supervisord.conf", "systemd/farm-w.target"]:
        assert _mode(root / public) == 0o644, public
    assert not render.plan(m, "/bin/true").changed


def test_hardening_files_rendered_from_another_manifest_are_neither_replaced_nor_removed(tmp_path):
    # Given project A rendered with pipelines w and gone
    a = tmp_path / "a"
    (a / "conf").mkdir(parents=True)
    (a / "conf" / "farm.yaml").write_text("pipelines:\n  w: {queues: [a]}\n  gone: {queues: [b]}\n")
    ma = manifest.load(a / "conf" / "farm.yaml")
    render.apply(ma, render.plan(ma, "/bin/true"))
    # and manifest B, elsewhere, rendering into A's directories with a different w and no gone
    b = tmp_path / "b"
    b.mkdir()
    (b / "farm.yaml").write_text(f"pipelines:\n  w: {{queues: [c]}}\nsupervisor: {{dir: '{a}/supervisor'}}\n"
                                 f"systemd: {{dir: '{a}/systemd'}}\n")
    mb = manifest.load(b / "farm.yaml")
    before = {p: p.read_text() for p in (a / "supervisor" / "conf.d").iterdir()}
    # When B is planned and applied
    plan = render.plan(mb, "/bin/true")
    render.apply(mb, plan)
    # Then A's files stay as they were, and the ones B wanted are reported as skipped
    assert {p: p.read_text() for p in (a / "supervisor" / "conf.d").iterdir()} == before
    assert (a / "systemd" / "farm-gone@.service").exists()
    assert plan.remove == []
    assert a / "supervisor/conf.d/w.conf" in render.skipped(mb, "/bin/true")
    assert a / "supervisor/conf.d/w.conf" not in plan.write


def test_hardening_variables_the_manifest_takes_from_the_environment_reach_rendered_workers(tmp_path, monkeypatch):
    # Given a manifest whose database URL comes from the environment of the shell that renders it
    root = tmp_path / "proj"
    (root / "conf").mkdir(parents=True)
    (root / "conf" / "farm.yaml").write_text(
        "connections:\n  main: {driver: database, url: '${FARM_RENDER_DB:-sqlite:///var/default.db}'}\n"
        "pipelines:\n  w: {queues: [a]}\n  d: {queues: [b], drain: '*/5 * * * *', environment: {FARM_RENDER_DB: own}}\n")
    monkeypatch.setenv("FARM_RENDER_DB", "sqlite:////srv/it's 100%.db")
    m = manifest.load(root / "conf" / "farm.yaml")
    exe = _stub_farmctl(tmp_path / "bin")
    # When it is rendered
    render.apply(m, render.plan(m, str(exe)))
    # Then supervisord's program carries the value it had (cron, too), and a pipeline's own wins
    (program,) = _supervisord_programs(root / "supervisor" / "supervisord.conf")
    assert program.environment["FARM_RENDER_DB"] == "sqlite:////srv/it's 100%.db"
    (line,) = [x for x in (root / "supervisor" / "farm.cron").read_text().splitlines() if "--pipeline d" in x]
    need_tool("flock")
    cp = subprocess.run(["sh", "-c", _as_cron_runs_it(line)], env={"PATH": "/usr/bin:/bin"}, cwd="/", timeout=60)
    assert cp.returncode == 0
    assert json.loads((root / "var" / "log" / "d.log").read_text())["env"]["FARM_RENDER_DB"] == "own"
    unit = (root / "systemd" / "farm-w@.service").read_text()
    assert "FARM_RENDER_DB=sqlite:////srv/it's 100%%.db" in unit
