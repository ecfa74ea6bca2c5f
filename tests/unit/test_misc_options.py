"""Issue 15, no server: tries 0 and failed_table null in the manifest, the retry decision for
tries 0, Fernet key rotation and the errors of $FARM_KEY, and farm.on's checks."""
from __future__ import annotations

import datetime as dt
import re
import textwrap

import pytest

import farm
from farm import crypto, manifest, payload
from farm.drivers import database
from farm.errors import FarmError, ManifestError, PayloadError
from farm.worker import retry


def load(tmp_path, text):
    (tmp_path / "conf").mkdir(exist_ok=True)
    p = tmp_path / "conf" / "farm.yaml"
    p.write_text(textwrap.dedent(text))
    return manifest.load(p)


def test_a_pipeline_may_set_tries_zero_but_not_a_negative_number(tmp_path):
    # Given / When a manifest with tries: 0 / Then it loads, and tries: -1 is refused with its line
    m = load(tmp_path, """\
        connections: {db: {driver: database, url: "sqlite:///x.db"}}
        pipelines: {w: {queues: [a], tries: 0}}
    """)
    assert m.pipelines["w"].tries == 0
    with pytest.raises(ManifestError, match=r"farm.yaml:2: pipelines.w.tries: expected a non-negative integer"):
        load(tmp_path, """\
            connections: {db: {driver: database, url: "sqlite:///x.db"}}
            pipelines: {w: {queues: [a], tries: -1}}
        """)


def test_failed_table_null_keeps_no_failed_table_and_its_ddl_makes_none(tmp_path):
    # Given a connection with failed_table: null and one without the key
    m = load(tmp_path, """\
        connections:
          kept: {driver: database, url: "sqlite:///x.db"}
          unkept: {driver: database, url: "sqlite:///y.db", table: jobs2, failed_table: null}
    """)
    # Then the first has the default failed table, the second none, and its DDL creates none
    assert m.connections["kept"].failed_table == "failed_jobs"
    assert m.connections["unkept"].failed_table is None
    ddl = database.ddl(m.connections["unkept"])
    made = re.findall(r"CREATE TABLE (\w+)", ddl)
    assert "jobs2" in made and not [t for t in made if "failed" in t], made


def test_tries_zero_is_retried_however_many_attempts_until_max_exceptions():
    now = dt.datetime.now(dt.timezone.utc)
    args = dict(tries=0, backoff=(0,), max_exceptions=None, retry_until=None, now=now, raised=True)
    assert retry.decide(attempts=1000, exceptions=1000, **args).retry
    assert not retry.decide(attempts=5, exceptions=5, **{**args, "max_exceptions": 5}).retry
    assert not retry.decide(attempts=5, exceptions=5, **{**args, "retry_until": now}).retry
    payload.check_shape({"v": 1, "id": "x", "job": "a:b", "data": {}, "tries": 0})


def test_sealed_data_opens_with_any_key_of_farm_key_and_names_it_when_none_fits(monkeypatch):
    from cryptography.fernet import Fernet

    old, new, other = (Fernet.generate_key().decode() for _ in range(3))
    # Given data sealed with the old key
    monkeypatch.setenv("FARM_KEY", old)
    sealed = payload.sealed_data({"when": dt.date(2026, 1, 2), "n": 1}, "Job")
    assert list(sealed) == ["$encrypted"]
    # When the keys are rotated / Then the old key still opens it, tags included
    monkeypatch.setenv("FARM_KEY", f"{new}, {old}")
    assert payload.decode_data(sealed) == {"when": dt.date(2026, 1, 2), "n": 1}
    # When no key fits, or none is set / Then a PayloadError names FARM_KEY
    monkeypatch.setenv("FARM_KEY", other)
    with pytest.raises(PayloadError, match=r"no key in \$FARM_KEY opens it"):
        payload.decode_data(sealed)
    monkeypatch.delenv("FARM_KEY")
    with pytest.raises(PayloadError, match=r"FARM_KEY is not set"):
        payload.decode_data(sealed)
    with pytest.raises(PayloadError, match="must be a Fernet token"):
        payload.decode_data({"$encrypted": 5})


def test_farm_key_with_a_bad_key_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FARM_KEY", "short")
    with pytest.raises(FarmError, match=r"\$FARM_KEY: key 1 is not a Fernet key"):
        crypto.seal("{}", "Job")


def test_an_unknown_event_name_is_refused_when_the_handler_registers():
    with pytest.raises(FarmError, match="unknown event 'afterwards'.*before, after, failing"):
        farm.on("afterwards", print)


def test_an_event_handler_must_be_callable():
    with pytest.raises(FarmError, match="the handler must be callable"):
        farm.on("before", "print")
