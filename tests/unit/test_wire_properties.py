"""Property tests of the wire format: whatever a document holds, it round-trips or is refused
with PayloadError, and a worker preparing it either gets a job or fails it, never crashes."""
from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import farm
from farm import payload
from farm.dispatch import build
from farm.drivers.base import Reserved
from farm.jobs import instantiate
from farm.log import Log
from farm.worker.lifecycle import Lifecycle
from farm.worker.options import WorkerOptions
from farm.worker.runner import Runner
from testjobs import Typed

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
special = (st.datetimes(timezones=st.just(dt.timezone.utc)) | st.dates() | st.uuids()
           | st.decimals(allow_nan=False, allow_infinity=False) | st.binary(max_size=20))
payload_values = st.recursive(json_scalars | special, lambda inner: st.lists(inner, max_size=3)
                              | st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), inner, max_size=3),
                              max_leaves=12)
tags = st.sampled_from(["$datetime", "$date", "$uuid", "$decimal", "$bytes", "$other"])
hostile_values = st.recursive(json_scalars | st.builds(lambda t, v: {t: v}, tags, json_scalars),
                              lambda inner: st.lists(inner, max_size=3)
                              | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=12)
FIELDS = ["v", "id", "job", "data", "queue", "attempts", "tries", "backoff", "timeout", "max_exceptions",
          "retry_until", "dispatched_at", "exceptions"]
documents = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), hostile_values, max_size=10) \
    .map(lambda d: {"v": 1, "id": str(uuid.uuid4()), "job": "testjobs:Typed",
                    "data": {"path": "/dev/null"}, **d})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), payload_values, max_size=5))
def test_any_payload_of_supported_values_round_trips_through_the_wire(values):
    doc = build(Typed("/dev/null", **values))
    text = payload.serialize(doc, "Typed")
    parsed = payload.parse(text)
    job = instantiate(Typed, payload.decode_data(parsed["data"]))
    assert job.values == _normal(values)


def _normal(value):
    """What a value is after JSON: tuples are lists, Decimals keep their text, -0.0 stays."""
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, Decimal):
        return Decimal(str(value))
    return value


@settings(max_examples=200, deadline=None)
@given(documents)
def test_any_document_parses_to_a_job_or_is_refused_with_payload_error(doc):
    try:
        parsed = payload.parse(json.dumps(doc))
        registry = payload.Registry(["testjobs"])
        instantiate(registry.resolve(parsed["job"]), payload.decode_data(parsed["data"]))
    except farm.PayloadError:
        pass


class _Settled:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def fail(self, job, body, error):
        self.failed.append(error)


@settings(max_examples=200, deadline=None)
@given(documents | json_values.map(lambda v: v if not isinstance(v, dict) else {"data": v}))
def test_a_worker_prepares_any_json_as_a_job_or_a_failed_entry_never_an_exception(doc):
    queue = _Settled()
    options = WorkerOptions(connection="x")
    runner = Runner(queue, payload.Registry(["testjobs"]), options, Log(level="error"),
                    Lifecycle(options, time.monotonic()))
    attempt = runner.prepare(Reserved("id", "default", json.dumps(doc), 1))
    assert (attempt is None) == (len(queue.failed) == 1)
    if attempt is None:
        assert queue.failed[0].startswith("PayloadError: ")
