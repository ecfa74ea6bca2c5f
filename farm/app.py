"""The process's view of the manifest: which manifest, and one driver per connection."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from . import manifest as manifest_mod
from .errors import FarmError
from .manifest import Manifest

_lock = threading.RLock()
_state: dict[str, Any] = {"path": None, "manifest": None, "queues": {}}


def configure(path: str | os.PathLike[str] | None = None) -> Manifest:
    """Use the manifest at `path` (else $FARM_CONFIG, else ./conf/farm.yaml) from now on."""
    with _lock:
        _close_all()
        _state["path"] = Path(path).absolute() if path else None
        _state["manifest"] = manifest_mod.load(_state["path"])
        return _state["manifest"]


def manifest() -> Manifest:
    m = _state["manifest"]
    if m is None:
        with _lock:
            if _state["manifest"] is None:
                _state["manifest"] = manifest_mod.load(_state["path"])
            m = _state["manifest"]
    return m


def queue(name: str | None = None) -> Any:
    """The driver for connection `name` (default: the manifest's default), made once per process."""
    m = manifest()
    conn = m.connection(name)
    key = (os.getpid(), conn.name)
    q = _state["queues"].get(key)
    if q is None:
        with _lock:
            q = _state["queues"].get(key)
            if q is None:
                q = _state["queues"][key] = open_queue(m, conn.name)
    return q


def store(name: str | None = None) -> Any:
    """Where a connection's failed jobs, stamps and heartbeats live."""
    m = manifest()
    conn = m.connection(name)
    if conn.driver == "database" or (conn.driver == "redis" and not conn.store):
        return queue(conn.name)         # redis keeps them in Redis unless `store:` says otherwise
    if conn.store:
        return queue(conn.store)
    raise FarmError(f"connection {conn.name!r} has no store: add `store: <a database connection>` to it")


def open_queue(m: Manifest, name: str) -> Any:
    conn = m.connection(name)
    if conn.driver == "database":
        from .drivers.database import DatabaseQueue

        return DatabaseQueue(conn)
    if conn.driver == "amqp":
        from .drivers.amqp import AmqpQueue

        return AmqpQueue(conn, store=queue(conn.store) if conn.store else None)
    if conn.driver == "redis":
        from .drivers.redis import RedisQueue

        return RedisQueue(conn, store=queue(conn.store) if conn.store else None)
    if conn.driver == "async":
        from .drivers.async_ import AsyncQueue

        return AsyncQueue(conn)
    from .drivers.sync import SyncQueue

    return SyncQueue(conn)


def _close_all() -> None:
    for key, q in list(_state["queues"].items()):
        if key[0] == os.getpid():
            try:
                q.close()
            except Exception:
                pass
    _state["queues"] = {}
