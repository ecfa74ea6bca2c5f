"""Wire format v1: the JSON job document every driver stores, and the imports allow-list.

Values JSON cannot hold are tagged as single-key objects:
`{"$datetime": ISO}`, `{"$date": ISO}`, `{"$uuid": str}`, `{"$decimal": str}`, `{"$bytes": base64}`.
"""
from __future__ import annotations

import base64
import datetime as dt
import importlib
import inspect
import json
import uuid
from decimal import Decimal
from typing import Any, Callable, Sequence

from .errors import PayloadError, SerializationError

VERSION = 1
_REQUIRED = {"v": int, "id": str, "job": str, "data": dict}
_MAX = 1e9          # a sane ceiling for counts and seconds (about 31 years)
# key -> (types, smallest value); numbers must also be finite and at most _MAX
_OPTIONAL: dict[str, tuple[Any, float | None]] = {
    "queue": (str, None), "attempts": (int, 0), "exceptions": (int, 0), "tries": (int, 0),
    "backoff": ((list, int, float), 0), "timeout": ((int, float), 0), "max_exceptions": (int, 1),
    "retry_until": (str, None), "dispatched_at": (str, None), "retention": ((int, float), 0)}
MAX_ID = 36         # the id columns are uuid-sized
MAX_CHAIN = 1000    # links a chain may carry after its first (each link's document holds the rest)


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
    "$bytes": lambda s: base64.b64decode(s.encode("ascii"), validate=True),
}


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        ((key, value),) = obj.items()
        conv = _UNTAG.get(key)
        if conv is not None and isinstance(value, str):
            try:
                return conv(value)
            except Exception as e:      # Decimal's InvalidOperation, binascii.Error, bad ISO dates
                raise PayloadError(f"data: {{{key!r}: {value[:40]!r}}} is not a valid {key[1:]} "
                                   f"({type(e).__name__})") from None
    return obj


def serialize(doc: dict[str, Any], owner: str) -> str:
    """The document as JSON with special values tagged; SerializationError names what cannot be."""
    try:
        return json.dumps(doc, default=_tag, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        raise SerializationError(_explain(doc.get("data"), owner) or f"{owner}: cannot be serialized") from None


def sealed_data(data: dict[str, Any], owner: str) -> dict[str, str]:
    """`encrypted = True`: the data, tagged and as JSON, sealed as `{"$encrypted": token}`."""
    from . import crypto

    try:
        text = json.dumps(data, default=_tag, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        raise SerializationError(_explain(data, f"{owner}.data") or f"{owner}: cannot be serialized") from None
    return crypto.seal(text, owner)


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
    """Undo the tags of serialize(); a bad tag is a PayloadError, never a crash of the worker."""
    if len(data) == 1 and "$encrypted" in data:     # encrypted = True (farm/crypto.py)
        return _unsealed(data)
    try:
        return json.loads(json.dumps(data), object_hook=_untag) if _has_tags(data) else data
    except RecursionError:
        raise PayloadError("data: nested too deeply") from None


def _unsealed(data: dict[str, Any]) -> dict[str, Any]:
    from . import crypto

    try:
        found = json.loads(crypto.unseal(data), object_hook=_untag)
    except (ValueError, RecursionError):
        raise PayloadError("data: the decrypted data is not a JSON object") from None
    if not isinstance(found, dict):
        raise PayloadError("data: the decrypted data is not a JSON object")
    return found


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
    except RecursionError:
        raise PayloadError("the job document is nested too deeply") from None
    check_shape(doc)
    return doc


def check_shape(doc: Any) -> None:
    """Every field a worker reads has the type and range it needs, or PayloadError says which."""
    if not isinstance(doc, dict):
        raise PayloadError("the job document must be a JSON object")
    for key, kind in _REQUIRED.items():
        if not isinstance(doc.get(key), kind) or isinstance(doc.get(key), bool):
            raise PayloadError(f"the job document needs {key!r} ({kind.__name__})")
    if doc["v"] != VERSION:
        raise PayloadError(f"unsupported wire format version {doc['v']!r} (this is v{VERSION})")
    if not 0 < len(doc["id"]) <= MAX_ID:
        raise PayloadError(f"'id' must be 1 to {MAX_ID} characters, got {doc['id'][:50]!r}")
    if ":" not in doc["job"] or len(doc["job"]) > 500:
        raise PayloadError(f"'job' must be 'module:Qualname', got {doc['job'][:100]!r}")
    for key, (kinds, low) in _OPTIONAL.items():
        value = doc.get(key)
        if value is not None and not _valid(value, kinds, low):
            raise PayloadError(f"the job document's {key!r} has the wrong type or range: {repr(value)[:100]}")
    if doc.get("queue") == "" or len(doc.get("queue") or "") > 191:
        raise PayloadError("'queue' must be 1 to 191 characters")
    if "batch" in doc or "chain" in doc:      # chains and batches (farm/chains.py, farm/batches.py)
        _check_workflow(doc)
    if doc.get("retry_until") is not None:
        try:
            dt.datetime.fromisoformat(doc["retry_until"].replace("Z", "+00:00"))
        except ValueError:
            raise PayloadError(f"'retry_until' is not an ISO 8601 time: {doc['retry_until'][:50]!r}") from None


def _check_workflow(doc: dict[str, Any]) -> None:
    """`batch` names a batch by id; `chain` holds the next links' documents, a bounded number."""
    bid = doc.get("batch")
    if "batch" in doc and not (isinstance(bid, str) and 0 < len(bid) <= MAX_ID):
        raise PayloadError(f"'batch' must be a batch id of 1 to {MAX_ID} characters, got {repr(bid)[:50]}")
    links = doc.get("chain")
    if "chain" in doc and not (isinstance(links, list) and all(isinstance(d, dict) for d in links)):
        raise PayloadError("'chain' must be a list of job documents")
    if links is not None and len(links) > MAX_CHAIN:
        raise PayloadError(f"'chain' carries {len(links)} links, at most {MAX_CHAIN} are allowed")


def _valid(value: Any, kinds: Any, low: float | None) -> bool:
    """A field's value: a string, a number (not a bool, finite, in low.._MAX), or a short list of them."""
    if not isinstance(value, kinds) or value is True or value is False:
        return False
    if low is None:
        return True                     # kinds is str
    if isinstance(value, list):
        return len(value) <= 1000 and all(_valid(v, (int, float), low) for v in value)
    return low <= value <= _MAX         # NaN and inf fail this too


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


class Registry:
    """Resolves `module:Qualname` to job code defined in one of the manifest's `imports:`.

    Only a `farm.Job` subclass, an `@farm.job` function or a plain function *defined in* the
    named module is accepted: no attribute walk through other modules (`mod:os.system`), no
    private names, nothing imported into the module from elsewhere.
    """

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
            module = importlib.import_module(module_name)
        except Exception as e:  # the job module itself is broken: fail its jobs, keep working
            raise PayloadError(f"cannot import {module_name}: {type(e).__name__}: {e}") from None
        target = _walk(module, module_name, qualname)
        if target is None or not _defined_job(target, module_name, qualname):
            raise PayloadError(f"{module_name} defines no job {qualname!r} (a farm.Job subclass, "
                               "an @farm.job function or a function defined in that module)")
        return target


def _walk(module: Any, module_name: str, qualname: str) -> Any:
    """`Outer.Inner` inside `module`, stepping only through classes defined there."""
    target: Any = module
    for i, part in enumerate(qualname.split(".")):
        if not part.isidentifier() or part.startswith("_"):
            return None
        if i and not (isinstance(target, type) and target.__module__ == module_name):
            return None
        target = inspect.getattr_static(target, part, None)
    return target


def _defined_job(target: Any, module_name: str, qualname: str) -> bool:
    from .jobs import FunctionJob, Job

    if isinstance(target, type):
        return issubclass(target, Job) and target.__module__ == module_name and target.__qualname__ == qualname
    if isinstance(target, FunctionJob):
        target = target.fn
    return (inspect.isfunction(target) and target.__module__ == module_name
            and target.__qualname__ == qualname and "." not in qualname)


def utcnow_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
