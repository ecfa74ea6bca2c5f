"""Kubernetes objects from the manifest (#23): Deployments, drains as CronJobs, the scheduler and
dashboard, KEDA ScaledObjects; golden files under tests/golden/kubernetes (FARM_REGOLD=1 rewrites
them). Validated offline: kubernetes-validate's schemas for the Kubernetes kinds, and KEDA's
documented trigger fields for the ScaledObjects (no cluster is reachable here)."""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import stat
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml

from farm import manifest, render
from farm.kubeconf import Scale
from farm.manifest import Connection, Pipeline

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "kubernetes"
EXPECTED = GOLDEN / "expected"
FARMCTL = "/opt/farm/bin/farmctl"
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
PG = "postgresql+psycopg://farm@db.internal/farm"

# KEDA's documented fields (keda.sh/docs/2.21: reference/scaledobject-spec and scalers/postgresql,
# mysql, rabbitmq-queue, redis-lists): what a ScaledObject may say, and what each trigger needs.
SCALEDOBJECT_SPEC = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
                     "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"}
SCALE_TARGET_REF = {"apiVersion", "kind", "name", "envSourceContainerName"}
TRIGGER = {"type", "metadata", "name", "useCachedMetrics", "authenticationRef", "metricType"}
TRIGGER_FIELDS = {
    "postgresql": {"connectionFromEnv", "host", "userName", "passwordFromEnv", "port", "dbName", "sslmode",
                   "query", "targetQueryValue", "activationTargetQueryValue"},
    "mysql": {"query", "queryValue", "activationQueryValue", "connectionStringFromEnv", "host", "port", "dbName",
              "username", "passwordFromEnv", "hostFromEnv", "portFromEnv", "usernameFromEnv"},
    "rabbitmq": {"host", "protocol", "mode", "value", "activationValue", "queueName", "vhostName", "queueLength",
                 "useRegex", "pageSize", "operation", "timeout", "excludeUnacknowledged", "unsafeSsl",
                 "hostFromEnv", "usernameFromEnv", "passwordFromEnv"},
    "redis": {"address", "host", "port", "usernameFromEnv", "passwordFromEnv", "listName", "listLength",
              "activationListLength", "enableTLS", "unsafeSsl", "databaseIndex", "addressFromEnv",
              "hostFromEnv", "portFromEnv"},
}
TRIGGER_REQUIRED = {      # what the trigger needs, and the field that names the connection's variable
    "postgresql": ({"query", "targetQueryValue"}, "connectionFromEnv"),
    "mysql": ({"query", "queryValue"}, "connectionStringFromEnv"),
    "rabbitmq": ({"mode", "value", "queueName"}, "hostFromEnv"),
    "redis": ({"listName", "listLength"}, "addressFromEnv"),
}
RABBITMQ_MODES = {"QueueLength", "MessageRate", "DeliverGetRate", "PublishedToDeliveredRatio",
                  "ExpectedQueueConsumptionTime"}


@pytest.fixture
def project(tmp_path):
    (tmp_path / "conf").mkdir()
    shutil.copy(GOLDEN / "manifest.yaml", tmp_path / "conf" / "farm.yaml")
    return tmp_path


def _manifest(tmp_path: Path, body: str, jobs: str = "") -> Path:
    """A project on PostgreSQL with `body` after its connections (and a jobs module of its own)."""
    module = "kubejobs_" + uuid.uuid4().hex[:8]
    (tmp_path / "conf").mkdir(parents=True, exist_ok=True)
    (tmp_path / f"{module}.py").write_text("import farm\n" + jobs)
    path = tmp_path / "conf" / "farm.yaml"
    path.write_text(f"imports: [{module}]\nconnections:\n  main: {{driver: database, url: '{PG}'}}\n"
                    + textwrap.dedent(body))
    return path


def _kube(m: manifest.Manifest) -> dict[str, str]:
    """The rendered Kubernetes files by name, the project root as {ROOT}."""
    assert m.kubernetes is not None
    return {p.name: t.replace(str(m.root), "{ROOT}") for p, t in render.render(m, FARMCTL).items()
            if p.parent == m.kubernetes.dir}


def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def _objects(files: dict[str, str]) -> list[dict]:
    return [d for name in sorted(files) for d in _docs(files[name])]


def _regold(files: dict[str, str]) -> None:
    if os.environ.get("FARM_REGOLD"):
        EXPECTED.mkdir(exist_ok=True)
        for name, text in files.items():
            (EXPECTED / name).write_text(text)


def _redis_manifest(m: manifest.Manifest) -> manifest.Manifest:
    """The golden manifest plus a pipeline on a redis connection (the driver of issue 18 is not
    there yet, so no manifest can name one: the trigger is rendered from the dataclasses)."""
    cache = Connection(name="cache", driver="redis", url="rediss://cache.internal:6380/0")
    worker = Pipeline(name="redis_worker", connection="cache", queues=("mail", "sms"), memory=128,
                      scale=Scale(min=0, max=10, per_worker=50))
    return dataclasses.replace(m, connections={**m.connections, "cache": cache},
                               pipelines={**m.pipelines, "redis_worker": worker})


# Golden files ------------------------------------------------------------------------------

def test_rendered_kubernetes_files_match_the_golden_files_byte_for_byte(project):
    # Given the golden manifest (PostgreSQL, MariaDB and amqp pipelines with scale:, a plain
    # pipeline, a drain, a schedule and the dashboard)
    m = manifest.load(project / "conf" / "farm.yaml")
    # When it is rendered, with a redis pipeline added for the provisional redis trigger
    files = _kube(_redis_manifest(m))
    _regold(files)
    # Then every Kubernetes file is the golden one, byte for byte, one per trigger among them
    expected = {p.name: p.read_text() for p in EXPECTED.iterdir()}
    assert sorted(files) == sorted(expected)
    for name in files:
        assert files[name] == expected[name], name
    triggers = {name: {t["type"] for d in _docs(text) if d["kind"] == "ScaledObject" for t in d["spec"]["triggers"]}
                for name, text in files.items()}
    assert triggers["email_worker.yaml"] == {"postgresql"} and triggers["payments.yaml"] == {"mysql"}
    assert triggers["rabbit_worker.yaml"] == {"rabbitmq"} and triggers["redis_worker.yaml"] == {"redis"}


def test_rendering_twice_gives_the_same_bytes_and_world_readable_kubernetes_files(project):
    # Given the golden manifest rendered once
    m = manifest.load(project / "conf" / "farm.yaml")
    first = render.plan(m, FARMCTL)
    render.apply(m, first)
    # When it is rendered again
    again = render.plan(m, FARMCTL)
    # Then nothing changes, and the Kubernetes files are 0644 (they hold no secret)
    assert not again.changed
    kube = sorted((project / "kubernetes").iterdir())
    assert [p.name for p in kube] == ["email_worker.yaml", "farm-dashboard.yaml", "farm-scheduler.yaml",
                                      "invoices.yaml", "payments.yaml", "rabbit_worker.yaml", "reports.yaml"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in kube} == {0o644}
    assert all(p.read_text().startswith(f"# Rendered by farmctl render from {m.path};") for p in kube)


# Offline validation ------------------------------------------------------------------------

def test_every_kubernetes_object_validates_against_the_schemas_of_recent_kubernetes_versions(project):
    import kubernetes_validate
    from kubernetes_validate import utils

    # Given every object the golden manifest renders
    m = manifest.load(project / "conf" / "farm.yaml")
    objects = _objects(_kube(_redis_manifest(m)))
    kinds = {d["kind"] for d in objects}
    assert kinds == {"Deployment", "CronJob", "Service", "ScaledObject"}
    # When the Kubernetes kinds are checked against the schemas the package ships (strict:
    # an unknown field is an error), at the newest version it has and at 1.30
    latest = utils.major_minor(utils.latest_version())
    for version in (latest, "1.30"):
        for obj in objects:
            if obj["kind"] != "ScaledObject":
                # Then each is valid (validate raises otherwise)
                assert kubernetes_validate.validate(obj, version, strict=True) == version
    # And every name is a DNS-1123 label, every object in the manifest's namespace
    for obj in objects:
        assert DNS_LABEL.fullmatch(obj["metadata"]["name"]) and len(obj["metadata"]["name"]) <= 63
        assert obj["metadata"]["namespace"] == "shop"


def test_each_keda_trigger_uses_only_the_fields_keda_documents_and_finds_its_connection(project):
    # Given the ScaledObjects of every trigger kind, and the Deployments they scale
    m = _redis_manifest(manifest.load(project / "conf" / "farm.yaml"))
    objects = _objects(_kube(m))
    deployments = {d["metadata"]["name"]: d for d in objects if d["kind"] == "Deployment"}
    scaled = [d for d in objects if d["kind"] == "ScaledObject"]
    assert len(scaled) == 4
    for so in scaled:
        # Then the ScaledObject says only what KEDA's specification has
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        spec = so["spec"]
        assert set(spec) <= SCALEDOBJECT_SPEC and set(spec["scaleTargetRef"]) <= SCALE_TARGET_REF
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        # And it targets a Deployment of the same name and namespace, whose first container
        # takes env_secret (where KEDA reads the connection variable)
        target = deployments[spec["scaleTargetRef"]["name"]]
        assert target["metadata"]["namespace"] == so["metadata"]["namespace"]
        container = target["spec"]["template"]["spec"]["containers"][0]
        assert container["envFrom"] == [{"secretRef": {"name": "farm-env"}}]
        for trigger in spec["triggers"]:
            kind, meta = trigger["type"], trigger["metadata"]
            required, connection = TRIGGER_REQUIRED[kind]
            # And each trigger's metadata is documented fields only, all strings (a map of strings)
            assert set(trigger) <= TRIGGER and set(meta) <= TRIGGER_FIELDS[kind], kind
            assert required | {connection} <= set(meta), kind
            assert all(isinstance(v, str) for v in meta.values()), kind
            assert re.fullmatch(r"FARM_SCALER_[A-Z0-9_]+", meta[connection])
            if kind == "rabbitmq":
                assert meta["mode"] in RABBITMQ_MODES and meta["protocol"] in {"auto", "amqp", "http"}
            if kind == "redis":
                assert meta["enableTLS"] in {"true", "false"}


def test_the_ready_count_queries_count_the_pipelines_queues_by_available_at(project):
    # Given the PostgreSQL and MariaDB pipelines with scale:
    objects = _objects(_kube(manifest.load(project / "conf" / "farm.yaml")))
    meta = {t["type"]: t["metadata"] for d in objects if d["kind"] == "ScaledObject" for t in d["spec"]["triggers"]}
    # Then each query counts its own table's jobs of the pipeline's queues that a worker could claim now
    assert meta["postgresql"]["query"] == ("SELECT COUNT(*) FROM jobs WHERE queue IN ('emails', 'o''hare') "
                                           "AND available_at <= extract(epoch from now())")
    assert meta["postgresql"]["targetQueryValue"] == "100"
    assert meta["mysql"]["query"] == ("SELECT COUNT(*) FROM ledger_jobs WHERE queue IN ('payments') "
                                      "AND available_at <= UNIX_TIMESTAMP()")
    assert meta["mysql"]["queryValue"] == "10"
    assert meta["mysql"]["connectionStringFromEnv"] == "FARM_SCALER_LEDGER"


# What the objects say ---------------------------------------------------------------------

def test_a_deployment_runs_numprocs_workers_with_the_supervisord_stop_window_as_grace(tmp_path):
    # Given a pipeline whose jobs module has a job with a 180 s timeout, and one with stop_wait
    path = _manifest(tmp_path, """\
        pipelines:
          mail: {queues: [mail, default], numprocs: 3, timeout: 60, memory: 256}
          fixed: {stop_wait: 500}
        kubernetes: {image: app:1}
        """, jobs="class Long(farm.Job):\n    timeout = 180\n    def handle(self): pass\n")
    m = manifest.load(path)
    files = render.render(m, FARMCTL)
    # When its Deployment is read
    (deploy,) = _docs(files[tmp_path / "kubernetes" / "mail.yaml"])
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # Then it runs numprocs replicas of farmctl work for the pipeline, given the same stop
    # window as supervisord's stopwaitsecs, with memory: plus headroom as its limit
    assert deploy["spec"]["replicas"] == 3
    assert container["args"] == ["work", "--config", "/app/conf/farm.yaml", "--pipeline", "mail"]
    assert "stopwaitsecs=210" in files[tmp_path / "supervisor" / "conf.d" / "mail.conf"]
    assert pod["terminationGracePeriodSeconds"] == 210
    assert pod["securityContext"] == {"runAsNonRoot": True}      # the image's user is uid 10001
    assert container["resources"] == {"requests": {"memory": "256Mi"}, "limits": {"memory": "320Mi"}}
    assert container["image"] == "app:1" and "envFrom" not in container
    assert deploy["metadata"]["labels"] == {"app.kubernetes.io/name": "jobfarm",
                                            "app.kubernetes.io/component": "worker", "jobfarm/pipeline": "mail"}
    assert deploy["metadata"]["namespace"] == "default"
    (fixed,) = _docs(files[tmp_path / "kubernetes" / "fixed.yaml"])
    assert fixed["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 500


def test_the_memory_limit_is_memory_plus_a_quarter_and_at_least_64_mib():
    from farm.render.kubernetes import memory_limit

    assert [memory_limit(mb) for mb in (64, 128, 256, 257, 1024)] == [128, 192, 320, 321, 1280]


def test_a_scaled_deployment_leaves_its_replicas_to_keda(project):
    # Given the golden manifest, where email_worker has scale: and invoices has not
    files = _kube(manifest.load(project / "conf" / "farm.yaml"))
    deploy, scaled = _docs(files["email_worker.yaml"])
    (plain,) = _docs(files["invoices.yaml"])
    # Then the scaled Deployment names no replicas (kubectl apply would undo KEDA's scaling)
    assert "replicas" not in deploy["spec"] and plain["spec"]["replicas"] == 3
    assert scaled["spec"]["minReplicaCount"] == 0 and scaled["spec"]["maxReplicaCount"] == 20
    assert scaled["spec"]["scaleTargetRef"] == {"name": "email-worker"}


def test_pods_take_variables_from_the_secret_never_from_the_render_machine(tmp_path, monkeypatch):
    # Given variables set where render runs, used by the connection and by the environment
    monkeypatch.setenv("KUBE_DB_PASSWORD", "s3cret-db")
    monkeypatch.setenv("KUBE_API_HOST", "api.render-machine")
    path = _manifest(tmp_path, """\
        pipelines:
          mail:
            connection: db
            environment:
              API: "https://${KUBE_API_HOST}/v1"
              TOKEN: ${KUBE_TOKEN:-dev-token}
              PRICE: "$(5) and $$"
        kubernetes: {image: app:1, env_secret: farm-env, config: /srv/app/farm.yaml}
        """)
    path.write_text(path.read_text().replace(
        "connections:\n", "connections:\n  db: {driver: database, url: 'postgresql://farm:${KUBE_DB_PASSWORD}@db/farm'}\n"))
    m = manifest.load(path)
    files = render.render(m, FARMCTL)
    kube = files[tmp_path / "kubernetes" / "mail.yaml"]
    # Then no value from the render machine's environment is in the Kubernetes file
    assert "s3cret-db" not in kube and "api.render-machine" not in kube and "dev-token" not in kube
    assert "api.render-machine" in files[tmp_path / "supervisor" / "conf.d" / "mail.conf"]
    # And the pod reads them from env_secret: ${VAR} became $(VAR), a literal $( is escaped
    (container,) = _docs(kube)[0]["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "farm-env"}}]
    assert container["env"] == [{"name": "FARM_CONFIG", "value": "/srv/app/farm.yaml"},
                                {"name": "API", "value": "https://$(KUBE_API_HOST)/v1"},
                                {"name": "PRICE", "value": "$$(5) and $$$"},
                                {"name": "TOKEN", "value": "$(KUBE_TOKEN)"},
                                {"name": "FARM_STOP_WINDOW", "value": "90"}]
    assert container["args"][:3] == ["work", "--config", "/srv/app/farm.yaml"]


def test_a_drain_becomes_a_cronjob_that_never_overlaps_and_stops_when_empty(project):
    files = _kube(manifest.load(project / "conf" / "farm.yaml"))
    (cron,) = _docs(files["reports.yaml"])
    assert cron["apiVersion"] == "batch/v1" and cron["kind"] == "CronJob"
    assert cron["spec"]["schedule"] == "*/10 * * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] == 90
    assert pod["containers"][0]["args"] == ["work", "--config", "/app/conf/farm.yaml", "--pipeline", "reports",
                                            "--stop-when-empty"]


def test_the_scheduler_renders_with_a_schedule_and_the_dashboard_only_when_asked(tmp_path):
    # Given a manifest with no schedule and no dashboard: true
    path = _manifest(tmp_path, "pipelines:\n  mail: {}\nkubernetes: {image: app:1}\n")
    assert sorted(p.name for p in _kube_paths(path)) == ["mail.yaml"]
    # When a schedule and dashboard: true are added
    module = path.read_text().split("[", 1)[1].split("]", 1)[0]       # a schedule's job is in imports:
    path.write_text(path.read_text().replace("kubernetes: {image: app:1}", "kubernetes: {image: app:1, dashboard: true}")
                    + f"schedule:\n  tick: {{cron: '@every 30s', job: '{module}:Ping'}}\n")
    files = {p.name: t for p, t in render.render(manifest.load(path), FARMCTL).items() if p.parent.name == "kubernetes"}
    # Then farm-scheduler (one replica) and farm-dashboard (a Deployment and Service on 8085) appear
    assert sorted(files) == ["farm-dashboard.yaml", "farm-scheduler.yaml", "mail.yaml"]
    (sched,) = _docs(files["farm-scheduler.yaml"])
    assert sched["spec"]["replicas"] == 1
    assert sched["spec"]["template"]["spec"]["containers"][0]["args"] == ["schedule", "--config", "/app/conf/farm.yaml"]
    deploy, service = _docs(files["farm-dashboard.yaml"])
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["dashboard", "--config", "/app/conf/farm.yaml", "--host", "0.0.0.0", "--port", "8085"]
    assert container["ports"] == [{"name": "http", "containerPort": 8085}]
    assert service["kind"] == "Service" and service["spec"]["ports"][0]["port"] == 8085
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]


def _kube_paths(path: Path) -> list[Path]:
    m = manifest.load(path)
    return [p for p in render.render(m, FARMCTL) if p.parent == m.kubernetes.dir]


def test_a_removed_pipelines_file_is_removed_and_files_without_the_header_stay(project):
    # Given a rendered project and a hand-written file in the kubernetes directory
    conf = project / "conf" / "farm.yaml"
    m = manifest.load(conf)
    render.apply(m, render.plan(m, FARMCTL))
    handmade = project / "kubernetes" / "ingress.yaml"
    handmade.write_text("apiVersion: networking.k8s.io/v1\nkind: Ingress\n")
    # When a pipeline is removed from the manifest
    conf.write_text(conf.read_text().replace("  invoices:\n", "  bills:\n"))
    m = manifest.load(conf)
    p = render.plan(m, FARMCTL)
    render.apply(m, p)
    # Then its file goes, the new one comes, and the hand-written file stays
    assert project / "kubernetes" / "invoices.yaml" in p.remove
    assert not (project / "kubernetes" / "invoices.yaml").exists()
    assert (project / "kubernetes" / "bills.yaml").exists() and handmade.exists()
    # And when the kubernetes: section goes, every file it wrote goes with it
    kept = conf.read_text().split("kubernetes:\n")[0].splitlines(keepends=True)
    conf.write_text("".join(line for line in kept if "scale:" not in line))
    m = manifest.load(conf)
    render.apply(m, render.plan(m, FARMCTL))
    assert [f.name for f in (project / "kubernetes").iterdir()] == ["ingress.yaml"]


# Bad input --------------------------------------------------------------------------------

BAD = {
    "no image": ("pipelines:\n  mail: {}\nkubernetes:\n  namespace: shop\n",
                 "6: kubernetes.image: a kubernetes: section needs image:"),
    "a name that is no DNS label": ("pipelines:\n  Mail.Worker: {}\nkubernetes: {image: app:1}\n",
                                    "5: pipelines.Mail.Worker: 'Mail.Worker' cannot name a Kubernetes Deployment"),
    "min above max": ("pipelines:\n  mail:\n    scale:\n      min: 5\n      max: 2\n"
                      "kubernetes: {image: app:1, env_secret: env}\n",
                      "7: pipelines.mail.scale.min: min (5) is above max (2)"),
    "a fraction": ("pipelines:\n  mail:\n    scale:\n      max: 2.5\nkubernetes: {image: app:1, env_secret: env}\n",
                   "7: pipelines.mail.scale.max: expected a positive integer, got 2.5"),
    "a negative": ("pipelines:\n  mail:\n    scale:\n      min: -1\n      max: 2\n"
                   "kubernetes: {image: app:1, env_secret: env}\n",
                   "7: pipelines.mail.scale.min: expected a non-negative integer, got -1"),
    "an unknown scale key": ("pipelines:\n  mail:\n    scale:\n      max: 2\n      step: 1\n"
                             "kubernetes: {image: app:1, env_secret: env}\n",
                             "8: pipelines.mail.scale.step: unknown key (expected one of: max, min, per_worker)"),
    "no max": ("pipelines:\n  mail:\n    scale: {min: 1}\nkubernetes: {image: app:1, env_secret: env}\n",
               "6: pipelines.mail.scale.max: scale: needs max"),
    "scale on SQLite": ("  lite: {driver: database, url: 'sqlite:///var/f.db'}\npipelines:\n  mail:\n    connection: lite\n"
                        "    scale: {max: 2}\nkubernetes: {image: app:1, env_secret: env}\n",
                        "8: pipelines.mail.scale: connection 'lite' is SQLite: pods cannot share a database file"),
    "scale without env_secret": ("pipelines:\n  mail:\n    scale: {max: 2}\nkubernetes: {image: app:1}\n",
                                 "6: pipelines.mail.scale: scale: needs kubernetes.env_secret"),
    "scale without kubernetes": ("pipelines:\n  mail:\n    scale: {max: 2}\n",
                                 "6: pipelines.mail.scale: scale: is for Kubernetes"),
    "scale on a drain": ("pipelines:\n  mail:\n    drain: '* * * * *'\n    scale: {max: 2}\n"
                         "kubernetes: {image: app:1, env_secret: env}\n",
                         "7: pipelines.mail.scale: a drain pipeline runs as a CronJob"),
    "two pipelines as one object": ("pipelines:\n  a_b: {}\n  a-b: {}\nkubernetes: {image: app:1}\n",
                                    "6: pipelines.a-b: 'a-b' and 'a_b' would both be the Kubernetes object a-b"),
    "jobfarm's own name": ("pipelines:\n  farm_scheduler: {}\nkubernetes: {image: app:1}\n",
                           "5: pipelines.farm_scheduler: 'farm_scheduler' would be the Kubernetes object farm-scheduler"),
    "a drain name too long for a CronJob": ("pipelines:\n  " + "d" * 53 + ": {drain: '* * * * *'}\nkubernetes: {image: app:1}\n",
                                            "5: pipelines." + "d" * 53 + ": '" + "d" * 53 + "' cannot name a Kubernetes CronJob"),
    "a bad namespace": ("pipelines:\n  mail: {}\nkubernetes: {image: app:1, namespace: Shop_1}\n",
                        "6: kubernetes.namespace: expected a namespace name"),
    "a relative config": ("pipelines:\n  mail: {}\nkubernetes: {image: app:1, config: conf/farm.yaml}\n",
                          "6: kubernetes.config: expected the manifest's absolute path inside the image"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_kubernetes_input_is_a_manifest_error_at_its_line_exit_2_and_nothing_written(case, tmp_path, monkeypatch,
                                                                                       capsys):
    from farm import cli

    # Given a manifest with one problem of the Kubernetes kind
    body, expected = BAD[case]
    path = _manifest(tmp_path, "")
    path.write_text(path.read_text() + body)
    # When farmctl render runs on it
    monkeypatch.setattr(sys, "argv", ["farmctl", "--config", str(path), "render"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    # Then it exits 2 naming the manifest's line, and writes nothing
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert f"{path}:{expected}" in err, err
    assert "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["conf"]
