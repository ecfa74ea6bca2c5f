"""Podman for the container tests, as this machine allows it, and a base image made here.

No container registry is reachable, so the base image is made from Debian's packages: a
minimal bookworm from debootstrap, from the apt mirror the machine already uses, with
python3, python3-venv, tini and ca-certificates, imported with `podman import` and kept
(tree and image) between runs. Podman runs with `runc` and the `cgroupfs` manager, and sets
no default ulimits: crun refuses this machine's cgroup layout and raising RLIMIT_NOFILE is
refused. That is set in a containers.conf of the test's own (CONTAINERS_CONF), never on the
machine. Builds get the host's pip settings, so they install from the same index it does.
"""
from __future__ import annotations

import configparser
import fcntl
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterable

SUITE = "bookworm"
BASE_IMAGE = f"localhost/jobfarm-test-base:{SUITE}"
BASE_PACKAGES = ("python3", "python3-venv", "tini", "ca-certificates")
CACHE = Path(os.environ.get("FARM_TEST_CACHE", "/var/cache/jobfarm-test"))
DEFAULT_MIRROR = "http://deb.debian.org/debian"
LABEL = "org.jobfarm.test=1"

CONTAINERS_CONF = """\
# the container tests' own podman settings (CONTAINERS_CONF), see tests/support/podman_helper.py
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""


class Podman:
    """`podman` with this machine's settings; every call has a timeout and is checked."""

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        conf = home / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.argv = [shutil.which("podman") or "podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]

    def __call__(self, *args: str, timeout: float = 120, check: bool = True,
                 stdin: int | None = None) -> subprocess.CompletedProcess[str]:
        cp = subprocess.run([*self.argv, *args], env=self.env, capture_output=True, text=True,
                            timeout=timeout, stdin=stdin)
        if check and cp.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} -> {cp.returncode}\n{cp.stdout[-4000:]}\n{cp.stderr[-4000:]}")
        return cp

    def exists(self, image: str) -> bool:
        return self("image", "exists", image, check=False).returncode == 0

    def size(self, image: str) -> int:
        return int(self("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())

    def build(self, context: Path, workdir: Path, *args: str, timeout: float = 900) -> str:
        """Build `context` (its Containerfile) with host networking; returns the image id."""
        iid = workdir / f"iid-{context.name}"
        self("build", "--network", "host", "--label", LABEL, "--iidfile", str(iid), *args, str(context),
             timeout=timeout)
        return iid.read_text().strip().removeprefix("sha256:")


def apt_mirror(sources: Iterable[Path] | None = None) -> str:
    """The Debian mirror this machine's apt uses for the suite (sources.list or deb822 files)."""
    if sources is None:
        sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
                if ("deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split()
                        and fields.get("Enabled", "yes").lower() != "no"):
                    return fields["URIs"].split()[0]
        elif path.suffix == ".list":
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line.split("#")[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    return DEFAULT_MIRROR


def ensure_base_image(podman: Podman, log: list[str]) -> str:
    """The Debian base image, made once: debootstrap into CACHE, then `podman import`.

    A lock keeps two test runs on this machine from making it at the same time; the tree
    is kept, so a machine whose image store was emptied only imports it again.
    """
    if podman.exists(BASE_IMAGE):
        return BASE_IMAGE
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if podman.exists(BASE_IMAGE):
            return BASE_IMAGE
        rootfs = CACHE / f"{SUITE}-rootfs"
        if not (CACHE / f"{SUITE}-rootfs.done").exists():
            _debootstrap(rootfs, log)
            (CACHE / f"{SUITE}-rootfs.done").write_text(",".join(BASE_PACKAGES) + "\n")
        _import(podman, rootfs)
        log.append(f"imported {rootfs} as {BASE_IMAGE}")
    return BASE_IMAGE


def _debootstrap(rootfs: Path, log: list[str]) -> None:
    if rootfs.exists():
        shutil.rmtree(rootfs)
    mirror = apt_mirror()
    log.append(f"debootstrap --variant=minbase {SUITE} from {mirror}")
    cp = subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES),
                         SUITE, str(rootfs), mirror], capture_output=True, text=True, timeout=1800)
    if cp.returncode != 0:
        raise AssertionError(f"debootstrap failed ({cp.returncode})\n{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}")
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (rootfs / leftover).glob("*"):
            if p.is_file() and p.name != "lock":
                p.unlink()


def _import(podman: Podman, rootfs: Path) -> None:
    """`tar -C ROOTFS -c . | podman import`, with the config a registry's base image has."""
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
    try:
        podman("import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["/bin/bash"]',
               "-", BASE_IMAGE, timeout=600, stdin=tar.stdout.fileno() if tar.stdout else None)
    finally:
        if tar.stdout:
            tar.stdout.close()
        tar.wait(60)


# --- the host's pip settings, for builds -------------------------------------------------

def pip_config_files() -> list[Path]:
    """pip's configuration files on this host, lowest priority first (as pip reads them)."""
    home = Path.home()
    xdg = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    files = [Path(d) / "pip" / "pip.conf" for d in reversed(xdg)] + [Path("/etc/pip.conf"),
             home / ".pip" / "pip.conf", Path(os.environ.get("XDG_CONFIG_HOME", home / ".config")) / "pip" / "pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE") and os.environ["PIP_CONFIG_FILE"] != os.devnull:
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return [f for f in files if f.is_file()]


def host_pip_settings() -> dict[str, str]:
    """The [global] and [install] settings pip uses here: its files, then its PIP_* variables."""
    parser = configparser.RawConfigParser()
    parser.read([str(f) for f in pip_config_files()])
    settings: dict[str, str] = {}
    for section in ("global", "install"):
        if parser.has_section(section):
            settings.update({k.replace("_", "-"): v for k, v in parser.items(section)})
    for key, value in os.environ.items():
        if key.startswith("PIP_") and key != "PIP_CONFIG_FILE":
            settings[key[4:].lower().replace("_", "-")] = value
    return settings


def pip_build_args(workdir: Path) -> list[str]:
    """`podman build` arguments giving a build the host's pip settings, read-only.

    Every local path the settings name (a CA bundle, find-links directories, a constraints
    file; a file:// index with its parent directory) is mounted under /mnt, which every Debian
    image already has, so the image keeps no trace of the mounts (a mount point the build had
    to make stays in the image); the build stage reads them through PIP_CONFIG_FILE.
    """
    mnt = workdir / "pip-mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    mounts: dict[str, str] = {}

    def mount(path: str) -> str:
        if path not in mounts:
            point = mnt / str(len(mounts))      # the mount point, made in the mounted directory
            if os.path.isdir(path):
                point.mkdir(exist_ok=True)
            else:
                point.touch()
            mounts[path] = f"/mnt/{point.name}"
        return mounts[path]

    def local(token: str) -> str:
        if token.startswith("file://"):         # an index: its parent too (simple/ links to ../files)
            path = token[len("file://"):].rstrip("/")
            if not path.startswith("/") or not os.path.isdir(path):
                return token
            return "file://" + mount(os.path.dirname(path)) + "/" + os.path.basename(path)
        return mount(token) if token.startswith("/") and os.path.exists(token) else token

    lines = ["[global]"]
    for key, value in sorted(host_pip_settings().items()):
        lines.append(f"{key} = " + " ".join(local(t) for t in value.split()))
    (mnt / "pip.conf").write_text("\n".join(lines) + "\n")
    args = ["--volume", f"{mnt}:/mnt:ro", "--build-arg", "PIP_CONFIG_FILE=/mnt/pip.conf"]
    for host_path, inside in mounts.items():
        args += ["--volume", f"{host_path}:{inside}:ro"]
    return args
