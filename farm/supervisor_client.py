"""Asking the local supervisord (the one `render` configures) for its process states."""
from __future__ import annotations

import xmlrpc.client
from typing import Any

from .manifest import Manifest


def socket_path(m: Manifest) -> str:
    return str(m.root / "var" / "supervisor.sock")


def proxy(m: Manifest) -> Any:
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{socket_path(m)}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def process_states(m: Manifest) -> list[dict[str, Any]] | None:
    """[{name, group, state, pid}], or None when supervisord does not answer."""
    try:
        infos = proxy(m).supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error):
        return None
    return [{"name": i["name"], "group": i["group"], "state": i["statename"], "pid": i["pid"] or None}
            for i in infos]
