"""The image (#23), built from the Containerfile and run for real with podman.

No registry is reachable here, so the base is a Debian bookworm made with debootstrap and
`podman import` (tests/support/podman_helper.py, cached between runs). An application image (the
jobs module and manifest of tests/support/containerapp in /app) runs `farmctl work` with host
networking against this machine's PostgreSQL and RabbitMQ, jobs dispatched from the host.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from conftest import (PG_URL, require, ROOT, SUPPORT, _check_amqp, _check_pg, amqp_url, drop_vhosts,
                      need_server, need_tool, new_vhost, pg_conninfo, wait_until)
from podman_helper import BASE_IMAGE, Podman, ensure_base_image, pip_build_args

APP = SUPPORT / "containerapp"
IMAGE_TAG = "localhost/jobfarm-test:latest"
MAX_ADDED_MB = 120
STOP_TIMEOUT = 30               # `podman stop -t`, longer than the pipelines' stop_wait (20)

# the first run makes the base (debootstrap, about a minute) inside the first test's setup
pytestmark = pytest.mark.timeout(900)

PS = """\
import json, os
procs = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
        status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status") if ":" in line)
    except OSError:
        continue
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
    procs.append({"pid": int(pid), "ppid": int(ppid), "state": state, "comm": comm,
                  "uid": int(status["Uid"].split()[0])})
print(json.dumps(procs))
"""


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    require(os.geteuid() == 0, "podman here runs as root (the base image is made with debootstrap)")
    need_tool("podman")
    need_tool("runc")
    return Podman(tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="module")
def base(podman: Podman) -> str:
    if not podman.exists(BASE_IMAGE):
        need_tool("debootstrap")
    return ensure_base_image(podman, [])


@pytest.fixture(scope="module")
def image(podman: Podman, base: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The jobfarm image from the repository's Containerfile, on the Debian base (the layer of
    dependencies is cached while pyproject.toml stays the same); the previous run's image goes."""
    work = tmp_path_factory.mktemp("build")
    before = podman("image", "inspect", "--format", "{{.Id}}", IMAGE_TAG, check=False).stdout.strip()
    iid = podman.build(ROOT, work, "--build-arg", f"BASE={base}", "--tag", IMAGE_TAG, *pip_build_args(work))
    if before and before != iid:
        podman("rmi", before, check=False)          # refused while another run's app image uses it
    return iid


@pytest.fixture(scope="module")
def app_image(podman: Podman, image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The application image: FROM the jobfarm image, with ctrjobs.py and conf/ in /app."""
    work = tmp_path_factory.mktemp("app")
    iid = podman.build(APP, work, "--build-arg", f"JOBFARM={image}")
    yield iid
    podman("rmi", "--force", iid, check=False)


@pytest.fixture(scope="module")
def farm_uid(podman: Podman, image: str) -> int:
    return int(podman("run", "--rm", "--entrypoint", "id", image, "-u").stdout)


class App:
    """The application image against one backend: dispatch from the host, workers in containers."""

    def __init__(self, podman: Podman, image: str, tmp: Path, backend: str, farm_uid: int) -> None:
        self.podman, self.image, self.backend = podman, image, backend
        self.out = tmp / "out"
        self.out.mkdir()
        os.chown(self.out, farm_uid, farm_uid)          # the container's `farm` writes here
        suffix = uuid.uuid4().hex[:10]
        self.tables = (f"ctr_{suffix}", f"ctr_{suffix}_failed")
        self.env = {"FARM_DB_URL": PG_URL, "FARM_TABLE": self.tables[0], "FARM_FAILED_TABLE": self.tables[1]}
        need_server("PostgreSQL", _check_pg)
        if backend == "amqp":
            need_server("RabbitMQ", _check_amqp)
            self.env["FARM_AMQP_URL"] = amqp_url(new_vhost())
        self.connection = "rabbit" if backend == "amqp" else "database"
        self.pipeline = "amqp_worker" if backend == "amqp" else "db_worker"
        self.containers: list[str] = []

    def dispatch(self, jobs: str) -> None:
        """Dispatch from the host, as the application would: `jobs` is a Python list expression."""
        script = ("import farm, ctrjobs\n"
                  f"farm.configure({str(APP / 'conf' / 'farm.yaml')!r})\n"
                  f"farm.dispatch_many({jobs}, connection={self.connection!r})\n")
        env = {**os.environ, **self.env, "PYTHONPATH": os.pathsep.join([str(APP), str(ROOT)])}
        subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120, cwd=APP)

    def start(self, *args: str, entrypoint: str | None = None) -> str:
        """A detached worker container, `work --pipeline P ARGS`."""
        name = f"farm-test-{uuid.uuid4().hex[:10]}"
        env = [a for k, v in self.env.items() for a in ("--env", f"{k}={v}")]
        extra = ["--entrypoint", entrypoint] if entrypoint else []
        self.podman("run", "--detach", "--name", name, "--network", "host", *env, *extra,
                    "--volume", f"{self.out}:/out", self.image, "work", "--pipeline", self.pipeline, *args)
        self.containers.append(name)
        return name

    def wait(self, name: str, timeout: float = 120) -> int:
        return int(self.podman("wait", name, timeout=timeout).stdout.strip())

    def logs(self, name: str) -> str:
        cp = self.podman("logs", name, check=False)
        return cp.stdout[-4000:] + cp.stderr[-4000:]

    def processes(self, name: str) -> list[dict[str, Any]]:
        return json.loads(self.podman("exec", name, "python3", "-c", PS).stdout)

    def lines(self, name: str = "out.txt") -> list[list[str]]:
        path = self.out / name
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def tags(self) -> Counter[str]:
        return Counter(parts[0] for parts in self.lines())

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 60, what: str = "condition",
                 container: str | None = None) -> Any:
        return wait_until(predicate, timeout, what, every=0.1,
                          explain=lambda: self.logs(container) if container else "")

    def close(self) -> None:
        for name in self.containers:
            self.podman("rm", "--force", "--time", "0", name, check=False)
        drop_vhosts()
        import psycopg

        with psycopg.connect(pg_conninfo(), autocommit=True) as c:
            for table in self.tables:
                c.execute(f'DROP TABLE IF EXISTS "{table}"')


@pytest.fixture
def make_app(podman: Podman, app_image: str, farm_uid: int, tmp_path: Path) -> Iterator[Callable[[str], App]]:
    made: list[App] = []

    def make(backend: str) -> App:
        app = App(podman, app_image, tmp_path / backend, backend, farm_uid)
        made.append(app)
        return app

    (tmp_path / "postgresql").mkdir()
    (tmp_path / "amqp").mkdir()
    yield make
    for app in made:
        app.close()


def test_the_image_is_the_one_the_design_names_and_adds_under_120_mb(podman: Podman, base: str, image: str) -> None:
    """Given the image built on the Debian base, its config, contents and size are as DESIGN.md says."""
    config = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "farmctl"]
    assert config["StopSignal"] == "SIGTERM"
    assert config["WorkingDir"] == "/app"
    assert config["User"] == "10001:10001"
    inside = podman("run", "--rm", "--entrypoint", "sh", image, "-c",
                    "id -un; ls -A /mnt /app; ls /opt/jobfarm/lib/*/site-packages; "
                    "test ! -e /root/.cache && test ! -e /etc/pip.conf && test ! -e /src && test ! -e /wheels && echo clean").stdout.split()
    assert inside[0] == "farm"
    assert inside[-1] == "clean"                     # no pip cache, no build mounts or source left
    assert {"farm", "psycopg", "pymysql", "pika", "sqlalchemy"} <= set(inside)
    assert "setuptools" not in inside
    added = (podman.size(image) - podman.size(base)) / 1e6
    print(f"\nthe jobfarm image adds {added:.1f} MB to its base ({podman.size(base) / 1e6:.1f} MB)")
    assert added < MAX_ADDED_MB


def test_farmctl_version_works_inside(podman: Podman, image: str) -> None:
    """Given the image, when it runs with `--version`, then farmctl answers as it does on the host.

    Until farmctl has `--version` (the host's answer says), `--help` must work inside instead.
    """
    host = subprocess.run([sys.executable, "-m", "farm", "--version"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    if host.returncode != 0 and "No such option" in host.stderr:
        cp = podman("run", "--rm", image, "--help")
        assert "Run a worker." in cp.stdout
        return

    cp = podman("run", "--rm", image, "--version", check=False)

    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert cp.stdout.split() == host.stdout.split()


@pytest.mark.parametrize("backend", ["postgresql", "amqp"])
def test_a_container_drains_200_jobs_dispatched_from_the_host_each_once(make_app: Callable[[str], App],
                                                                       backend: str) -> None:
    """Given 200 jobs dispatched from the host, when the app image works them with
    --stop-when-empty, then each runs once, as `farm`, and the container exits 0."""
    app = make_app(backend)
    app.dispatch("[ctrjobs.Append('/out/out.txt', f'j{i}') for i in range(200)]")

    c = app.start("--stop-when-empty")

    assert app.wait(c) == 0, app.logs(c)
    lines = app.lines()
    assert app.tags() == Counter(f"j{i}" for i in range(200)), app.logs(c)
    assert {(attempt, user) for _, attempt, user, _ in lines} == {("1", "farm")}


@pytest.mark.parametrize("backend", ["postgresql", "amqp"])
def test_podman_stop_lets_the_running_job_finish_and_nothing_runs_twice(make_app: Callable[[str], App],
                                                                        backend: str) -> None:
    """Given a worker container running a 3-second job with five more queued behind it, when
    `podman stop -t 30` sends TERM, then the job finishes, the container exits 0 long before
    the 30 s, and a second container runs the five, each once, and not the first again."""
    app = make_app(backend)
    app.dispatch("[ctrjobs.Append('/out/out.txt', 'long', 3.0)]"
                 " + [ctrjobs.Append('/out/out.txt', f'after{i}') for i in range(5)]")
    c = app.start()
    app.wait_for(lambda: app.lines("out.txt.started"), what="the long job to start", container=c)

    t0 = time.monotonic()
    app.podman("stop", "--time", str(STOP_TIMEOUT), c, timeout=STOP_TIMEOUT + 30)
    took = time.monotonic() - t0
    print(f"\npodman stop -t {STOP_TIMEOUT} took {took:.1f}s ({backend})")

    assert app.wait(c) == 0, app.logs(c)
    assert took < STOP_TIMEOUT - 5, f"stop took {took:.1f}s: the worker was killed, not stopped\n{app.logs(c)}"
    assert app.tags()["long"] == 1, app.logs(c)
    second = app.start("--stop-when-empty")
    assert app.wait(second) == 0, app.logs(second)
    assert app.tags() == Counter(["long"] + [f"after{i}" for i in range(5)]), app.logs(c) + app.logs(second)
    assert [line[1] for line in app.lines() if line[0] == "long"] == ["1"]


def _children(app: App, entrypoint: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """A worker runs a job that waits for its child and one that orphans a `sleep 2`; once the
    orphan has ended, the container's processes."""
    app.dispatch("[ctrjobs.Child('/out/out.txt', 'waited'), ctrjobs.Child('/out/out.txt', 'orphan', 2.0)]")
    c = app.start(entrypoint=entrypoint)
    app.wait_for(lambda: app.tags() == Counter(["waited", "orphan"]), what="both jobs", container=c)
    seen = app.processes(c)
    orphans = [p for p in seen if p["comm"] == "sleep" and p["state"] != "Z"]
    assert [p["ppid"] for p in orphans] == [1], seen          # the shell is gone: PID 1 inherited it
    app.wait_for(lambda: not any(p["comm"] == "sleep" and p["state"] != "Z" for p in app.processes(c)),
                 timeout=10, what="the orphan to end", container=c)
    time.sleep(0.5)                                           # PID 1 had its SIGCHLD
    return c, app.processes(c)


def test_a_job_s_children_leave_no_zombie_and_the_worker_is_not_root(make_app: Callable[[str], App],
                                                                     farm_uid: int) -> None:
    """Given tini as PID 1, when jobs run a child and leave an orphan, then no zombie stays;
    the worker process runs as `farm`."""
    app = make_app("postgresql")

    c, procs = _children(app)

    assert [p for p in procs if p["state"] == "Z"] == [], procs
    assert [(p["comm"], p["uid"]) for p in procs if p["pid"] == 1] == [("tini", farm_uid)], procs
    assert [(p["ppid"], p["uid"]) for p in procs if p["comm"] == "farmctl"] == [(1, farm_uid)], procs
    assert farm_uid != 0
    assert {line[2] for line in app.lines()} == {"farm"}
    app.podman("stop", "--time", str(STOP_TIMEOUT), c, timeout=STOP_TIMEOUT + 30)
    assert app.wait(c) == 0, app.logs(c)


def test_without_tini_the_orphan_would_stay_a_zombie(make_app: Callable[[str], App]) -> None:
    """The control for the test above: with farmctl itself as PID 1 the same orphan stays a
    zombie, so that test can tell."""
    app = make_app("postgresql")

    _, procs = _children(app, entrypoint="farmctl")

    assert [p["comm"] for p in procs if p["state"] == "Z"] == ["sleep"], procs


def test_compose_runs_the_services_and_one_worker_per_resident_pipeline() -> None:
    """Given compose.yaml and conf/farm.yaml, `podman-compose config` accepts the file, and it
    runs PostgreSQL, RabbitMQ, Redis, the scheduler and one worker service per resident
    pipeline (replicas = numprocs, stop_grace_period = the stop window, SIGTERM)."""
    from farm import stopwindow
    from farm.manifest import load

    exe = need_tool("podman-compose")
    cp = subprocess.run([exe, "--dry-run", "-f", str(ROOT / "compose.yaml"), "config"], capture_output=True,
                        text=True, timeout=60, cwd=ROOT)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    services = yaml.safe_load(cp.stdout)["services"]
    manifest = load(ROOT / "conf" / "farm.yaml")
    windows, _ = stopwindow.for_manifest(manifest)
    resident = {name: p for name, p in manifest.pipelines.items() if not p.drain}

    assert set(services) == {"postgres", "rabbitmq", "redis", "scheduler", *resident}
    for name, p in resident.items():
        s = services[name]
        assert s["command"] == ["work", "--pipeline", name]
        assert s["deploy"]["replicas"] == p.numprocs
        assert s["stop_grace_period"] == f"{windows[name]}s"
        assert s["stop_signal"] == "SIGTERM"
        assert s["image"] == services["scheduler"]["image"]
        assert "/app/conf" in " ".join(s["volumes"])
        assert {k for k, _ in p.environment} <= set(s["environment"])
    assert services["scheduler"]["command"] == ["schedule"]
    assert services["scheduler"]["deploy"]["replicas"] == 1
    for server in ("postgres", "rabbitmq", "redis"):
        assert "healthcheck" in services[server]
        assert services["email_worker"]["depends_on"][server]["condition"] == "service_healthy"
