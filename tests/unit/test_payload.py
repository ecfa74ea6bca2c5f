import datetime as dt
import json
import uuid
from decimal import Decimal

import pytest

import farm
from farm import payload
from farm.dispatch import build, delay_seconds
from testjobs import Record, Typed, add


def test_a_job_document_is_wire_format_v1_with_the_class_defaults():
    doc = build(Record("/tmp/x", "a"))
    assert doc["v"] == 1 and doc["job"] == "testjobs:Record"
    assert doc["data"] == {"path": "/tmp/x", "tag": "a", "seconds": 0.0}
    assert doc["queue"] == "default" and doc["attempts"] == 0
    assert set(doc) >= {"id", "tries", "backoff", "timeout", "max_exceptions", "retry_until", "dispatched_at"}
    uuid.UUID(doc["id"])


def test_special_values_are_tagged_and_come_back_as_themselves():
    values = {"when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), "day": dt.date(2026, 1, 2),
              "uid": uuid.UUID(int=7), "money": Decimal("12.30"), "blob": b"\x00\xff"}
    doc = build(Typed("/tmp/x", **values))
    text = payload.serialize(doc, "Typed")
    assert '"$decimal":"12.30"' in text and '"$bytes"' in text
    back = payload.decode_data(json.loads(text)["data"])
    assert back["values"] == values


def test_a_value_json_cannot_hold_is_refused_naming_the_attribute():
    with pytest.raises(farm.SerializationError) as e:
        payload.serialize(build(Typed("/tmp/x", bad={"inner": [1, object()]})), "Typed")
    assert "Typed.values.bad.inner[1]" in str(e.value)


def test_a_nan_is_refused():
    with pytest.raises(farm.SerializationError):
        payload.serialize(build(Typed("/tmp/x", n=float("nan"))), "Typed")


def test_dispatch_refuses_an_unserializable_job_and_writes_nothing(make_farm):
    f = make_farm("sqlite")
    with pytest.raises(farm.SerializationError, match="Typed.values.when"):
        farm.dispatch(Typed("/tmp/x", when=object()))
    assert f.queue().counts() == {}


def test_a_decorated_function_call_carries_its_bound_arguments():
    call = add.job("/tmp/x", 1, 2, 3, k=4)
    doc = json.loads(payload.serialize(build(call), "add"))
    assert doc["job"] == "testjobs:add" and doc["queue"] == "fn"
    assert doc["data"] == {"path": "/tmp/x", "a": 1, "b": 2, "rest": [3], "extra": {"k": 4}}


def test_the_registry_imports_only_listed_modules():
    reg = payload.Registry(["testjobs"])
    assert reg.resolve("testjobs:Record") is Record
    with pytest.raises(farm.PayloadError, match="not in a module listed under imports"):
        reg.resolve("os:system")
    with pytest.raises(farm.PayloadError, match="defines no job"):
        reg.resolve("testjobs:Nope")
    with pytest.raises(farm.PayloadError):
        reg.resolve("testjobs:_private")


@pytest.mark.parametrize("raw, reason", [
    ("not json", "not JSON"),
    ("[1]", "JSON object"),
    ('{"v": 2, "id": "x", "job": "a:b", "data": {}}', "version"),
    ('{"v": 1, "id": "x", "job": "ab", "data": {}}', "module:Qualname"),
    ('{"v": 1, "id": "x", "job": "a:b", "data": []}', "data"),
    ('{"v": 1, "id": "x", "job": "a:b", "data": {}, "tries": "3"}', "tries"),
])
def test_a_malformed_document_is_refused_with_its_reason(raw, reason):
    with pytest.raises(farm.PayloadError, match=reason):
        payload.parse(raw)


def test_delays_take_seconds_timedeltas_and_aware_datetimes():
    assert delay_seconds(5) == 5
    assert delay_seconds(dt.timedelta(minutes=1)) == 60
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30)
    assert 28 < delay_seconds(soon) <= 30
    with pytest.raises(farm.FarmError, match="timezone-aware"):
        delay_seconds(dt.datetime.now())
