"""Asking supervisord for its process states: the system's (`supervisor.serverurl`) or the
local one that `render` configures (its socket under var/)."""
from __future__ import annotations

import xmlrpc.client
from typing import Any

from .manifest import Manifest


def serverurl(m: Manifest) -> str:
    return m.serverurl or f"unix://{m.root / 'var' / 'supervisor.sock'}"


def proxy(m: Manifest) -> Any:
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, serverurl(m))
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def process_states(m: Manifest) -> list[dict[str, Any]] | None:
    """[{name, group, state, pid}], or None when supervisord does not answer."""
    try:
        infos = proxy(m).supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error):
        return None
    return [{"name": i["name"], "group": i["group"], "state": i["statename"], "pid": i["pid"] or None}
            for i in infos]
