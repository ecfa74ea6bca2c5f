"""A chaos farm run by a real supervisord, deployed the way the README says to deploy.

The farm's manifest gets a pipeline; `farmctl render` writes `supervisor/supervisord.conf` (a
unix socket under the farm's `var/`, so the work dir's path must be short) and `conf.d/P.conf`;
supervisord from the same venv runs the workers. The three deploys of the README are methods:
`update(numprocs)` (render && supervisorctl update), `restart_group()` (supervisorctl restart
P:*) and `farm_restart()` (farmctl restart --wait).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

BIN = Path(sys.executable).parent


class DeployError(RuntimeError):
    """A deploy step failed or the farm did not come back in time."""


class Supervised:
    """supervisord over the farm whose manifest is `manifest` (run with environment `env`)."""

    def __init__(self, manifest: Path, env: dict[str, str], program: str = "chaos") -> None:
        self.manifest = manifest
        self.root = manifest.parent.parent          # the project root: the directory above conf/
        self.env = env
        self.program = program
        self.conf = self.root / "supervisor" / "supervisord.conf"
        self.pid: int | None = None

    def write_pipeline(self, numprocs: int, **options: Any) -> None:
        """Set the manifest's one pipeline (other keys of the manifest are left as they are)."""
        doc = yaml.safe_load(self.manifest.read_text())
        pipeline = {"queues": ["default"], "numprocs": numprocs, "sleep": 0.1, "timeout": 20}
        pipeline.update(options)
        doc["pipelines"] = {self.program: pipeline}
        doc.setdefault("supervisor", {"dir": "supervisor", "logs": "var/log"})
        self.manifest.write_text(yaml.safe_dump(doc, sort_keys=False))

    def run(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cp = subprocess.run([*argv], cwd=self.root, env=self.env, capture_output=True, text=True,
                            timeout=timeout)
        if check and cp.returncode != 0:
            raise DeployError(f"{' '.join(argv)} -> {cp.returncode}: {(cp.stdout + cp.stderr).strip()[-600:]}")
        return cp

    def farmctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run(str(BIN / "farmctl"), "--config", str(self.manifest), *args, timeout=timeout)

    def ctl(self, *args: str, ok: tuple[int, ...] = (0,)) -> str:
        cp = self.run(str(BIN / "supervisorctl"), "-c", str(self.conf), *args, check=False)
        if cp.returncode not in ok:
            raise DeployError(f"supervisorctl {' '.join(args)} -> {cp.returncode}: {(cp.stdout + cp.stderr).strip()}")
        return cp.stdout

    def start(self, numprocs: int, **options: Any) -> None:
        """Render the pipeline and start supervisord; returns once its workers run."""
        self.write_pipeline(numprocs, **options)
        self.farmctl("render")
        self.run(str(BIN / "supervisord"), "-c", str(self.conf), timeout=30)
        self.pid = int(self._wait(lambda: _read_pid(self.root / "var" / "supervisord.pid"), 15, "supervisord"))
        self.wait_running(numprocs)

    def running(self) -> dict[str, int]:
        """name -> pid of the pipeline's RUNNING processes."""
        out: dict[str, int] = {}
        for line in self.ctl("status", ok=(0, 3)).splitlines():     # 3: some process is not RUNNING
            parts = line.split()
            if (len(parts) > 3 and parts[0].startswith(self.program + ":") and parts[1] == "RUNNING"
                    and parts[2] == "pid"):
                out[parts[0]] = int(parts[3].rstrip(","))
        return out

    def wait_running(self, n: int, timeout: float = 60, other_than: frozenset[int] | set[int] = frozenset()) -> dict[str, int]:
        """Wait until exactly `n` processes run, none of them one of `other_than` (old pids)."""
        def ready() -> dict[str, int] | None:
            now = self.running()
            return now if len(now) == n and not set(now.values()) & other_than else None
        return self._wait(ready, timeout, f"{n} RUNNING workers")

    def update(self, numprocs: int, **options: Any) -> dict[str, int]:
        """`farmctl render && supervisorctl update` to a new numprocs."""
        self.write_pipeline(numprocs, **options)
        self.farmctl("render")
        self.ctl("update")
        return self.wait_running(numprocs)

    def restart_group(self) -> dict[str, int]:
        """`supervisorctl restart P:*`: every worker replaced by a new process."""
        before = self.running()
        self.ctl("restart", f"{self.program}:*")
        return self.wait_running(len(before), other_than=set(before.values()))

    def farm_restart(self) -> dict[str, int]:
        """`farmctl restart --wait`: each worker exits after its job, supervisord starts another."""
        before = self.running()
        self.farmctl("restart", "--wait", "--timeout", "60", timeout=90)
        return self.wait_running(len(before), other_than=set(before.values()))

    def shutdown(self, timeout: float = 60) -> None:
        """Stop the workers gracefully (supervisord's TERM) and supervisord with them."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        try:
            self.ctl("shutdown", ok=(0, 1, 2, 3))
        except (DeployError, subprocess.TimeoutExpired):
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)        # our own supervisord, by its pid

    @staticmethod
    def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = predicate()
            if got:
                return got
            time.sleep(0.2)
        raise DeployError(f"timed out after {timeout:.0f} s waiting for {what}")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:            # a zombie is gone for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
