"""`farmctl render`: the manifest as supervisord programs, systemd units and cron drains.

Renderers are pure (Manifest -> {path: text}); `plan` compares with the disk and `apply`
writes. Files carry a header naming the manifest: only such files are ever replaced or
removed, so hand-written files next to them are safe.
"""
from __future__ import annotations

import difflib
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..manifest import Manifest
from . import cron, supervisor, systemd

MARK = "Rendered by farmctl render"


def header(m: Manifest, comment: str = "#") -> str:
    return f"{comment} {MARK} from {m.path}; edit the manifest and render again, not this file.\n"


def farmctl_path() -> str:
    """The farmctl of this installation (the venv's), as an absolute path."""
    beside = Path(sys.executable).parent / "farmctl"
    if beside.exists():
        return str(beside)
    found = shutil.which("farmctl")
    return str(Path(found).absolute()) if found else f"{sys.executable} -m farm"


def render(m: Manifest, farmctl: str | None = None) -> dict[Path, str]:
    """Every file the manifest asks for, with its content."""
    exe = farmctl or farmctl_path()
    files: dict[Path, str] = {}
    files.update(supervisor.render(m, exe, header(m, ";")))
    files.update(systemd.render(m, exe, header(m)))
    files.update(cron.render(m, exe, header(m)))
    return files


@dataclass
class Plan:
    write: dict[Path, str] = field(default_factory=dict)      # new or changed
    remove: list[Path] = field(default_factory=list)         # ours, for pipelines that are gone
    unchanged: list[Path] = field(default_factory=list)
    old: dict[Path, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.write or self.remove)

    def diff(self) -> str:
        out = []
        for path in sorted(set(self.write) | set(self.remove)):
            before = self.old.get(path, "").splitlines(keepends=True)
            after = self.write.get(path, "").splitlines(keepends=True)
            out.extend(difflib.unified_diff(before, after, str(path), str(path)))
        return "".join(out)


def _ours(path: Path) -> bool:
    try:
        with path.open() as f:
            return MARK in f.readline()
    except (OSError, UnicodeDecodeError):
        return False


def _candidates(m: Manifest) -> list[Path]:
    """Files a render may have written before (so may need removing)."""
    found = list((m.supervisor_dir / "conf.d").glob("*.conf"))
    found += list(m.systemd_dir.glob("farm-*.service")) + list(m.systemd_dir.glob("farm-*.target"))
    found += [m.supervisor_dir / "farm.cron"]
    return [p for p in found if p.is_file()]


def plan(m: Manifest, farmctl: str | None = None) -> Plan:
    p = Plan()
    wanted = render(m, farmctl)
    for path, text in sorted(wanted.items()):
        current = path.read_text() if path.is_file() else None
        if current == text:
            p.unchanged.append(path)
            continue
        if current is not None:
            if not _ours(path):
                continue            # a file we did not write: never touched
            p.old[path] = current
        p.write[path] = text
    for path in sorted(_candidates(m)):
        if path not in wanted and _ours(path):
            p.remove.append(path)
            p.old[path] = path.read_text()
    return p


def apply(m: Manifest, p: Plan) -> None:
    for d in (m.logs_dir, m.root / "var", m.supervisor_dir / "conf.d", m.systemd_dir):
        d.mkdir(parents=True, exist_ok=True)
    for path, text in p.write.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    for path in p.remove:
        path.unlink(missing_ok=True)


def skipped(m: Manifest, farmctl: str | None = None) -> list[Path]:
    """Files the manifest asks for that exist without our header: left alone."""
    return [path for path, text in sorted(render(m, farmctl).items())
            if path.is_file() and path.read_text() != text and not _ours(path)]
