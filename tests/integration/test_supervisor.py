"""The rendered farm under a real supervisord, driven with supervisorctl."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest

from conftest import ROOT, SUPPORT, remove_once_gone, wait_until

BIN = Path(sys.executable).parent


class Supervised:
    """A project dir with a manifest, rendered and run by its own supervisord."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.out = root / "out.txt"
        self.conf = root / "supervisor" / "supervisord.conf"
        (root / "conf").mkdir()
        self.manifest = root / "conf" / "farm.yaml"
        self.started = False
        self.configured = False
        self.supervisord: psutil.Process | None = None      # once told to shut down

    def write(self, pipelines: str) -> None:
        env = f"{{PYTHONPATH: '{SUPPORT}{os.pathsep}{ROOT}'}}"
        body = textwrap.indent(textwrap.dedent(pipelines).strip().replace("ENV", env), "  ")
        self.manifest.write_text(textwrap.dedent("""\
            imports: [testjobs]
            connections:
              main: {driver: database, url: "sqlite:///var/farm.db", retry_after: 30}
            pipelines:
            """) + body + "\n")

    def env(self) -> dict[str, str]:
        return dict(os.environ, FARM_CONFIG=str(self.manifest),
                    PYTHONPATH=os.pathsep.join([str(SUPPORT), str(ROOT)]))

    def farmctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cp = subprocess.run([str(BIN / "farmctl"), *args], cwd=self.root, env=self.env(),
                            capture_output=True, text=True, timeout=120)
        if check and cp.returncode != 0:
            raise AssertionError(f"farmctl {args} -> {cp.returncode}\n{cp.stdout}{cp.stderr}")
        return cp

    def ctl(self, *args: str, ok: tuple[int, ...] | None = (0,)) -> str:
        """Run supervisorctl; its exit status must be one of `ok` (None: not checked)."""
        cp = subprocess.run([str(BIN / "supervisorctl"), "-c", str(self.conf), *args], cwd=self.root,
                            capture_output=True, text=True, timeout=120)
        if ok is not None and cp.returncode not in ok:
            raise AssertionError(f"supervisorctl {' '.join(args)} -> {cp.returncode}\n{cp.stdout}{cp.stderr}")
        return cp.stdout

    def status(self) -> str:
        """`supervisorctl status` (exit 3 only says that some process is not RUNNING)."""
        return self.ctl("status", ok=(0, 3))

    def start(self) -> None:
        self.farmctl("render")
        subprocess.run([str(BIN / "supervisord"), "-c", str(self.conf)], cwd=self.root, env=self.env(),
                       check=True, timeout=30)
        self.started = True
        self.wait_for(lambda: "RUNNING" in self.status(), what="supervisord to run the workers")

    def restart(self, group: str, n: int) -> dict[str, int]:
        """`supervisorctl restart group:*`, which must succeed and replace every one of its `n`
        processes: returns the new name -> pid."""
        before = self.running(group)
        assert len(before) == n, before
        self.ctl("restart", f"{group}:*")
        after = self.wait_for(lambda: len(self.running(group)) == n and self.running(group), what=f"{n} workers")
        assert set(after) == set(before), after
        assert set(after.values()).isdisjoint(before.values()), f"not every worker is new: {before} -> {after}"
        return after

    def states(self) -> dict[str, tuple[str, int | None]]:
        """name -> (state, pid), e.g. {'w:w_00': ('RUNNING', 123)}."""
        out = {}
        for line in self.status().splitlines():
            parts = line.split()
            if len(parts) >= 2:
                pid = int(parts[3].rstrip(",")) if len(parts) > 3 and parts[2] == "pid" else None
                out[parts[0]] = (parts[1], pid)
        return out

    def running(self, program: str) -> dict[str, int]:
        return {n: pid for n, (state, pid) in self.states().items()
                if n.startswith(program + ":") and state == "RUNNING" and pid}

    def app(self) -> Any:
        """This process's farm, on the manifest (configured once: the producer threads share it)."""
        from farm import app

        if not self.configured:
            app.configure(self.manifest)
            self.configured = True
        return app

    def workers(self) -> list[dict[str, Any]]:
        """The live workers' heartbeats."""
        return self.app().store("main").workers()

    def beating(self, pids: dict[str, int]) -> None:
        """Wait until each of these processes has sent a heartbeat."""
        self.wait_for(lambda: set(pids.values()) <= {w["pid"] for w in self.workers()},
                      what=f"heartbeats from {sorted(pids)}")

    def dispatch(self, tags: list[str], seconds: float = 0.0, queue: str = "default") -> None:
        import farm
        from testjobs import Record

        self.app()
        farm.dispatch_many([Record(str(self.out), t, seconds=seconds) for t in tags], queue=queue)

    def tags(self) -> Counter[str]:
        lines = self.out.read_text().splitlines() if self.out.exists() else []
        return Counter(line.split()[0] for line in lines)

    @staticmethod
    def wait_for(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
        return wait_until(predicate, timeout, what, every=0.25)   # a supervisorctl per look: ~0.1 s of CPU

    def shutdown(self) -> None:
        """Tell supervisord to shut down (it stops the workers); not waited for here: the
        fixture removes the project dir once it has gone, at the session's end."""
        if not self.started:
            return
        self.started = False
        try:
            self.supervisord = psutil.Process(int((self.root / "var" / "supervisord.pid").read_text()))
        except (OSError, ValueError, psutil.Error):
            pass
        self.ctl("shutdown", ok=None)


@pytest.fixture
def sup() -> Iterator[Supervised]:
    root = Path(tempfile.mkdtemp(prefix="farm-", dir="/tmp"))     # a unix socket path must be short
    s = Supervised(root)
    try:
        yield s
    finally:
        s.shutdown()
        from farm import app

        app._close_all()
        remove_once_gone(s.supervisord, root)


TWO = """
    w:
      queues: [default]
      numprocs: 2
      sleep: 0.2
      timeout: 10
      environment: ENV
"""


def test_a_rendered_farm_runs_under_supervisord_and_eats_jobs(sup):
    # Given a rendered pipeline of two workers under supervisord, both beating
    sup.write(TWO)
    sup.start()
    pids = sup.wait_for(lambda: len(sup.running("w")) == 2 and sup.running("w"), what="two workers")
    assert set(pids) == {"w:w_00", "w:w_01"}
    sup.beating(pids)
    # When 100 jobs are dispatched
    sup.dispatch([f"j{i}" for i in range(100)])
    # Then each runs once, and status lists supervisord's two processes
    sup.wait_for(lambda: len(sup.tags()) == 100, what="100 jobs")
    sup.ctl("stop", "w:*")
    assert set(sup.tags().values()) == {1}
    import json

    doc = json.loads(sup.farmctl("status", "--json").stdout)
    assert {p["name"] for p in doc["supervisor"]} == {"w_00", "w_01"}


def test_restarting_a_pipeline_mid_jobs_loses_none_and_runs_none_twice(sup):
    # Given two workers running jobs of half a second
    sup.write(TWO)
    sup.start()
    sup.wait_for(lambda: len(sup.running("w")) == 2, what="two workers")
    sup.dispatch([f"s{i}" for i in range(20)], seconds=0.5)
    sup.wait_for(lambda: (sup.root / "out.txt.started").exists(), what="jobs to start")
    # When the pipeline is restarted mid-job (every worker replaced by a new process)
    sup.restart("w", 2)
    # Then, once the workers have stopped, every job ran, none was started twice
    sup.wait_for(lambda: len(sup.tags()) == 20, timeout=60, what="all 20 jobs")
    sup.ctl("stop", "w:*")
    assert set(sup.tags().values()) == {1}
    started = Counter(line.split()[0] for line in (sup.root / "out.txt.started").read_text().splitlines())
    assert set(started.values()) == {1}, "no job was started twice"


def test_more_numprocs_and_an_update_restart_only_that_pipeline(sup):
    two_pipes = TWO + """
    other:
      queues: [other]
      numprocs: 1
      sleep: 0.2
      environment: ENV
"""
    # Given two pipelines under supervisord
    sup.write(two_pipes)
    sup.start()
    sup.wait_for(lambda: len(sup.running("w")) == 2 and len(sup.running("other")) == 1, what="workers")
    other_pids = sup.running("other")
    # When one pipeline gets another process, is rendered and supervisord updated
    sup.write(two_pipes.replace("numprocs: 2", "numprocs: 3"))
    assert sup.farmctl("render", "--check", check=False).returncode == 1
    sup.farmctl("render")
    assert sup.farmctl("render", "--check").returncode == 0
    sup.ctl("update")
    # Then it runs three workers, and the other pipeline's process was left alone
    sup.wait_for(lambda: len(sup.running("w")) == 3, what="three workers")
    assert sup.running("other") == other_pids


def test_farmctl_restart_recycles_every_worker_without_losing_a_job(sup):
    # Given two workers that have started (their heartbeats are in: the restart stamp
    # will be newer than their start) and 30 jobs
    sup.write(TWO)
    sup.start()
    before = sup.wait_for(lambda: len(sup.running("w")) == 2 and sup.running("w"), what="two workers")
    sup.beating(before)
    sup.dispatch([f"r{i}" for i in range(30)], seconds=0.1)
    # When `farmctl restart` stamps the store
    sup.farmctl("restart")
    # Then every worker exits and supervisord starts a new one in its place
    sup.wait_for(lambda: len(sup.running("w")) == 2 and set(before.values()).isdisjoint(sup.running("w").values()),
                 timeout=30, what="every worker to come back with a new pid")
    # and, once they have stopped, every job ran exactly once
    sup.wait_for(lambda: len(sup.tags()) == 30, timeout=30, what="all 30 jobs")
    sup.ctl("stop", "w:*")
    assert set(sup.tags().values()) == {1}


def test_a_worker_past_max_jobs_is_restarted_and_never_fatal(sup):
    sup.write("""
    w:
      numprocs: 1
      max_jobs: 1
      sleep: 0.1
      environment: ENV
""")
    sup.start()
    sup.dispatch([f"m{i}" for i in range(5)])
    sup.wait_for(lambda: len(sup.tags()) == 5, timeout=40, what="five jobs, one per worker life")
    pids = {line.split()[2] for line in sup.out.read_text().splitlines()}
    assert len(pids) == 5
    sup.wait_for(lambda: [s for s, _ in sup.states().values()] == ["RUNNING"], timeout=10, what="RUNNING")
    log = (sup.root / "var" / "log" / "supervisord.log").read_text()
    assert "exit status 0; expected" in log
    assert "FATAL" not in log and "BACKOFF" not in log and "not expected" not in log


def test_the_cron_drain_command_drains_the_queue_and_exits_0(sup):
    sup.write(TWO + """
    reports:
      queues: [reports]
      drain: "*/10 * * * *"
      environment: ENV
""")
    sup.farmctl("render")
    assert not (sup.root / "supervisor" / "conf.d" / "reports.conf").exists()
    assert not (sup.root / "systemd" / "farm-reports.target").exists()
    cron = (sup.root / "supervisor" / "farm.cron").read_text().splitlines()
    (line,) = [x for x in cron if "--pipeline reports" in x]
    fields = line.split(None, 6)
    assert fields[:5] == ["*/10", "*", "*", "*", "*"] and "flock -n" in fields[6]
    sup.dispatch([f"d{i}" for i in range(10)], queue="reports")
    cp = subprocess.run(["sh", "-c", fields[6]], env=sup.env(), timeout=60)
    assert cp.returncode == 0
    assert len(sup.tags()) == 10


def test_five_restarts_in_a_row_under_a_producer_run_every_job_exactly_once(sup):
    # Given two beating workers and a producer sending 10 jobs every 50 ms until told to stop
    sup.write(TWO)
    sup.start()
    sup.beating(sup.wait_for(lambda: len(sup.running("w")) == 2 and sup.running("w"), what="two workers"))
    stop = threading.Event()
    sent: list[str] = []
    errors: list[BaseException] = []

    def produce():
        try:
            while len(sent) < 20000 and not (stop.is_set() and len(sent) >= 1000):
                tags = [f"p{n}" for n in range(len(sent), len(sent) + 10)]
                sup.dispatch(tags, seconds=0.002)
                sent.extend(tags)
                stop.wait(0.05)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=produce)
    t.start()
    # When the pipeline is restarted five times in a row, each restart replacing every worker
    sent_at = []
    try:
        for _ in range(5):
            sent_at.append(len(sent))
            sup.restart("w", 2)
    finally:
        stop.set()
        t.join(60)
    # Then the producer was sending all along, and finished
    assert not t.is_alive() and errors == []
    assert sent_at[0] < sent_at[-1] < len(sent), f"sent {sent_at} during the restarts, {len(sent)} in all"
    # and, once the workers have stopped, every job it sent ran exactly once
    sup.wait_for(lambda: len(sup.tags()) == len(sent), timeout=90, what=f"all {len(sent)} jobs")
    sup.ctl("stop", "w:*")
    assert sup.tags() == Counter(sent)
