"""Read `conf/farm.yaml` into frozen dataclasses, reporting every problem with its line."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import kubeconf, queuespec
from .errors import ManifestError
from .kubeconf import Kubernetes, Scale

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")      # every control character but tab
DRIVERS = ("database", "amqp", "redis", "sync", "async")


@dataclass(frozen=True)
class Connection:
    name: str
    driver: str
    url: str | None = None
    table: str = "jobs"
    failed_table: str | None = "failed_jobs"   # None (`failed_table: null`): failed jobs are not kept
    retry_after: float = 90.0
    store: str | None = None          # amqp, redis: the database connection holding failed jobs etc.
    prefetch: int | None = None       # amqp: unacked messages per worker
    heartbeat: int = 60               # amqp: broker heartbeat seconds
    consumer_timeout: float = 1800    # amqp: the broker's consumer_timeout (RabbitMQ's default, 30 min)
    queue_type: str = "classic"       # amqp: classic or quorum (replicated on a cluster)
    urls: tuple[str, ...] = ()        # amqp: brokers tried in turn (`url` alone: that one)
    prefix: str = "farm"              # redis: the first part of every key (`farm:{queue}:ready`)
    workers: int = 4                  # async: threads in the dispatching process that run its jobs


@dataclass(frozen=True)
class Pipeline:
    name: str
    connection: str
    queues: tuple[str, ...] = ("default",)    # the names, whatever the form (status, metrics, KEDA use them)
    weights: tuple[int, ...] = ()     # `queues:` as a mapping: one weight per name; (): strict priority order
    numprocs: int = 1
    max_jobs: int = 0
    max_time: float = 0
    memory: int = 128
    sleep: float = 3.0
    timeout: float | None = None
    tries: int | None = None
    backoff: tuple[float, ...] | None = None
    rest: float = 0.0
    prefetch: int | None = None
    concurrency: int = 1              # jobs each worker runs at once, on threads
    retention: float | None = None    # seconds its finished jobs stay visible as done (farmctl job)
    drain: str | None = None
    environment: tuple[tuple[str, str], ...] = ()
    user: str | None = None           # run its workers as this user (supervisord user=, systemd User=)
    group: str | None = None          # systemd Group= (supervisord takes the user's own group)
    stop_wait: float | None = None    # seconds a stop may wait for a job; default: longest timeout + 30
    scale: Scale | None = None        # Kubernetes: a KEDA ScaledObject scales its Deployment min..max
    env_templates: tuple[tuple[str, str], ...] = ()   # `environment:` values holding ${VAR}, as written

    @property
    def queue_args(self) -> list[str]:
        """Rendered worker commands name the weights of a weighted pipeline (`--queue a:6,b:3`),
        so a change of weights changes the program and `supervisorctl update` restarts it; a
        strict pipeline's command stays `--pipeline P` alone."""
        return ["--queue", queuespec.flag(self.queues, self.weights)] if self.weights else []


@dataclass(frozen=True)
class Manifest:
    path: Path
    root: Path
    imports: tuple[str, ...]
    default: str
    connections: dict[str, Connection]
    pipelines: dict[str, Pipeline]
    supervisor_dir: Path
    logs_dir: Path
    systemd_dir: Path
    schedule: dict[str, Any] = field(default_factory=dict)     # name -> farm.schedule.Entry
    variables: tuple[tuple[str, str], ...] = ()   # ${VAR}s the manifest took from the environment
    include: str | None = None        # the system supervisord's [include] glob: programs go there
    serverurl: str | None = None      # where status talks to supervisord (default: the local socket)
    user: str | None = None           # default user of every pipeline's workers
    group: str | None = None
    kubernetes: Kubernetes | None = None   # render Kubernetes objects too

    @property
    def programs_dir(self) -> Path:
        """Where program files go: the include glob's directory, else supervisor.dir/conf.d."""
        return Path(self.include).parent if self.include else self.supervisor_dir / "conf.d"

    @property
    def program_suffix(self) -> str:
        """`.conf`, or what the include glob asks for (`/etc/supervisord.d/*.ini`: `.ini`)."""
        return Path(self.include).name[1:] if self.include else ".conf"

    def user_of(self, p: Pipeline) -> tuple[str | None, str | None]:
        """The user (and group) a pipeline's workers run as; the pipeline's own wins."""
        return (p.user or self.user, p.group or self.group)

    def worker_environment(self, p: Pipeline) -> list[tuple[str, str]]:
        """What a rendered worker of `p` gets: FARM_CONFIG, the ${VAR}s as they were when it was
        rendered (supervisord, systemd and cron do not have the operator's shell), then the
        pipeline's `environment:`, which wins."""
        env = {"FARM_CONFIG": "", **dict(self.variables), **dict(p.environment)}
        env["FARM_CONFIG"] = str(self.path)
        return list(env.items())

    def connection(self, name: str | None = None) -> Connection:
        name = name or self.default
        try:
            return self.connections[name]
        except KeyError:
            known = ", ".join(sorted(self.connections))
            raise ManifestError(f"unknown connection {name!r} (known: {known})") from None

    def pipeline(self, name: str) -> Pipeline:
        try:
            return self.pipelines[name]
        except KeyError:
            known = ", ".join(sorted(self.pipelines)) or "none"
            raise ManifestError(f"unknown pipeline {name!r} (known: {known})") from None


def find_manifest(path: str | os.PathLike[str] | None = None) -> Path:
    """The manifest named, else $FARM_CONFIG, else ./conf/farm.yaml."""
    chosen = path or os.environ.get("FARM_CONFIG") or "conf/farm.yaml"
    return Path(chosen).absolute()


def project_root(manifest_path: Path) -> Path:
    """The directory above conf/ when the manifest sits in conf/, else its own directory."""
    parent = manifest_path.parent
    return parent.parent if parent.name == "conf" else parent


def load(path: str | os.PathLike[str] | None = None) -> Manifest:
    """Load and validate the manifest; raise one ManifestError listing every problem."""
    manifest_path = find_manifest(path)
    display = _display_name(manifest_path)
    try:
        text = manifest_path.read_text()
    except OSError as e:
        raise ManifestError(f"{display}: cannot read the manifest: {e.strerror or e}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise ManifestError(f"{display}:{line}: not valid YAML: {getattr(e, 'problem', e)}") from None
    reader = _Reader(display)
    doc = reader.value(node, "") if node is not None else {}
    manifest = _Builder(reader, manifest_path).build(doc, node)
    if reader.problems:
        raise ManifestError(reader.problems)
    return manifest


def env_value_problem(value: str) -> str | None:
    """Why `value` cannot reach a worker intact through the rendered files, or None if it can.

    systemd's Environment= and a cron line can quote anything on one line. supervisord's
    environment= cannot: its ini parser starts a comment at ` ;` or ` #`, it replaces
    `%(here)s` even when escaped as `%%(here)s`, and it splits the line with shlex in non-POSIX
    mode, where a quoted value runs to the next quote of its kind (no escapes) and every
    quote at either end of the value is stripped.
    """
    if _CONTROL.search(value):
        return "a line break or other control character cannot be rendered: a value is one line"
    if '"' in value and "'" in value:
        return "holds both ' and \": supervisord's environment= can quote a value with one kind only"
    if value and (value[0] in "'\"" or value[-1] in "'\""):
        return "starts or ends with a quote, which supervisord's environment= strips"
    if re.search(r"\s[;#]", value):
        return "has ; or # after a space, where supervisord's config parser starts a comment"
    if "%(here)s" in value:
        return "holds %(here)s, which supervisord replaces even when escaped"
    return None


def _display_name(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class _Reader:
    """Turns YAML nodes into plain values, remembering each key's line and the problems."""

    def __init__(self, display: str) -> None:
        self.display = display
        self.lines: dict[str, int] = {}
        self.problems: list[str] = []
        self.text: dict[str, str] = {}          # each scalar as written (after ${VAR} substitution)
        self.substituted: set[str] = set()      # plain scalars that held a ${VAR}: typed by their key
        self.used: dict[str, str] = {}           # ${VAR}s whose value came from the environment
        self.raw: dict[str, str] = {}            # scalars that hold a ${VAR}, as written

    def problem(self, key: str, message: str) -> None:
        """Record a problem at `key`'s line, or its nearest parent's when `key` is absent."""
        at = key
        line = self.lines.get(at)
        while line is None and "." in at:
            at = at.rsplit(".", 1)[0]
            line = self.lines.get(at)
        where = f"{self.display}:{line or 1}"
        self.problems.append(f"{where}: {key + ': ' if key else ''}{message}")

    def value(self, node: yaml.Node, key: str) -> Any:
        self.lines.setdefault(key, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                name = str(knode.value)
                child = f"{key}.{name}" if key else name
                self.lines[child] = knode.start_mark.line + 1
                if name in out and key.endswith(".queues"):    # YAML keeps the last silently
                    self.problem(key, f"queue {name!r} is listed twice")
                out[name] = self.value(vnode, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.value(v, f"{key}[{i}]") for i, v in enumerate(node.value)]
        return self._scalar(node, key)

    def _scalar(self, node: yaml.ScalarNode, key: str) -> Any:
        """A scalar's value; one holding ${VAR} stays text (the key decides if it is a number)."""
        if "${" not in node.value:
            self.text[key] = node.value
            try:
                return yaml.constructor.SafeConstructor().construct_object(node)
            except yaml.YAMLError as e:         # e.g. an unknown !!tag
                self.problem(key, f"not a valid value: {getattr(e, 'problem', None) or e}")
                return None
        self.raw[key] = node.value
        raw = _VAR.sub(lambda m: self._variable(m, key), node.value)
        self.text[key] = raw
        if node.style is None:      # plain: `numprocs: ${N:-2}` is read as a number by _number
            self.substituted.add(key)
            return raw if raw.strip() else None
        return raw

    def _variable(self, m: re.Match[str], key: str) -> str:
        """The value of one ${VAR} or ${VAR:-default}; an unset VAR without default is a problem."""
        name, default = m.group(1), m.group(2)
        val = os.environ.get(name)
        if val is None or (val == "" and default is not None):
            if default is None:
                self.problem(key, f"environment variable {name} is not set (use ${{{name}:-default}})")
                return ""
            return default
        self.used[name] = val
        return val


_CONNECTION_KEYS = {"driver", "url", "table", "failed_table", "retry_after", "store", "prefetch",
                    "heartbeat", "consumer_timeout", "prefix", "workers", "queue_type", "urls"}
QUEUE_TYPES = ("classic", "quorum")
_AMQP_SCHEMES = ("amqp://", "amqps://")
_REDIS_SCHEMES = ("redis://", "rediss://", "redis+sentinel://", "unix://")
_PIPELINE_KEYS = {"connection", "queues", "numprocs", "max_jobs", "max_time", "memory", "sleep",
                  "timeout", "tries", "backoff", "rest", "prefetch", "drain", "environment", "user", "group",
                  "stop_wait", "scale", "concurrency", "retention"}
_TOP_KEYS = {"imports", "default", "connections", "pipelines", "supervisor", "systemd", "schedule", "kubernetes"}


def _redis_url_ok(url: str) -> bool:
    """Ports and the database number are numbers (redis-py would fail on them at first use)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    if u.scheme == "unix":
        return bool(u.path)
    hosts = u.netloc.rpartition("@")[2].split(",")
    ports_ok = all(re.fullmatch(r"[^:]+(:\d{1,5})?", h) or re.fullmatch(r"\[[0-9a-fA-F:]+\](:\d{1,5})?", h)
                   for h in hosts)
    parts = u.path.strip("/").split("/") if u.path.strip("/") else []
    if u.scheme == "redis+sentinel":
        return ports_ok and 1 <= len(parts) <= 2 and (len(parts) == 1 or parts[1].isdigit())
    return ports_ok and len(hosts) == 1 and len(parts) <= 1 and all(p.isdigit() for p in parts)


class _Builder:
    def __init__(self, reader: _Reader, path: Path) -> None:
        self.r = reader
        self.path = path
        self.root = project_root(path)

    def build(self, doc: Any, node: Any) -> Manifest:
        if not isinstance(doc, dict):
            self.r.problem("", "expected a mapping at the top level")
            doc = {}
        self._unknown(doc, _TOP_KEYS, "")
        imports = self._str_list(doc.get("imports", []), "imports")
        connections = self._connections(doc.get("connections"))
        default = doc.get("default", next(iter(connections), "database"))
        if not isinstance(default, str) or default not in connections:
            self.r.problem("default", f"unknown connection {default!r} ({self._known(connections)})")
        pipelines = self._pipelines(doc.get("pipelines") or {}, connections, str(default))
        sup = self._section(doc.get("supervisor") or {}, "supervisor",
                            {"dir", "logs", "include", "serverurl", "user", "group"})
        sysd = self._section(doc.get("systemd") or {}, "systemd", {"dir"})
        schedule = self._schedule(doc.get("schedule"), connections, str(default), imports, pipelines)
        kube = kubeconf.section(self, doc.get("kubernetes") or {}) if "kubernetes" in doc else None
        kubeconf.check(self, kube, pipelines, connections)
        return Manifest(
            path=self.path, root=self.root, imports=tuple(imports), default=str(default),
            connections=connections, pipelines=pipelines,
            supervisor_dir=self._path(sup.get("dir", "supervisor")),
            logs_dir=self._path(sup.get("logs", "var/log")),
            systemd_dir=self._path(sysd.get("dir", "systemd")),
            schedule=schedule, variables=tuple(sorted(self.r.used.items())),
            include=self._include(sup.get("include")), serverurl=self._serverurl(sup.get("serverurl")),
            user=self._name(sup.get("user"), "supervisor.user"), group=self._name(sup.get("group"), "supervisor.group"),
            kubernetes=kube,
        )

    def _schedule(self, value: Any, connections: dict[str, Connection], default: str, imports: list[str],
                  pipelines: dict[str, Pipeline]) -> dict[str, Any]:
        """`schedule:` entries (farm.schedule.Entry), each checked; croniter is loaded only for one."""
        if value is None or value == {}:
            return {}
        from . import schedule

        return schedule.entries(self, value, connections, default, imports, pipelines)

    def _include(self, value: Any) -> str | None:
        """`/etc/supervisor/conf.d/*.conf`: a directory, then `*` and a file extension."""
        if value is None:
            return None
        glob = str(self._path(value))
        if not isinstance(value, str) or not re.fullmatch(r"\*\.[A-Za-z0-9]+", Path(glob).name) \
                or any(c in str(Path(glob).parent) for c in "*?["):
            self.r.problem("supervisor.include", f"expected the system supervisord's include glob, such as "
                           f"/etc/supervisor/conf.d/*.conf, got {value!r}")
            return None
        return glob

    def _serverurl(self, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not re.match(r"(unix://|https?://)", value):
            self.r.problem("supervisor.serverurl", f"expected unix:///path/to/supervisor.sock or "
                           f"http://host:port, got {value!r}")
            return None
        return value

    def _name(self, value: Any, key: str) -> str | None:
        """A user or group name as useradd allows it."""
        if value is None:
            return None
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", value):
            self.r.problem(key, f"expected a user or group name, got {value!r}")
            return None
        return value

    def _path(self, value: Any) -> Path:
        p = Path(str(value))
        return p if p.is_absolute() else self.root / p

    @staticmethod
    def _known(names: Any) -> str:
        return "known: " + (", ".join(sorted(names)) or "none")

    def _unknown(self, d: dict[str, Any], allowed: set[str], key: str) -> None:
        for name in d:
            if name not in allowed:
                where = f"{key}.{name}" if key else name
                self.r.problem(where, f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def _section(self, value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.r.problem(key, "expected a mapping")
            return {}
        self._unknown(value, allowed, key)
        return value

    def _str_list(self, value: Any, key: str) -> list[str]:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.r.problem(key, f"expected a list of names, got {value!r}")
            return []
        return value

    def _number(self, d: dict[str, Any], key: str, name: str, default: Any, *,
                integer: bool = False, minimum: float = 0, optional: bool = False) -> Any:
        value = d.get(name, default)
        if isinstance(value, str) and f"{key}.{name}" in self.r.substituted:
            value = _decimal(value, integer)
        if value is None and optional:
            return None
        kind = "integer" if integer else "number"
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if not ok or isinstance(value, bool) or value < minimum:
            adjective = "positive" if minimum > 0 else "non-negative"
            self.r.problem(f"{key}.{name}", f"expected a {adjective} {kind}, got {value!r}")
            return default
        return value

    def _connections(self, value: Any) -> dict[str, Connection]:
        if value is None:
            value = {"database": {"driver": "database", "url": "sqlite:///var/farm.db"}}
        if not isinstance(value, dict) or not value:
            self.r.problem("connections", "expected a mapping of connection names")
            return {}
        out: dict[str, Connection] = {}
        for name, spec in value.items():
            key = f"connections.{name}"
            if not isinstance(spec, dict):
                self.r.problem(key, "expected a mapping with a driver")
                continue
            self._unknown(spec, _CONNECTION_KEYS, key)
            driver = spec.get("driver")
            if driver not in DRIVERS:
                self.r.problem(f"{key}.driver", f"unknown driver {driver!r} (known: {', '.join(DRIVERS)})")
                continue
            url = spec.get("url")
            if driver == "database":
                url = self._database_url(url or "sqlite:///var/farm.db", f"{key}.url")
            elif driver == "amqp":
                url = self._amqp_url(spec, key)
            elif driver == "redis" and not (isinstance(url, str) and url.startswith(_REDIS_SCHEMES)
                                            and _redis_url_ok(url)):
                self.r.problem(f"{key}.url", "a redis connection needs a url: redis://[:password@]host:port/db, "
                               f"rediss://..., or redis+sentinel://host:port[,host:port]/service[/db], got {url!r}")
            prefix = spec.get("prefix", "farm")
            if not (isinstance(prefix, str) and re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", prefix)):
                self.r.problem(f"{key}.prefix", f"expected a key prefix of letters, digits, _ . : and -, got {prefix!r}")
            for tname in ("table", "failed_table"):
                t = spec.get(tname)
                if t is not None and not (isinstance(t, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,50}", t)):
                    self.r.problem(f"{key}.{tname}", f"expected a table name of letters, digits and _, got {t!r}")
            out[name] = Connection(
                name=name, driver=driver, url=url,
                table=spec.get("table") or "jobs",
                failed_table=(None if "failed_table" in spec and spec["failed_table"] is None   # null: keep none
                              else spec.get("failed_table") or "failed_jobs"),
                retry_after=self._number(spec, key, "retry_after", 90, minimum=1),
                store=spec.get("store"),
                prefetch=self._number(spec, key, "prefetch", None, integer=True, minimum=1, optional=True),
                heartbeat=self._number(spec, key, "heartbeat", 60, integer=True, minimum=0),
                consumer_timeout=self._number(spec, key, "consumer_timeout", 1800, minimum=1),
                prefix=str(prefix),
                workers=self._workers(spec, key, driver),
                queue_type=self._queue_type(spec, key, driver),
                urls=self._amqp_urls(spec, key, driver),
            )
        for conn in out.values():
            self._store(conn, out)
        return out

    def _amqp_url(self, spec: dict[str, Any], key: str) -> str | None:
        """An amqp connection names its broker with `url`, or its brokers with `urls` (tried in
        turn, for failover): exactly one of them. With `urls`, `url` is the first of the list."""
        url, urls = spec.get("url"), spec.get("urls")
        if url is not None and urls is not None:
            self.r.problem(f"{key}.urls", "give either url (one broker) or urls (brokers tried in turn), not both")
        elif urls is not None:
            return urls[0] if isinstance(urls, list) and urls and isinstance(urls[0], str) else None
        elif not isinstance(url, str):
            self.r.problem(f"{key}.url", "an amqp connection needs a url (amqp://user:pass@host:port/vhost) "
                           "or urls (a list of them, tried in turn)")
        return url if isinstance(url, str) else None

    def _amqp_urls(self, spec: dict[str, Any], key: str, driver: str) -> tuple[str, ...]:
        """`urls:` as a tuple; () when the connection has a single `url`."""
        if "urls" not in spec:
            return ()
        urls = spec["urls"]
        if driver != "amqp":
            self.r.problem(f"{key}.urls", "only an amqp connection takes a list of urls")
            return ()
        if not isinstance(urls, list) or not urls:
            self.r.problem(f"{key}.urls", f"expected a list of amqp:// urls, tried in turn, got {urls!r}")
            return ()
        for i, u in enumerate(urls):
            if not (isinstance(u, str) and u.startswith(_AMQP_SCHEMES)):
                self.r.problem(f"{key}.urls[{i}]", f"expected an amqp:// or amqps:// url, got {u!r}")
        return tuple(u for u in urls if isinstance(u, str))

    def _queue_type(self, spec: dict[str, Any], key: str, driver: str) -> str:
        """`queue_type:` classic (the default) or quorum, for amqp connections only."""
        if "queue_type" not in spec:
            return "classic"
        value = spec["queue_type"]
        if driver != "amqp":
            self.r.problem(f"{key}.queue_type", "only an amqp connection has a queue_type")
        elif value not in QUEUE_TYPES:
            self.r.problem(f"{key}.queue_type", f"expected classic or quorum, got {value!r}")
        else:
            return str(value)
        return "classic"

    def _workers(self, spec: dict[str, Any], key: str, driver: str) -> int:
        """`workers:` is the async driver's pool size; other drivers' workers are pipelines."""
        if "workers" in spec and driver != "async":
            self.r.problem(f"{key}.workers", "only an async connection has a pool of workers "
                           "(farmctl work processes come from pipelines: numprocs, concurrency)")
            return 4
        return self._number(spec, key, "workers", 4, integer=True, minimum=1)

    def _store(self, conn: Connection, connections: dict[str, Connection]) -> None:
        """amqp has no place for failed jobs, stamps and heartbeats: a database connection keeps them."""
        key = f"connections.{conn.name}.store"
        databases = [n for n, c in connections.items() if c.driver == "database"]
        if conn.store is None:
            if conn.driver == "amqp":
                self.r.problem(key, "an amqp connection needs a store: the database connection that keeps "
                               f"failed jobs, restart stamps and heartbeats ({self._known(databases)})")
        elif not isinstance(conn.store, str) or conn.store not in databases:
            self.r.problem(key, f"{conn.store!r} is not a database connection ({self._known(connections)})")

    def _database_url(self, url: Any, key: str) -> str | None:
        if not isinstance(url, str) or "://" not in url:
            self.r.problem(key, f"expected an SQLAlchemy URL such as sqlite:///var/farm.db, got {url!r}")
            return None
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            url = prefix + str(self.root / url[len(prefix):])
        return url

    def _pipelines(self, value: Any, connections: dict[str, Connection], default: str) -> dict[str, Pipeline]:
        if not isinstance(value, dict):
            self.r.problem("pipelines", "expected a mapping of pipeline names")
            return {}
        out: dict[str, Pipeline] = {}
        for name, spec in value.items():
            key = f"pipelines.{name}"
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", str(name)):
                self.r.problem(key, "a pipeline name may hold letters, digits, _, . and - only")
            if not isinstance(spec, dict):
                self.r.problem(key, "expected a mapping")
                continue
            self._unknown(spec, _PIPELINE_KEYS, key)
            conn = spec.get("connection", default)
            if not isinstance(conn, str) or conn not in connections:
                self.r.problem(f"{key}.connection", f"unknown connection {conn!r} ({self._known(connections)})")
            drain = spec.get("drain")
            if drain is not None and not _valid_cron(drain):
                self.r.problem(f"{key}.drain", f"not a five-field cron expression: {drain!r}")
            timeout = self._number(spec, key, "timeout", None, minimum=1, optional=True)
            self._amqp_timeout(key, timeout, connections.get(str(conn)))
            queues, weights = self._queues(spec.get("queues", ["default"]), f"{key}.queues")
            out[name] = Pipeline(
                name=name, connection=str(conn), queues=queues, weights=weights,
                numprocs=self._number(spec, key, "numprocs", 1, integer=True, minimum=1),
                max_jobs=self._number(spec, key, "max_jobs", 0, integer=True),
                max_time=self._number(spec, key, "max_time", 0),
                memory=self._number(spec, key, "memory", 128, integer=True),
                sleep=self._number(spec, key, "sleep", 3),
                timeout=timeout,
                tries=self._number(spec, key, "tries", None, integer=True, minimum=0, optional=True),   # 0: unlimited
                backoff=self._backoff(spec.get("backoff"), f"{key}.backoff"),
                rest=self._number(spec, key, "rest", 0),
                prefetch=self._number(spec, key, "prefetch", None, integer=True, minimum=1, optional=True),
                concurrency=self._number(spec, key, "concurrency", 1, integer=True, minimum=1),
                retention=self._number(spec, key, "retention", None, minimum=1, optional=True),
                drain=drain,
                environment=self._environment(spec.get("environment"), f"{key}.environment"),
                user=self._name(spec.get("user"), f"{key}.user"),
                group=self._name(spec.get("group"), f"{key}.group"),
                stop_wait=self._number(spec, key, "stop_wait", None, minimum=1, optional=True),
                scale=kubeconf.scale(self, spec.get("scale"), f"{key}.scale"),
                env_templates=self._templates(spec.get("environment"), f"{key}.environment"),
            )
        return out

    def _queues(self, value: Any, key: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """A list of names (strict priority) or a mapping of name to positive integer weight."""
        if isinstance(value, dict):         # a weight given as ${VAR}: a number once substituted
            value = {k: _decimal(v, True) if isinstance(v, str) and f"{key}.{k}" in self.r.substituted else v
                     for k, v in value.items()}
        try:
            return queuespec.from_manifest(value)
        except ValueError as e:
            self.r.problem(key, str(e))
            return ("default",), ()

    def _amqp_timeout(self, key: str, timeout: float | None, c: Connection | None) -> None:
        """RabbitMQ takes back a job unacked past its consumer_timeout, so a job must end sooner."""
        if c is None or c.driver != "amqp" or timeout is None or timeout + 30 < c.consumer_timeout:
            return
        self.r.problem(f"{key}.timeout", f"{timeout:g} s (plus a 30 s margin) is not below RabbitMQ's "
                       f"consumer_timeout of {c.consumer_timeout:g} s: the broker would take the job "
                       "back while it runs; raise consumer_timeout in rabbitmq.conf and set "
                       f"connections.{c.name}.consumer_timeout to match")

    def _environment(self, value: Any, key: str) -> tuple[tuple[str, str], ...]:
        """NAME: value pairs as written (`yes` stays `yes`), each one renderable into every file."""
        if value is None:
            return ()
        if not isinstance(value, dict):
            self.r.problem(key, "expected a mapping of NAME: value")
            return ()
        out = []
        for name, v in value.items():
            where = f"{key}.{name}"
            if isinstance(v, (dict, list)):
                self.r.problem(where, "expected a string")
                continue
            text = "" if v is None else self.r.text.get(where, str(v))
            problem = None if _ENV_NAME.fullmatch(name) else \
                "not a variable name (letters, digits and _, not starting with a digit)"
            problem = problem or env_value_problem(text)
            if problem:
                self.r.problem(where, problem)
            out.append((name, text))
        return tuple(sorted(out))

    def _templates(self, value: Any, key: str) -> tuple[tuple[str, str], ...]:
        """The `environment:` values that held a ${VAR}, as written (Kubernetes resolves them in the pod)."""
        names = value if isinstance(value, dict) else {}
        return tuple(sorted((n, self.r.raw[f"{key}.{n}"]) for n in names if f"{key}.{n}" in self.r.raw))

    def _backoff(self, value: Any, key: str) -> tuple[float, ...] | None:
        if value is None:
            return None
        try:
            return parse_backoff(value)
        except ValueError as e:
            self.r.problem(key, str(e))
            return None


def parse_backoff(value: Any) -> tuple[float, ...]:
    """`5`, `"1,5,10"` or `[1, 5, 10]` -> (1.0, 5.0, 10.0)."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
    try:
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise ValueError(f"expected seconds or a list of seconds, got {value!r}") from None
    if not out or any(v < 0 for v in out) or any(isinstance(v, bool) for v in items):
        raise ValueError(f"expected seconds or a list of seconds, got {value!r}")
    return out


def _decimal(text: str, integer: bool) -> int | float | str:
    """A substituted `${VAR}` read as a decimal number (`0123` is 123), else the text unchanged."""
    if re.fullmatch(r"[+-]?[0-9]+", text.strip()):
        return int(text)
    if not integer and re.fullmatch(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+)", text.strip()):
        return float(text)
    return text


def _valid_cron(expr: Any) -> bool:
    from croniter import croniter

    return isinstance(expr, str) and len(expr.split()) == 5 and croniter.is_valid(expr)
