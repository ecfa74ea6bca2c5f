"""Wire format v1: the JSON job document every driver stores, and the imports allow-list.

Values JSON cannot hold are tagged as single-key objects:
`{"$datetime": ISO}`, `{"$date": ISO}`, `{"$uuid": str}`, `{"$decimal": str}`, `{"$bytes": base64}`.
"""
from __future__ import annotations

import base64
import datetime as dt
import importlib
import json
import uuid
from decimal import Decimal
from typing import Any, Callable, Sequence

from .errors import PayloadError, SerializationError

VERSION = 1
_REQUIRED = {"v": int, "id": str, "job": str, "data": dict}
_OPTIONAL = {"queue": str, "attempts": int, "tries": int, "backoff": (list, int, float),
             "timeout": (int, float), "max_exceptions": int, "retry_until": str,
             "dispatched_at": str}


def _tag(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$date": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(type(value).__name__)


_UNTAG: dict[str, Callable[[str], Any]] = {
    "$datetime": dt.datetime.fromisoformat,
    "$date": dt.date.fromisoformat,
    "$uuid": uuid.UUID,
    "$decimal": Decimal,
    "$bytes": lambda s: base64.b64decode(s.encode("ascii")),
}


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        ((key, value),) = obj.items()
        conv = _UNTAG.get(key)
        if conv is not None and isinstance(value, str):
            return conv(value)
    return obj


def serialize(doc: dict[str, Any], owner: str) -> str:
    """The document as JSON with special values tagged; SerializationError names what cannot be."""
    try:
        return json.dumps(doc, default=_tag, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        raise SerializationError(_explain(doc.get("data"), owner) or f"{owner}: cannot be serialized") from None


def _explain(value: Any, path: str) -> str:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"{path}: key {k!r} is not a string; payload keys must be strings"
            found = _explain(v, f"{path}.{k}")
            if found:
                return found
        return ""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _explain(v, f"{path}[{i}]")
            if found:
                return found
        return ""
    if value is None or isinstance(value, (str, int, bool)):
        return ""
    if isinstance(value, float):
        return "" if value == value and value not in (float("inf"), float("-inf")) else \
            f"{path}: {value!r} is not a JSON number"
    try:
        _tag(value)
        return ""
    except TypeError:
        return (f"{path}: a {type(value).__name__} cannot be a job payload value "
                "(use JSON types, datetime, date, UUID, Decimal or bytes)")


def decode_data(data: dict[str, Any]) -> dict[str, Any]:
    """Undo the tags of serialize()."""
    return json.loads(json.dumps(data), object_hook=_untag) if _has_tags(data) else data


def _has_tags(value: Any) -> bool:
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in _UNTAG:
            return True
        return any(_has_tags(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_tags(v) for v in value)
    return False


def parse(raw: str | bytes) -> dict[str, Any]:
    """Parse and shape-check a v1 document; raise PayloadError with the reason."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise PayloadError(f"the job document is not JSON: {e}") from None
    check_shape(doc)
    return doc


def check_shape(doc: Any) -> None:
    if not isinstance(doc, dict):
        raise PayloadError("the job document must be a JSON object")
    for key, kind in _REQUIRED.items():
        if not isinstance(doc.get(key), kind) or isinstance(doc.get(key), bool):
            raise PayloadError(f"the job document needs {key!r} ({kind.__name__})")
    if doc["v"] != VERSION:
        raise PayloadError(f"unsupported wire format version {doc['v']!r} (this is v{VERSION})")
    if ":" not in doc["job"]:
        raise PayloadError(f"'job' must be 'module:Qualname', got {doc['job']!r}")
    for key, kinds in _OPTIONAL.items():
        value = doc.get(key)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise PayloadError(f"the job document's {key!r} has the wrong type: {value!r}")


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


class Registry:
    """Resolves `module:Qualname` to job code, importing only the manifest's `imports:`."""

    def __init__(self, allowed: Sequence[str]) -> None:
        self.allowed = frozenset(allowed)
        self._cache: dict[str, Any] = {}

    def resolve(self, name: str) -> Any:
        target = self._cache.get(name)
        if target is None:
            target = self._cache[name] = self._load(name)
        return target

    def _load(self, name: str) -> Any:
        module_name, _, qualname = name.partition(":")
        if module_name not in self.allowed:
            raise PayloadError(f"job {name!r} is not in a module listed under imports: "
                               f"({', '.join(sorted(self.allowed)) or 'none'})")
        try:
            target: Any = importlib.import_module(module_name)
        except Exception as e:  # the job module itself is broken: fail its jobs, keep working
            raise PayloadError(f"cannot import {module_name}: {type(e).__name__}: {e}") from None
        for part in qualname.split("."):
            target = getattr(target, part, None)
            if target is None or part.startswith("_"):
                raise PayloadError(f"{module_name} has no job {qualname!r}")
        if not callable(target):
            raise PayloadError(f"{name} is not a job class or function")
        return target


def utcnow_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
