"""KEDA: a `ScaledObject` per pipeline with `scale:`, counting the ready jobs of its queues.

Field names follow KEDA's scaler reference (keda.sh/docs/2.21/scalers: postgresql, mysql,
rabbitmq-queue, redis-lists). A trigger's `metadata` is a map of strings. KEDA reads the
connection from an environment variable of the scaled Deployment's container, which takes
it from `kubernetes.env_secret` (envFrom): `FARM_SCALER_<CONNECTION>` holds it in the form
the scaler wants (a libpq URL, a Go MySQL DSN, an amqp:// URL, a redis host:port), not the
SQLAlchemy URL the workers use, so nothing is copied from the render machine.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..errors import FarmError
from ..kubeconf import Scale, object_name, queue_kind
from ..manifest import Connection, Manifest, Pipeline

# the redis driver's ready list of a queue (farm/drivers/redis_lua.py: `<prefix>:{Q}:ready`)
REDIS_READY = "{prefix}:{{{queue}}}:ready"


def connection_variable(conn: Connection) -> str:
    """The variable, in env_secret, that holds this connection for KEDA."""
    return "FARM_SCALER_" + re.sub(r"[^A-Z0-9]", "_", conn.name.upper())


def scaled_object(m: Manifest, p: Pipeline, metadata: dict[str, Any]) -> dict[str, Any]:
    """The ScaledObject that scales the pipeline's Deployment between scale.min and scale.max."""
    assert p.scale is not None
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": {"name": object_name(p.name)},
            "minReplicaCount": p.scale.min,
            "maxReplicaCount": p.scale.max,
            "triggers": triggers(m.connections[p.connection], p.queues, p.scale),
        },
    }


def triggers(conn: Connection, queues: Sequence[str], scale: Scale) -> list[dict[str, Any]]:
    """The trigger(s) that count the ready jobs of `queues` on `conn`, `per_worker` per replica."""
    var, per = connection_variable(conn), str(scale.per_worker)
    kind = queue_kind(conn)
    if kind == "postgresql":
        return [{"type": "postgresql", "metadata": {
            "connectionFromEnv": var, "query": ready_query(conn.table, queues, "postgresql"),
            "targetQueryValue": per}}]
    if kind == "mysql":
        return [{"type": "mysql", "metadata": {
            "connectionStringFromEnv": var, "query": ready_query(conn.table, queues, "mysql"),
            "queryValue": per}}]
    if kind == "amqp":      # amqp counts ready messages only: unacked ones are being worked on
        return [{"type": "rabbitmq", "metadata": {
            "hostFromEnv": var, "protocol": "amqp", "mode": "QueueLength", "value": per, "queueName": q}}
            for q in queues]
    if kind == "redis":
        tls = "true" if (conn.url or "").startswith("rediss://") else "false"
        return [{"type": "redis", "metadata": {
            "addressFromEnv": var, "passwordFromEnv": f"{var}_PASSWORD", "listName": REDIS_READY.format(prefix=conn.prefix, queue=q),
            "listLength": per, "enableTLS": tls}} for q in queues]
    raise FarmError(f"connection {conn.name!r} has no queue KEDA can count ({kind})")


def ready_query(table: str, queues: Sequence[str], dialect: str) -> str:
    """How many jobs of `queues` a worker could claim now: `available_at <= now` (ready jobs, and
    reservations that lapsed; a held reservation's available_at is in the future)."""
    now = "extract(epoch from now())" if dialect == "postgresql" else "UNIX_TIMESTAMP()"
    listed = ", ".join(_literal(q, dialect) for q in queues)
    return f"SELECT COUNT(*) FROM {table} WHERE queue IN ({listed}) AND available_at <= {now}"


def _literal(text: str, dialect: str) -> str:
    """An SQL string literal: `'` doubled; MySQL also reads backslash escapes."""
    if dialect == "mysql":
        text = text.replace("\\", "\\\\")
    return "'" + text.replace("'", "''") + "'"
