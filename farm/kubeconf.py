"""The manifest's `kubernetes:` section and the pipelines' `scale:`, read and checked.

`manifest._Builder` calls these with itself, so every problem carries its line. Names that
Kubernetes objects take from pipelines must be DNS-1123 labels (RFC 1123): a pipeline P
becomes the Deployment (or CronJob) `P` with `_` turned to `-`, and a name that still is no
label (a `.`, an upper-case letter, too long) is refused rather than mangled further, so two
pipelines can never end up as one object.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .manifest import Connection, Pipeline

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_MAX = 63
CRONJOB_MAX = 52            # Kubernetes refuses longer CronJob names (its Jobs add 11 characters)
SCHEDULER, DASHBOARD = "farm-scheduler", "farm-dashboard"
KEYS = {"dir", "image", "namespace", "env_secret", "config", "dashboard"}
SCALE_KEYS = {"min", "max", "per_worker"}
SCALABLE = ("postgresql", "mysql", "amqp", "redis")      # what a KEDA trigger can count


@dataclass(frozen=True)
class Kubernetes:
    dir: Path
    image: str
    namespace: str = "default"
    env_secret: str | None = None       # the Secret every pod takes its environment from (envFrom)
    config: str = "/app/conf/farm.yaml"   # the manifest's path inside the image
    dashboard: bool = False             # render farm-dashboard (Deployment and Service): opt-in


@dataclass(frozen=True)
class Scale:
    min: int = 0
    max: int = 1
    per_worker: int = 100               # ready jobs per replica (KEDA's target average)


def object_name(pipeline: str) -> str:
    """The Kubernetes name of a pipeline's Deployment, CronJob and ScaledObject."""
    return pipeline.replace("_", "-")


def queue_kind(conn: Connection) -> str:
    """What a scaler would count: postgresql, mysql, sqlite (from the URL's scheme, as it reads
    when the manifest is loaded), amqp, redis, sync, or `unknown`."""
    if conn.driver != "database":
        return conn.driver
    scheme = (conn.url or "").split("://", 1)[0].split("+", 1)[0].lower()
    return {"postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql", "mariadb": "mysql",
            "sqlite": "sqlite"}.get(scheme, "unknown")


def section(b: Any, value: Any) -> Kubernetes | None:
    """`kubernetes: {dir, image, namespace, env_secret, config, dashboard}`; `image` is required."""
    if value is None:
        return None
    if not isinstance(value, dict):
        b.r.problem("kubernetes", "expected a mapping such as {image: registry.example.com/app:1.4}")
        return None
    b._unknown(value, KEYS, "kubernetes")
    image = value.get("image")
    if image is None:
        b.r.problem("kubernetes.image", "a kubernetes: section needs image: the image its pods run "
                    "(such as registry.example.com/app:1.4)")
    elif not isinstance(image, str) or not image or re.search(r"\s", image):
        b.r.problem("kubernetes.image", f"expected an image reference such as registry.example.com/app:1.4, got {image!r}")
    namespace = value.get("namespace", "default")
    if not isinstance(namespace, str) or not _label(namespace):
        b.r.problem("kubernetes.namespace", f"expected a namespace name (lower-case letters, digits and -, "
                    f"at most {LABEL_MAX}), got {namespace!r}")
    secret = value.get("env_secret")
    if secret is not None and not (isinstance(secret, str) and len(secret) <= 253 and DNS_SUBDOMAIN.fullmatch(secret)):
        b.r.problem("kubernetes.env_secret", f"expected a Secret's name (lower-case letters, digits, - and .), got {secret!r}")
    config = value.get("config", "/app/conf/farm.yaml")
    if not isinstance(config, str) or not config.startswith("/") or re.search(r"[\x00-\x1f\x7f]", config):
        b.r.problem("kubernetes.config", f"expected the manifest's absolute path inside the image, got {config!r}")
    dashboard = value.get("dashboard", False)
    if isinstance(dashboard, str) and "kubernetes.dashboard" in b.r.substituted:    # ${DASHBOARD:-false}
        dashboard = {"true": True, "false": False}.get(dashboard.strip().lower(), dashboard)
    if not isinstance(dashboard, bool):
        b.r.problem("kubernetes.dashboard", f"expected true or false, got {dashboard!r}")
    return Kubernetes(dir=b._path(value.get("dir", "kubernetes")), image=str(image), namespace=str(namespace),
                      env_secret=secret if isinstance(secret, str) else None, config=str(config),
                      dashboard=dashboard is True)


def scale(b: Any, value: Any, key: str) -> Scale | None:
    """`scale: {min: 0, max: 20, per_worker: 100}`: whole numbers, min <= max, max >= 1."""
    if value is None:
        return None
    if not isinstance(value, dict):
        b.r.problem(key, "expected a mapping such as {min: 0, max: 20, per_worker: 100}")
        return None
    b._unknown(value, SCALE_KEYS, key)
    if "max" not in value:
        b.r.problem(f"{key}.max", "scale: needs max, the most replicas KEDA may run")
    low = b._number(value, key, "min", 0, integer=True)
    high = b._number(value, key, "max", 1, integer=True, minimum=1)
    per = b._number(value, key, "per_worker", 100, integer=True, minimum=1)
    if low > high:
        b.r.problem(f"{key}.min", f"min ({low}) is above max ({high})")
    return Scale(min=low, max=high, per_worker=per)


def check(b: Any, kube: Kubernetes | None, pipelines: dict[str, Pipeline],
          connections: dict[str, Connection]) -> None:
    """What only the whole manifest can tell: object names, and whether each scale: can work."""
    if kube is not None:
        _names(b, pipelines)
    for name, p in pipelines.items():
        if p.scale is not None:
            _scalable(b, kube, p, connections.get(p.connection), f"pipelines.{name}.scale")


def _names(b: Any, pipelines: dict[str, Pipeline]) -> None:
    seen: dict[str, str] = {}
    for name, p in pipelines.items():
        obj, key = object_name(name), f"pipelines.{name}"
        longest = CRONJOB_MAX if p.drain else LABEL_MAX
        if not _label(obj) or len(obj) > longest:
            b.r.problem(key, f"{name!r} cannot name a Kubernetes {'CronJob' if p.drain else 'Deployment'}: with _ "
                        f"as -, a name must be lower-case letters, digits and -, start and end with a letter or "
                        f"digit, and be at most {longest} characters")
        elif obj in (SCHEDULER, DASHBOARD):
            b.r.problem(key, f"{name!r} would be the Kubernetes object {obj}, which jobfarm renders itself")
        elif obj in seen:
            b.r.problem(key, f"{name!r} and {seen[obj]!r} would both be the Kubernetes object {obj}")
        seen.setdefault(obj, name)


def _scalable(b: Any, kube: Kubernetes | None, p: Pipeline, conn: Connection | None, key: str) -> None:
    if kube is None:
        b.r.problem(key, "scale: is for Kubernetes (a KEDA ScaledObject): add a kubernetes: section")
    elif kube.env_secret is None:
        b.r.problem(key, "scale: needs kubernetes.env_secret: KEDA reads the queue's connection from "
                    "the Secret's variables (see the README, Deploying on Kubernetes)")
    if p.drain is not None:
        b.r.problem(key, "a drain pipeline runs as a CronJob, which has no replicas to scale: drop scale: or drain:")
    if conn is None:
        return
    kind = queue_kind(conn)
    if kind == "sqlite":
        b.r.problem(key, f"connection {conn.name!r} is SQLite: pods cannot share a database file, and KEDA "
                    "cannot count its jobs; use PostgreSQL or MariaDB/MySQL (the URL is read as it is when "
                    "rendering: set its variable to the cluster's kind of URL)")
    elif kind not in SCALABLE:
        what = "an unknown database" if conn.driver == "database" else f"driver {conn.driver}"
        b.r.problem(key, f"connection {conn.name!r} ({what}) has no queue KEDA can count "
                    "(PostgreSQL, MariaDB/MySQL and amqp can be scaled)")


def _label(name: str) -> bool:
    return len(name) <= LABEL_MAX and DNS_LABEL.fullmatch(name) is not None
