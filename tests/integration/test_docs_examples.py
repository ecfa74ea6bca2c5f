"""Issue 14: every shell and Python example in README.md and docs/*.md is run by a test, so an
example cannot drift from the code.

Each ```sh / ```python block is run unless an HTML comment on the line before it says how
else (the comment does not show when the Markdown is rendered):

    <!-- example: run -->                 the default: in a new project made by `farmctl init`
    <!-- example: run empty -->           in an empty directory (the block makes its project)
    <!-- example: run readme-manifest --> conf/farm.yaml is the README's manifest example, its
                                          RabbitMQ in a vhost of the test's own
    <!-- example: run amqp -->            as `run`, the block's RabbitMQ URL in such a vhost
    <!-- example: check: REASON -->       parsed, not run (it needs root, a system supervisord,
                                          a cluster, or minutes): every `farmctl` command line
                                          through farmctl's own parser, every other program
                                          found, `jobfarm[EXTRA]` an extra of pyproject.toml,
                                          Python compiled and each `farm.NAME` it uses defined

A block runs with this environment's python and farmctl first on PATH, `set -e` for shell,
and must exit 0; a supervisord a block starts in its project is shut down after it.
"""
from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from conftest import ROOT, _check_amqp, amqp_url, drop_vhosts, need_server, new_vhost

BIN = Path(sys.executable).parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*example:\s*(.*?)\s*-->\s*$")
RUN_KINDS = {"", "empty", "readme-manifest", "amqp"}
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"
# programs an example may name that this machine need not have (deploy targets' tools)
ELSEWHERE = {"sudo", "cd", "apt", "apt-get", "dnf", "yum", "systemctl", "kubectl", "podman", "podman-compose",
             "docker", "gunicorn", "uwsgi", "chown", "chmod", "git", "mkdir", "supervisorctl", "supervisord"}


@dataclass(frozen=True)
class Example:
    path: Path
    line: int
    lang: str               # sh or python
    directive: str          # what follows "example:" ("" when there is no comment)
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def mode(self) -> str:
        return "check" if self.directive.startswith("check") else "run"

    @property
    def kind(self) -> str:
        return self.directive.partition("run")[2].strip() if self.mode == "run" else ""


def examples() -> list[Example]:
    """Every fenced sh/bash/python block of the README and docs/, with its directive."""
    found = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if not m:
                i += 1
                continue
            start, lang = i, m.group(1)
            i += 1
            body = []
            while i < len(lines) and lines[i].rstrip() != "```":
                body.append(lines[i])
                i += 1
            i += 1
            if lang not in ("sh", "bash", "shell", "python", "py"):
                continue
            d = DIRECTIVE.match(lines[start - 1]) if start else None
            found.append(Example(path, start + 1, "python" if lang.startswith("py") else "sh",
                                 d.group(1) if d else "", "\n".join(body) + "\n"))
    return found


ALL = examples()


def readme_manifest() -> str:
    """The README's manifest example: the yaml block that starts with `imports:`."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^```yaml\n(imports:.*?)^```$", text, re.S | re.M)
    assert m, "README.md has no manifest example (a ```yaml block starting with `imports:`)"
    return m.group(1)


# -- every block says how it is tested -------------------------------------------------------------
def test_issue_14_every_shell_and_python_example_is_run_or_checked_for_a_stated_reason():
    assert len(ALL) >= 15, [e.where for e in ALL]
    for e in ALL:
        if e.mode == "run":
            assert e.kind in RUN_KINDS, f"{e.where}: unknown directive {e.directive!r}"
        else:
            reason = e.directive.partition(":")[2].strip()
            assert len(reason) > 10, f"{e.where}: a checked example must say why it is not run"
    assert sum(e.mode == "run" for e in ALL) >= 6, "most examples should run"


# -- run ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("example", [e for e in ALL if e.mode == "run"], ids=lambda e: e.where)
def test_issue_14_the_example_runs_as_written(example: Example, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_") and k != "PYTHONPATH"}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    code = example.code
    if example.kind in ("readme-manifest", "amqp"):
        need_server("RabbitMQ", _check_amqp)
    if example.kind != "empty":
        subprocess.run([str(BIN / "farmctl"), "init"], cwd=tmp_path, env=env, check=True, capture_output=True)
    if example.kind == "readme-manifest":
        manifest = readme_manifest()
        assert DEFAULT_AMQP in manifest, "the README's manifest names RabbitMQ at another URL"
        (tmp_path / "conf" / "farm.yaml").write_text(manifest.replace(DEFAULT_AMQP, amqp_url(new_vhost())))
    if example.kind == "amqp":
        assert DEFAULT_AMQP in code, f"{example.where}: a `run amqp` example names {DEFAULT_AMQP}"
        code = code.replace(DEFAULT_AMQP, amqp_url(new_vhost()))
    script = tmp_path / ("example.py" if example.lang == "python" else "example.sh")
    script.write_text(code if example.lang == "python" else "set -euo pipefail\n" + code)
    argv = [str(BIN / "python"), script.name] if example.lang == "python" else ["bash", script.name]
    try:
        cp = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    finally:
        conf = next(tmp_path.rglob("supervisord.conf"), None)
        if conf is not None:
            subprocess.run([str(BIN / "supervisorctl"), "-c", str(conf), "shutdown"], cwd=conf.parent.parent,
                           capture_output=True, timeout=60)
        drop_vhosts()
    assert cp.returncode == 0, f"{example.where} exited {cp.returncode}\n{cp.stdout}\n{cp.stderr}"


# -- check -------------------------------------------------------------------------------------------
def commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block: continuation lines joined, comments dropped, split
    at ; && || and |, leading VAR=value and `sudo [-u USER]` left out."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lex.whitespace_split, lex.commenters = True, "#"
        words: list[str] = []
        for token in [*lex, ";"]:
            if token and set(token) <= set(";&|"):
                while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                    words.pop(0)
                if words and words[0] == "sudo":
                    words = words[3:] if words[1:2] == ["-u"] else words[1:]
                if words:
                    out.append(words)
                words = []
            else:
                words.append(token)
    return out


def parse_farmctl(args: list[str]) -> None:
    """Resolve every subcommand and option as `farmctl ARGS` would, running nothing."""
    from farm.cli import cli

    try:
        ctx = cli.make_context("farmctl", list(args))
        cmd: click.Command = cli
        while isinstance(cmd, click.Group):
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            if not rest:
                break
            name, sub, rest = cmd.resolve_command(ctx, rest)
            assert sub is not None, name
            ctx = sub.make_context(name or "", rest, parent=ctx)
            cmd = sub
    except click.exceptions.Exit:
        pass                            # --help, --version


def check_command(words: list[str], where: str) -> None:
    program, args = words[0], words[1:]
    name = Path(program).name
    if name == "farmctl":
        try:
            parse_farmctl(args)
        except click.UsageError as e:
            raise AssertionError(f"{where}: farmctl {' '.join(args)}: {e.format_message()}") from None
        return
    if name in ("pip", "pip3"):
        extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
        for arg in args:
            m = re.match(r"^jobfarm\[([\w,]+)\]$", arg)
            if m:
                missing = set(m.group(1).split(",")) - extras
                assert not missing, f"{where}: pyproject.toml has no extra {missing}"
        return
    if program.startswith("scripts/"):
        script = ROOT / program
        assert script.is_file() and os.access(script, os.X_OK), f"{where}: {program} is not an executable script"
        text = script.read_text()
        for flag in (a.split("=")[0] for a in args if a.startswith("--")):
            assert flag in text, f"{where}: {program} does not take {flag}"
        return
    if "/" in program and not program.startswith((".venv/", "/")):
        raise AssertionError(f"{where}: {program}: not a program")
    assert name in ELSEWHERE or shutil.which(name) or (BIN / name).exists(), f"{where}: no program {name!r}"


def check_python(code: str, where: str) -> None:
    import farm

    tree = compile(code, where, "exec", ast.PyCF_ONLY_AST)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "farm":
            assert hasattr(farm, node.attr), f"{where}: farm.{node.attr} does not exist"
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "farm":
            module = __import__(node.module, fromlist=["_"])
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module}.{alias.name} does not exist"


@pytest.mark.parametrize("example", [e for e in ALL if e.mode == "check"], ids=lambda e: e.where)
def test_issue_14_an_example_that_cannot_run_here_parses_with_todays_commands(example: Example) -> None:
    if example.lang == "python":
        check_python(example.code, example.where)
        return
    found = commands(example.code)
    assert found, f"{example.where}: no command"
    for words in found:
        check_command(words, example.where)


def test_issue_14_the_checker_catches_drift():
    # a flag farmctl does not have, an unknown subcommand, an extra pyproject.toml lacks, a
    # name farm does not define: each is caught
    for bad in (["work", "--no-such-flag"], ["no-such-command"], ["retry"]):
        with pytest.raises(AssertionError):
            check_command(["farmctl", *bad], "here")
    with pytest.raises(AssertionError):
        check_command(["pip", "install", "jobfarm[nosuchextra]"], "here")
    with pytest.raises(AssertionError):
        check_python("import farm\nfarm.no_such_thing()\n", "here")
    assert commands("sudo -u www-data .venv/bin/farmctl status  # x\nA=1 farmctl render && supervisorctl update\n") \
        == [[".venv/bin/farmctl", "status"], ["farmctl", "render"], ["supervisorctl", "update"]]
    check_command(["farmctl", "--config", "x.yaml", "failed", "show", "ID"], "here")
