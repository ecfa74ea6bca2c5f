import textwrap

import pytest

from farm import manifest
from farm.errors import ManifestError


def _write(tmp_path, text):
    (tmp_path / "conf").mkdir(exist_ok=True)
    p = tmp_path / "conf" / "farm.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_the_example_manifest_loads(monkeypatch):
    from conftest import ROOT

    monkeypatch.delenv("FARM_DB_URL", raising=False)
    m = manifest.load(ROOT / "conf" / "farm.yaml")
    assert m.default == "database" and "farm.demo" in m.imports
    assert m.connections["database"].url == f"sqlite:///{ROOT}/var/farm.db"
    assert m.pipelines["email_worker"].numprocs == 2
    assert m.pipelines["reports"].drain == "*/10 * * * *"
    assert m.supervisor_dir == ROOT / "supervisor"


def test_every_problem_is_reported_with_its_line(tmp_path):
    p = _write(tmp_path, """\
        imports: [app.jobs]
        connections:
          database: {driver: database, url: "sqlite:///x.db"}
          bad: {driver: kafka}
        pipelines:
          email_worker:
            numprocs: 0
            queues: [emails]
            colour: blue
          reports:
            connection: rabit
            drain: "every ten minutes"
        """)
    with pytest.raises(ManifestError) as e:
        manifest.load(p)
    problems = e.value.problems
    text = "\n".join(problems)
    assert ":4: connections.bad.driver: unknown driver 'kafka'" in text
    assert ":7: pipelines.email_worker.numprocs: expected a positive integer, got 0" in text
    assert ":9: pipelines.email_worker.colour: unknown key" in text
    assert ":11: pipelines.reports.connection: unknown connection 'rabit'" in text
    assert ":12: pipelines.reports.drain: not a five-field cron expression" in text
    assert all(line.startswith("conf/farm.yaml:") or "/conf/farm.yaml:" in line for line in problems)


def test_environment_variables_are_interpolated_and_typed(tmp_path, monkeypatch):
    monkeypatch.setenv("NPROCS", "4")
    monkeypatch.delenv("UNSET_URL", raising=False)
    p = _write(tmp_path, """\
        connections:
          database: {driver: database, url: "${UNSET_URL:-sqlite:///var/x.db}"}
        pipelines:
          w:
            sleep: ${SLEEP:-0.5}
        """)
    m = manifest.load(p)
    assert m.connections["database"].url == f"sqlite:///{tmp_path}/var/x.db"
    assert m.pipelines["w"].sleep == 0.5
    p2 = _write(tmp_path, "pipelines:\n  w:\n    numprocs: ${NPROCS}\n")
    assert manifest.load(p2).pipelines["w"].numprocs == 4


def test_an_unset_variable_without_default_is_a_problem(tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE", raising=False)
    p = _write(tmp_path, "connections:\n  database: {driver: database, url: '${NOPE}'}\n")
    with pytest.raises(ManifestError, match="environment variable NOPE is not set"):
        manifest.load(p)


def test_a_missing_or_broken_manifest_is_one_line(tmp_path):
    with pytest.raises(ManifestError, match="cannot read the manifest"):
        manifest.load(tmp_path / "nope.yaml")
    p = _write(tmp_path, "pipelines: [\n")
    with pytest.raises(ManifestError, match=r"farm.yaml:\d+: not valid YAML"):
        manifest.load(p)


# Issue "Hardening" -----------------------------------------------------------------------

def test_hardening_a_substituted_value_is_text_where_text_is_expected(tmp_path, monkeypatch):
    # Given variables whose values YAML would read as an alias, an octal number and a boolean
    monkeypatch.setenv("DRAIN", "*/10 * * * *")
    monkeypatch.setenv("ZIP", "0123")
    monkeypatch.setenv("FLAG", "yes")
    monkeypatch.setenv("PROCS", "0123")
    monkeypatch.delenv("UNSET", raising=False)
    p = _write(tmp_path, """\
        pipelines:
          w:
            numprocs: ${PROCS}
            sleep: ${UNSET:-0.5}
            environment:
              ZIP: ${ZIP}
              FLAG: ${FLAG}
              QUOTED: "${FLAG}"
          r:
            numprocs: ${UNSET:-2}
            drain: ${DRAIN}
        """)
    # When the manifest is loaded
    m = manifest.load(p)
    # Then strings stay as the variable holds them, and numbers are decimal numbers
    assert m.pipelines["r"].drain == "*/10 * * * *"
    assert dict(m.pipelines["w"].environment) == {"ZIP": "0123", "FLAG": "yes", "QUOTED": "yes"}
    assert m.pipelines["w"].numprocs == 123 and m.pipelines["r"].numprocs == 2
    assert m.pipelines["w"].sleep == 0.5


def test_hardening_a_substituted_value_that_is_no_number_is_a_problem_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("PROCS", "*/10 [")
    p = _write(tmp_path, "pipelines:\n  w:\n    numprocs: ${PROCS}\n")
    with pytest.raises(ManifestError) as e:
        manifest.load(p)
    (problem,) = e.value.problems
    assert problem.endswith("/conf/farm.yaml:3: pipelines.w.numprocs: expected a positive integer, got '*/10 ['")


def test_hardening_environment_values_are_the_text_as_written(tmp_path):
    p = _write(tmp_path, "pipelines:\n  w:\n    environment: {FLAG: yes, ZIP: 0123, RATIO: 1.50, EMPTY: }\n")
    assert dict(manifest.load(p).pipelines["w"].environment) == {
        "FLAG": "yes", "ZIP": "0123", "RATIO": "1.50", "EMPTY": ""}


def test_hardening_an_amqp_connection_without_a_store_is_a_manifest_error(tmp_path):
    p = _write(tmp_path, """\
        connections:
          database: {driver: database}
          rabbit:
            driver: amqp
            url: amqp://guest:guest@127.0.0.1:5672/%2F
        """)
    with pytest.raises(ManifestError) as e:
        manifest.load(p)
    assert e.value.exit_code == 2
    (problem,) = e.value.problems
    assert problem.split("farm.yaml", 1)[1].startswith(":3: connections.rabbit.store: an amqp connection needs")


def test_hardening_environment_names_and_values_that_cannot_be_rendered_are_refused(tmp_path):
    p = _write(tmp_path, """\
        pipelines:
          w:
            environment:
              1ST: a
              A-B: b
              OK_1: "two\\nlines"
              BOTH: "it's \\"x\\""
              EDGE: "'quoted'"
              COMMENT: "a ;b"
        """)
    with pytest.raises(ManifestError) as e:
        manifest.load(p)
    text = "\n".join(e.value.problems)
    assert ":4: pipelines.w.environment.1ST: not a variable name" in text
    assert ":5: pipelines.w.environment.A-B: not a variable name" in text
    assert ":6: pipelines.w.environment.OK_1: " in text and "line break" in text
    assert ":7: pipelines.w.environment.BOTH: " in text
    assert ":8: pipelines.w.environment.EDGE: " in text
    assert ":9: pipelines.w.environment.COMMENT: " in text
    assert len(e.value.problems) == 6


def test_issue17_queue_type_and_urls_are_read_for_an_amqp_connection(tmp_path):
    p = _write(tmp_path, """\
        connections:
          database: {driver: database}
          rabbit:
            driver: amqp
            urls: [amqp://a:5672/%2F, amqps://b:5671/%2F]
            queue_type: quorum
            store: database
        """)
    c = manifest.load(p).connections["rabbit"]
    assert (c.queue_type, c.urls, c.url) == ("quorum", ("amqp://a:5672/%2F", "amqps://b:5671/%2F"), "amqp://a:5672/%2F")
    assert manifest.load(_write(tmp_path, "connections:\n  d: {driver: database}\n  r: {driver: amqp, url: "
                                          "'amqp://x/', store: d}\n")).connections["r"].queue_type == "classic"


def test_issue17_wrong_queue_type_and_urls_are_manifest_errors_with_their_lines(tmp_path):
    p = _write(tmp_path, """\
        connections:
          database: {driver: database, queue_type: quorum, urls: [amqp://x/]}
          both:
            driver: amqp
            url: amqp://a/
            urls: [amqp://b/]
            store: database
          neither: {driver: amqp, store: database}
          bad:
            driver: amqp
            queue_type: stream
            urls:
              - amqp://ok/
              - http://no/
            store: database
          empty: {driver: amqp, urls: [], store: database}
        """)
    with pytest.raises(ManifestError) as e:
        manifest.load(p)
    assert e.value.exit_code == 2
    got = [problem.split("farm.yaml", 1)[1] for problem in e.value.problems]
    assert got == [
        ":2: connections.database.queue_type: only an amqp connection has a queue_type",
        ":2: connections.database.urls: only an amqp connection takes a list of urls",
        ":6: connections.both.urls: give either url (one broker) or urls (brokers tried in turn), not both",
        ":8: connections.neither.url: an amqp connection needs a url (amqp://user:pass@host:port/vhost) "
        "or urls (a list of them, tried in turn)",
        ":11: connections.bad.queue_type: expected classic or quorum, got 'stream'",
        ":14: connections.bad.urls[1]: expected an amqp:// or amqps:// url, got 'http://no/'",
        ":16: connections.empty.urls: expected a list of amqp:// urls, tried in turn, got []",
    ], got
