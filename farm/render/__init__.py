"""`farmctl render`: the manifest as supervisord programs, systemd units, cron drains and,
with a `kubernetes:` section, Kubernetes objects.

Renderers are pure (Manifest -> {path: text}); `plan` compares with the disk and `apply`
writes. Files carry a header naming the manifest: only files whose header names this
manifest are ever replaced or removed, so hand-written files, and files rendered from
another manifest, are safe next to them.
"""
from __future__ import annotations

import difflib
import os
import re
import shutil
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import stopwindow
from ..errors import FarmError
from ..manifest import Manifest
from . import cron, kubernetes, supervisor, systemd

MARK = "Rendered by farmctl render"
PRIVATE = 0o600       # files holding environment values, which may be secrets
PUBLIC = 0o644        # files naming only paths and settings
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")      # every control character but tab


def header(m: Manifest, comment: str = "#") -> str:
    return f"{comment} {MARK} from {m.path}; edit the manifest and render again, not this file.\n"


def farmctl_argv() -> list[str]:
    """The farmctl of this installation (the venv's), as absolute argv words."""
    beside = Path(sys.executable).parent / "farmctl"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("farmctl")
    return [str(Path(found).absolute())] if found else [sys.executable, "-m", "farm"]


def render(m: Manifest, farmctl: str | None = None) -> dict[Path, str]:
    """Every file the manifest asks for, with its content."""
    exe = [farmctl] if farmctl else farmctl_argv()
    _one_line_each(m, exe)
    windows, _ = stopwindow.for_manifest(m)
    _within_consumer_timeout(m, windows)
    files: dict[Path, str] = {}
    files.update(supervisor.render(m, exe, header(m, ";"), windows))
    files.update(systemd.render(m, exe, header(m), windows))
    files.update(cron.render(m, exe, header(m)))
    files.update(kubernetes.render(m, header(m), windows))
    return files


def _within_consumer_timeout(m: Manifest, windows: dict[str, int]) -> None:
    """RabbitMQ takes a job back once it is unacked past consumer_timeout: the longest job of
    an amqp pipeline must end well before that."""
    for name, p in m.pipelines.items():
        conn = m.connections.get(p.connection)
        longest = windows[name] - stopwindow.MARGIN
        if conn is not None and conn.driver == "amqp" and longest + 30 >= conn.consumer_timeout:
            raise FarmError(f"pipeline {name!r}: jobs may run {longest} s, not 30 s below connection "
                            f"{conn.name!r}'s consumer_timeout of {conn.consumer_timeout:g} s (RabbitMQ would "
                            "take a job back while it runs): raise consumer_timeout, or lower the job timeouts")


def _one_line_each(m: Manifest, exe: list[str]) -> None:
    """Every path a rendered file names must fit on one line of it."""
    named = [("the manifest path", m.path), ("supervisor.dir", m.supervisor_dir),
             ("supervisor.logs", m.logs_dir), ("systemd.dir", m.systemd_dir)]
    for what, value in named + [("farmctl", e) for e in exe]:
        if _CONTROL.search(str(value)):
            raise FarmError(f"{what} {str(value)!r} holds a line break or control character: "
                            "no rendered file can name it")


def file_mode(m: Manifest, path: Path) -> int:
    """0600 for supervisord programs, systemd services and the cron file, which hold the
    pipelines' environment values (often secrets); 0644 for supervisord.conf and targets, and
    for Kubernetes objects (their pods take the secrets from env_secret, never from the file)."""
    holds_env = (path.parent == m.programs_dir or path.suffix == ".service"
                 or path == m.supervisor_dir / "farm.cron")
    return PRIVATE if holds_env else PUBLIC


@dataclass
class Plan:
    write: dict[Path, str] = field(default_factory=dict)      # new, changed, or private but readable by others
    remove: list[Path] = field(default_factory=list)         # ours, for pipelines that are gone
    unchanged: list[Path] = field(default_factory=list)
    old: dict[Path, str] = field(default_factory=dict)
    tighten: list[Path] = field(default_factory=list)        # in `write` only to become 0600

    @property
    def changed(self) -> bool:
        return bool(self.write or self.remove)

    def diff(self) -> str:
        out = []
        for path in sorted(set(self.write) | set(self.remove)):
            before = self.old.get(path, "").splitlines(keepends=True)
            after = self.write.get(path, "").splitlines(keepends=True)
            out.extend(difflib.unified_diff(before, after, str(path), str(path)))
        out.extend(f"# {path}: mode becomes 0600 (it holds environment values)\n" for path in self.tighten)
        return "".join(out)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _first_line(path: Path) -> str:
    try:
        with path.open(encoding="utf-8") as f:
            return f.readline()
    except (OSError, UnicodeDecodeError):
        return ""


def _ours(m: Manifest, path: Path) -> bool:
    """Written by a render of this very manifest: its header names this manifest's path."""
    return _first_line(path) in (header(m, ";"), header(m, "#"))


def _too_open(m: Manifest, path: Path) -> bool:
    """A private file that others may read (e.g. rendered before files were private)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return False
    return file_mode(m, path) == PRIVATE and bool(mode & 0o077)


def _candidates(m: Manifest) -> list[Path]:
    """Files a render may have written before (so may need removing)."""
    found = list(m.programs_dir.glob(f"*{m.program_suffix}"))
    found += list(m.systemd_dir.glob("farm-*.service")) + list(m.systemd_dir.glob("farm-*.target"))
    found += [m.supervisor_dir / "farm.cron"]
    found += list(kubernetes_dir(m).glob("*.yaml"))
    return [p for p in found if p.is_file()]


def kubernetes_dir(m: Manifest) -> Path:
    """kubernetes.dir, or where it was by default (so dropping the section removes our files)."""
    return m.kubernetes.dir if m.kubernetes else m.root / "kubernetes"


def plan(m: Manifest, farmctl: str | None = None) -> Plan:
    """What a render would change; files this manifest did not write are left out."""
    p = Plan()
    wanted = render(m, farmctl)
    for path, text in sorted(wanted.items()):
        if not os.path.lexists(path):
            p.write[path] = text
        elif not _ours(m, path):
            continue            # no header, or another manifest's: never touched
        elif _read(path) != text:
            p.old[path] = _read(path) or ""
            p.write[path] = text
        elif _too_open(m, path):
            p.tighten.append(path)
            p.old[path] = p.write[path] = text
        else:
            p.unchanged.append(path)
    for path in sorted(_candidates(m)):
        if path not in wanted and _ours(m, path):
            p.remove.append(path)
            p.old[path] = _read(path) or ""
    return p


def _write(path: Path, text: str, mode: int) -> None:
    """Atomically, with `mode` from the first byte on (a secret is never readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), mode)         # exactly `mode`, whatever the umask took away
        f.write(text)
    tmp.replace(path)


def apply(m: Manifest, p: Plan) -> None:
    for d in (m.logs_dir, m.root / "var", m.programs_dir, m.systemd_dir):
        d.mkdir(parents=True, exist_ok=True)
    for path, text in p.write.items():
        _write(path, text, file_mode(m, path))
    for path in p.remove:
        path.unlink(missing_ok=True)


def skipped(m: Manifest, farmctl: str | None = None) -> list[Path]:
    """Files the manifest asks for that it did not write (no header, or another manifest's)."""
    return [path for path in sorted(render(m, farmctl)) if os.path.lexists(path) and not _ours(m, path)]


def owner(path: Path) -> str:
    """Who wrote a skipped file, for the message that says why it was left alone."""
    first = _first_line(path)
    if MARK not in first:
        return "not written by farmctl render (no header)"
    source = first.split(f"{MARK} from ", 1)[1].split("; edit the manifest", 1)[0]
    return f"rendered from another manifest ({source})"
