"""Production deploys as an operator types them (#13): the server's own supervisord, with a
Debian-style main config that includes conf.d/*.conf, driven by a bare `supervisorctl -c
MAIN`, workers running as an unprivileged user from a venv made with the system's Python."""
from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import tempfile
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest

from conftest import PG_URL, ROOT, _check_pg, need_server, remove_once_gone, require, wait_until
from tcpproxy import Proxy, free_port

USER = "jobfarm-test"
SYSTEM_PYTHON = "/usr/bin/python3"
VENV = ROOT / ".venv-system"          # the repo's jobfarm, installed with the system's Python


@pytest.fixture(scope="module")
def system_venv() -> Path:
    """A venv any user can run (the development venv's Python may live under /root)."""
    require(os.geteuid() == 0, "needs root to create a user and run supervisord as a server does")
    require(Path(SYSTEM_PYTHON).exists(), f"needs the system's {SYSTEM_PYTHON}")
    farmctl = VENV / "bin" / "farmctl"
    if not farmctl.exists():
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(VENV)], check=True, timeout=300)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", "-e", f"{ROOT}[postgres]"],
                       check=True, timeout=900)
    return VENV


@pytest.fixture(scope="module")
def worker_user(system_venv: Path) -> str:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                       check=True, timeout=60)
    return USER


class Server:
    """A machine's supervisord as Debian lays it out, and an application deployed beside it."""

    def __init__(self, base: Path, venv: Path, user: str) -> None:
        self.base, self.venv, self.user = base, venv, user
        self.etc = base / "etc" / "supervisor"
        self.main = self.etc / "supervisord.conf"
        self.sock = base / "run" / "supervisor.sock"
        self.app = base / "srv" / "app"
        self.manifest = self.app / "conf" / "farm.yaml"
        self.out = self.app / "var" / "out.txt"
        for d in (self.etc / "conf.d", base / "run", base / "log", self.app / "conf"):
            d.mkdir(parents=True)
        self.main.write_text(textwrap.dedent(f"""\
            ; a Debian-style /etc/supervisor/supervisord.conf
            [unix_http_server]
            file={self.sock}
            chmod=0770
            chown=root:{user}

            [supervisord]
            logfile={base}/log/supervisord.log
            pidfile={base}/run/supervisord.pid
            childlogdir={base}/log

            [rpcinterface:supervisor]
            supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

            [supervisorctl]
            serverurl=unix://{self.sock}

            [include]
            files = {self.etc}/conf.d/*.conf
            """))

    def write(self, pipelines: str, connection: str = "main: {driver: database, url: 'sqlite:///var/farm.db', retry_after: 30}") -> None:
        self.manifest.write_text(textwrap.dedent(f"""\
            imports: [appjobs]
            connections:
              {connection}
            supervisor:
              include: {self.etc}/conf.d/*.conf
              serverurl: unix://{self.sock}
              user: {self.user}
            pipelines:
            """) + textwrap.indent(textwrap.dedent(pipelines).strip(), "  ") + "\n")

    def jobs(self, extra: str = "") -> None:
        (self.app / "appjobs.py").write_text(textwrap.dedent('''\
            import os, time
            import farm

            class Work(farm.Job):
                queue = "mail"
                timeout = 6                       # three times its pipeline's
                def __init__(self, path, tag, seconds=0.0):
                    self.path, self.tag, self.seconds = path, tag, seconds
                def handle(self):
                    if self.seconds:
                        with open(self.path + ".started", "a") as f:
                            f.write(self.tag + "\\n")
                    time.sleep(self.seconds)
                    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    os.write(fd, f"{self.tag} {os.getpid()} {os.getuid()}\\n".encode())
                    os.close(fd)
            ''') + extra)

    def start(self) -> None:
        subprocess.run([str(self.venv / "bin" / "supervisord"), "-c", str(self.main)], check=True, timeout=30,
                       cwd="/")

    def stop(self, wait: bool = True) -> psutil.Process | None:
        """SIGTERM to supervisord (it stops the workers), and wait for it to exit unless told
        not to; returns the process told to stop."""
        pidfile = self.base / "run" / "supervisord.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text())
            try:
                proc = psutil.Process(pid)
                os.kill(pid, signal.SIGTERM)
                if wait:
                    proc.wait(60)
                return proc
            except (ProcessLookupError, psutil.Error):
                pass
        return None

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Exactly as an operator types it: `supervisorctl -c /etc/supervisor/supervisord.conf ...`."""
        return subprocess.run([str(self.venv / "bin" / "supervisorctl"), "-c", str(self.main), *args],
                              capture_output=True, text=True, timeout=120, cwd="/")

    def farmctl(self, *args: str, as_user: bool = True, check: bool = True) -> subprocess.CompletedProcess[str]:
        """farmctl as the application's user (root only for render, which writes /etc)."""
        argv = [str(self.venv / "bin" / "farmctl"), "--config", str(self.manifest), *args]
        if as_user:
            argv = ["runuser", "-u", self.user, "--", *argv]
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=str(self.app))
        if check and cp.returncode != 0:
            raise AssertionError(f"farmctl {args} -> {cp.returncode}\n{cp.stdout}\n{cp.stderr}")
        return cp

    def produce(self, tags: list[str], seconds: float = 0.0) -> None:
        """Dispatch as the application's user would (its files stay the user's)."""
        script = (f"import sys; sys.path.insert(0, {str(self.app)!r}); import farm, appjobs; "
                  f"farm.configure({str(self.manifest)!r}); "
                  f"farm.dispatch_many([appjobs.Work({str(self.out)!r}, t, {seconds}) for t in {tags!r}])")
        subprocess.run(["runuser", "-u", self.user, "--", str(self.venv / "bin" / "python"), "-c", script],
                       check=True, timeout=120, cwd=str(self.app))

    def deploy(self) -> None:
        """`farmctl render && supervisorctl update`, as root, then var/ given to the app's user."""
        self.farmctl("render", as_user=False)
        subprocess.run(["chown", "-R", f"{self.user}:", str(self.app / "var")], check=True)
        cp = self.supervisorctl("update")
        assert cp.returncode == 0, cp.stdout + cp.stderr

    def running(self, program: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.supervisorctl("status").stdout.splitlines():
            parts = line.split()
            if len(parts) > 3 and parts[0].startswith(program + ":") and parts[1] == "RUNNING":
                out[parts[0]] = int(parts[3].rstrip(","))
        return out

    def tags(self) -> Counter[str]:
        return Counter(x.split()[0] for x in self.out.read_text().splitlines()) if self.out.exists() else Counter()

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
        def logs() -> str:
            paths = sorted((self.base / "log").glob("*.log")) + sorted((self.app / "var" / "log").glob("*.log"))
            return "".join(f"--- {p.name}\n" + p.read_text()[-3000:] for p in paths)

        return wait_until(predicate, timeout, what, every=0.25, explain=logs)    # a supervisorctl per look


@pytest.fixture
def server(worker_user: str, system_venv: Path) -> Iterator[Server]:
    base = Path(tempfile.mkdtemp(prefix="farm-server-", dir="/tmp"))
    base.chmod(0o755)
    s = Server(base, system_venv, worker_user)
    try:
        yield s
    finally:
        # not waited for: supervisord takes 2-4 s to wind down; its dir goes once it has
        remove_once_gone(s.stop(wait=False), base)


def test_render_and_update_deploy_onto_the_systems_supervisord_as_an_unprivileged_user(server):
    # Given a server's own supervisord running, and an app whose manifest points at it
    server.start()
    server.jobs()
    server.write("""
        mail: {queues: [mail], numprocs: 2, timeout: 2}
    """)
    # When the operator renders and updates, as typed
    server.deploy()
    # Then the program file is where the include finds it, no private supervisord.conf exists
    program = server.etc / "conf.d" / "mail.conf"
    assert program.exists() and not (server.app / "supervisor" / "supervisord.conf").exists()
    text = program.read_text()
    assert f"user={server.user}" in text and "stopwaitsecs=36" in text    # the class's 6 s + 30
    pids = server.wait_for(lambda: len(server.running("mail")) == 2 and server.running("mail"), what="2 workers")
    uid = pwd.getpwnam(server.user).pw_uid
    assert {psutil.Process(pid).uids().real for pid in pids.values()} == {uid}
    # and the workers, as that user, read the manifest and write the SQLite file
    server.produce([f"j{i}" for i in range(40)])
    server.wait_for(lambda: sum(server.tags().values()) == 40, what="40 jobs")
    assert set(server.tags().values()) == {1}
    assert {int(x.split()[2]) for x in server.out.read_text().splitlines()} == {uid}
    # and farmctl status talks to that supervisord (its serverurl)
    status = json.loads(server.farmctl("status", "--json").stdout)
    assert sorted(p["name"] for p in status["supervisor"]) == ["mail_00", "mail_01"]


def test_supervisorctl_restart_pipeline_recycles_every_worker_and_lets_the_running_job_finish(server):
    server.start()
    server.jobs()
    server.write("""
        mail: {queues: [mail], numprocs: 2, timeout: 2}
    """)
    server.deploy()
    before = server.wait_for(lambda: len(server.running("mail")) == 2 and server.running("mail"), what="workers")
    server.produce(["slow"], seconds=3)
    server.produce([f"j{i}" for i in range(30)])
    server.wait_for(lambda: (server.out.parent / "out.txt.started").exists(), what="the slow job to start")
    # When the operator recycles the pipeline, as typed (a 3 s job runs, its pipeline's timeout is 2)
    cp = server.supervisorctl("restart", "mail:*")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    after = server.wait_for(lambda: len(server.running("mail")) == 2 and server.running("mail"), what="new workers")
    # Then every worker is new, the slow job finished, and every job ran once
    assert set(after.values()).isdisjoint(before.values())
    server.wait_for(lambda: sum(server.tags().values()) == 31, what="31 jobs")
    assert set(server.tags().values()) == {1}


def test_restart_wait_returns_once_every_worker_runs_the_edited_code(server):
    server.start()
    server.jobs()
    server.write("""
        mail: {queues: [mail], numprocs: 2, timeout: 2}
    """)
    server.deploy()
    server.wait_for(lambda: len(server.running("mail")) == 2, what="workers")

    def workers() -> list[dict[str, Any]]:
        return json.loads(server.farmctl("status", "--json").stdout)["workers"]

    server.wait_for(lambda: len([w for w in workers() if not w["lost"]]) == 2, what="two heartbeats")
    assert not any(w["stale"] for w in workers())
    # When a job module is edited on disk, the workers are marked stale
    server.jobs(extra="\n# a new release\n")
    assert all(w["stale"] for w in workers())
    server.produce([f"j{i}" for i in range(20)])
    # and `farmctl restart --wait` returns once every live worker runs the new code
    cp = server.farmctl("restart", "--wait", "--timeout", "60")
    assert "2 live worker(s) run code" in cp.stdout, cp.stdout + cp.stderr
    now = workers()
    assert len(now) == 2 and not any(w["stale"] for w in now)
    server.wait_for(lambda: sum(server.tags().values()) == 20, what="20 jobs")
    assert set(server.tags().values()) == {1}


def test_restart_wait_lists_the_stragglers_and_fails_when_a_worker_does_not_recycle_in_time(server):
    server.start()
    server.jobs()
    server.write("""
        mail: {queues: [mail], numprocs: 1, timeout: 2}
    """)
    server.deploy()
    server.wait_for(lambda: len(server.running("mail")) == 1, what="a worker")
    server.produce(["long"], seconds=5)
    server.wait_for(lambda: (server.out.parent / "out.txt.started").exists(), what="the long job to start")
    server.jobs(extra="\n# a new release\n")
    cp = server.farmctl("restart", "--wait", "--timeout", "1", check=False)
    assert cp.returncode == 1
    assert "still on" in cp.stderr and "mail" in cp.stderr


def test_workers_started_before_their_database_are_running_not_fatal_and_work_once_it_is_up(server):
    need_server("PostgreSQL", _check_pg)
    from sqlalchemy.engine import make_url

    real = make_url(PG_URL)
    port = free_port()
    url = real.set(port=port).render_as_string(hide_password=False)
    proxy = Proxy(port, (real.host or "127.0.0.1", real.port or 5432))
    table = "boot" + os.urandom(4).hex()
    server.start()
    server.jobs()
    server.write("""
        mail: {queues: [mail], numprocs: 2, timeout: 2}
    """, connection=f"main: {{driver: database, url: '{url}', table: {table}, failed_table: f{table}}}")
    try:
        # Given a boot where supervisord starts the workers before PostgreSQL is up
        server.deploy()
        # (what must not happen is FATAL: startretries + 1 exits, each within startsecs. A
        # worker up past startsecs is RUNNING, and one that waits for its database instead of
        # exiting does the same at every start, so it never gets there)
        logs = server.app / "var" / "log"
        waiting = lambda: [p for p in logs.glob("mail_*.log") if "waiting for it at start" in p.read_text()]  # noqa: E731
        pids = server.wait_for(lambda: len(waiting()) == 2 and len(server.running("mail")) == 2
                               and server.running("mail"), what="both workers RUNNING and waiting for PostgreSQL")
        log = (server.base / "log" / "supervisord.log").read_text()
        assert "exited: mail" not in log and "FATAL" not in log, log
        # When the database comes up
        proxy.start()
        server.produce([f"j{i}" for i in range(10)])
        # Then the same workers run the jobs, never having exited
        server.wait_for(lambda: sum(server.tags().values()) == 10, what="10 jobs")
        assert set(server.tags().values()) == {1}
        assert {int(x.split()[1]) for x in server.out.read_text().splitlines()} <= set(pids.values())
        assert server.running("mail") == pids
    finally:
        server.stop()
        proxy.close()
