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
          bad: {driver: redis}
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
    assert ":4: connections.bad.driver: unknown driver 'redis'" in text
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
