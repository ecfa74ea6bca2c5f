"""Jobs the container tests dispatch from the host and run inside the image."""
from __future__ import annotations

import os
import pwd
import subprocess
import time

import farm


def record(path: str, line: str) -> None:
    """Append one line atomically (O_APPEND)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def whoami() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


class Append(farm.Job):
    """Writes `<tag> <attempt> <user> <pid>` to `path`, after `seconds` (noted in path.started)."""

    def __init__(self, path: str, tag: str, seconds: float = 0.0) -> None:
        self.path, self.tag, self.seconds = path, tag, seconds

    def handle(self) -> None:
        if self.seconds:
            record(self.path + ".started", f"{self.tag} {self.attempts} {whoami()} {os.getpid()}")
            time.sleep(self.seconds)
        record(self.path, f"{self.tag} {self.attempts} {whoami()} {os.getpid()}")


class Child(farm.Job):
    """Runs a child and waits for it, or (orphan) leaves `sleep` running behind a shell that exits."""

    def __init__(self, path: str, tag: str, orphan: float = 0.0) -> None:
        self.path, self.tag, self.orphan = path, tag, orphan

    def handle(self) -> None:
        if self.orphan:
            subprocess.run(["sh", "-c", f"sleep {self.orphan} &"], check=True)
        else:
            subprocess.run(["sleep", "0.1"], check=True)
        record(self.path, f"{self.tag} {self.attempts} {whoami()} {os.getpid()}")
