"""Kubernetes: a Deployment per resident pipeline, a CronJob per drain, the scheduler and dashboard.

Each file is YAML written by PyYAML's `safe_dump` from mappings built in a fixed order, so the
same manifest gives the same bytes. The image's entrypoint is `farmctl`: a container names
only its arguments. Pods take their environment from `kubernetes.env_secret` (envFrom) and
the pipeline's `environment:`; nothing the render machine's environment held is copied in: a
`${VAR}` in an `environment:` value becomes Kubernetes' `$(VAR)`, resolved in the pod from the
Secret, and a literal `$(` is escaped as `$$(`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ..kubeconf import DASHBOARD, SCHEDULER, Kubernetes, object_name
from ..manifest import _VAR, Manifest, Pipeline
from . import keda

DASHBOARD_PORT = 8085
HEADROOM = 0.25             # memory limit: `memory:` plus a quarter, at least HEADROOM_MIN MiB
HEADROOM_MIN = 64


def render(m: Manifest, head: str, windows: dict[str, int]) -> dict[Path, str]:
    """`P.yaml` per pipeline, `farm-scheduler.yaml` with a schedule, `farm-dashboard.yaml`."""
    k = m.kubernetes
    if k is None:
        return {}
    files: dict[Path, str] = {}
    for p in m.pipelines.values():
        if p.drain:
            docs = [cronjob(m, k, p, windows[p.name])]
        else:
            docs = [deployment(m, k, p, windows[p.name])]
            if p.scale is not None:
                docs.append(keda.scaled_object(m, p, _metadata(k, object_name(p.name), _worker_labels(p))))
        files[k.dir / f"{p.name}.yaml"] = dump(head, docs)
    if m.schedule:
        files[k.dir / f"{SCHEDULER}.yaml"] = dump(head, [scheduler(k)])
    if k.dashboard:
        files[k.dir / f"{DASHBOARD}.yaml"] = dump(head, dashboard(k))
    return files


class _Dumper(yaml.SafeDumper):
    """safe_dump that writes a mapping used twice (labels) out twice, never as an &alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(head: str, docs: list[dict[str, Any]]) -> str:
    """The header comment, then the documents, `---` between them."""
    texts = [yaml.dump(d, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
                       width=1 << 16) for d in docs]
    return head + "---\n".join(texts)


def deployment(m: Manifest, k: Kubernetes, p: Pipeline, grace: int) -> dict[str, Any]:
    """replicas = numprocs, unless KEDA scales it (then the Deployment leaves replicas to the
    HorizontalPodAutoscaler, so `kubectl apply` does not undo its scaling)."""
    labels = _worker_labels(p)
    spec: dict[str, Any] = {} if p.scale is not None else {"replicas": p.numprocs}
    spec.update({
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels},
                     "spec": _pod([_worker(m, k, p, [], grace)], terminationGracePeriodSeconds=grace)},
    })
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _metadata(k, object_name(p.name), labels), "spec": spec}


def cronjob(m: Manifest, k: Kubernetes, p: Pipeline, grace: int) -> dict[str, Any]:
    """A drain: `work --stop-when-empty` on the drain's cron; Forbid keeps two from overlapping,
    and a failed drain is not retried before its next run (backoffLimit 0), as under cron."""
    labels = _worker_labels(p)
    pod = {"metadata": {"labels": labels},
           "spec": _pod([_worker(m, k, p, ["--stop-when-empty"], grace)], restartPolicy="Never",
                        terminationGracePeriodSeconds=grace)}
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": _metadata(k, object_name(p.name), labels),
            "spec": {"schedule": p.drain, "concurrencyPolicy": "Forbid",
                     "jobTemplate": {"metadata": {"labels": labels},
                                     "spec": {"backoffLimit": 0, "template": pod}}}}


def scheduler(k: Kubernetes) -> dict[str, Any]:
    labels = _labels("scheduler")
    container = _container(k, "scheduler", ["schedule", "--config", k.config], [])
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _metadata(k, SCHEDULER, labels),
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": _pod([container])}}}


def dashboard(k: Kubernetes) -> list[dict[str, Any]]:
    """`farmctl dashboard` on port 8085, and a ClusterIP Service in front of it."""
    labels = _labels("dashboard")
    args = ["dashboard", "--config", k.config, "--host", "0.0.0.0", "--port", str(DASHBOARD_PORT)]
    container = _container(k, "dashboard", args, [])
    container["ports"] = [{"name": "http", "containerPort": DASHBOARD_PORT}]
    container["readinessProbe"] = {"tcpSocket": {"port": "http"}}
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _metadata(k, DASHBOARD, labels),
              "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                       "template": {"metadata": {"labels": labels}, "spec": _pod([container])}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(k, DASHBOARD, labels),
               "spec": {"selector": labels,
                        "ports": [{"name": "http", "port": DASHBOARD_PORT, "targetPort": "http"}]}}
    return [deploy, service]


def memory_limit(mb: int) -> int:
    """MiB a worker's container may use: the worker exits gracefully past `memory:` after its
    job, so the limit leaves room for that last job to finish."""
    return mb + max(HEADROOM_MIN, int(mb * HEADROOM))


def _worker(m: Manifest, k: Kubernetes, p: Pipeline, extra: list[str], grace: int) -> dict[str, Any]:
    args = ["work", "--config", k.config, "--pipeline", p.name, *p.queue_args, *extra]
    container = _container(k, "worker", args, _environment(p) + [("FARM_STOP_WINDOW", str(grace))])
    if p.memory:
        container["resources"] = {"requests": {"memory": f"{p.memory}Mi"},
                                  "limits": {"memory": f"{memory_limit(p.memory)}Mi"}}
    return container


def _pod(containers: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    """A pod spec: `settings` first, then non-root (the jobfarm image's user is uid 10001)."""
    return {**settings, "securityContext": {"runAsNonRoot": True}, "containers": containers}


def _container(k: Kubernetes, name: str, args: list[str], env: list[tuple[str, str]]) -> dict[str, Any]:
    values = {"FARM_CONFIG": _literal(k.config), **dict(env)}
    container: dict[str, Any] = {"name": name, "image": k.image, "args": args,
                                 "env": [{"name": n, "value": v} for n, v in values.items()]}
    if k.env_secret:
        container["envFrom"] = [{"secretRef": {"name": k.env_secret}}]
    return container


def _environment(p: Pipeline) -> list[tuple[str, str]]:
    """The pipeline's `environment:` for a pod: literal text escaped, each ${VAR} as $(VAR)."""
    templates = dict(p.env_templates)
    return [(name, _template(templates[name]) if name in templates else _literal(value))
            for name, value in p.environment]


def _literal(text: str) -> str:
    """Text that Kubernetes' $(VAR) expansion leaves as it is (`$$` reads as `$`)."""
    return re.sub(r"\$(?=[$(])", "$$", text)


def _template(raw: str) -> str:
    """`https://${HOST:-x}/api` -> `https://$(HOST)/api`: the pod's own HOST, from env_secret
    (a `:-default` cannot be said to Kubernetes: the Secret must hold the variable)."""
    out, at = [], 0
    for match in _VAR.finditer(raw):
        out += [_literal(raw[at:match.start()]), f"$({match.group(1)})"]
        at = match.end()
    return "".join(out) + _literal(raw[at:])


def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "jobfarm", "app.kubernetes.io/component": component}


def _worker_labels(p: Pipeline) -> dict[str, str]:
    return {**_labels("worker"), "jobfarm/pipeline": p.name}


def _metadata(k: Kubernetes, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": k.namespace, "labels": dict(labels)}
