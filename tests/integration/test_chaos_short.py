"""Issue 17: the chaos suite's short version (scripts/chaos --short, smaller still).

Each scenario runs against a real server in a throw-away farm (bench/chaos/farm.py) and counts
every job through the ledger the chaos job writes; `result.ok` is the scenario's verdict on the
promises: 0 lost; 0 run twice on graceful paths; on SIGKILL paths only the jobs whose worker
died holding them. The full runs and their figures: README "Guarantees" > "Chaos runs".
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT, _check_amqp, _check_mysql, _check_pg, _check_vhosts, need_server

sys.path.insert(0, str(ROOT))

from bench.chaos.farm import ChaosFarm, Size  # noqa: E402
from bench.chaos.main import SCENARIOS  # noqa: E402
from bench.chaos.report import print_table  # noqa: E402

TINY = Size(jobs=60, workers=2, events=5, short=True)
CHECKS = {"postgresql": [("PostgreSQL", _check_pg)], "mariadb": [("MariaDB", _check_mysql)],
          "rabbitmq": [("RabbitMQ", _check_amqp), ("RabbitMQ vhosts", _check_vhosts)], "sqlite": []}
# the most telling scenarios x backends, ~2 minutes together on the 2-core machine
CASES = [("sigkill_storm", b) for b in ("sqlite", "postgresql", "mariadb", "rabbitmq")] + [
    ("sigterm_storm", "postgresql"), ("sigterm_storm", "rabbitmq"),
    ("memory_recycling", "sqlite"), ("long_jobs_renewal", "mariadb"),
    ("poison_mix", "sqlite"), ("poison_mix", "postgresql"), ("poison_mix", "rabbitmq"),
] + [   # network and deploy, ~70 s together
    ("deploy_cycles", "postgresql"), ("connection_cuts", "postgresql"), ("connection_cuts", "rabbitmq"),
    ("producer_through_cuts", "mariadb"), ("pg_terminate", "postgresql"), ("rabbit_restart", "rabbitmq"),
]


def run(scenario: str, backend: str, tmp_path: Path):
    for what, check in CHECKS[backend]:
        need_server(what, check)
    if scenario == "deploy_cycles":      # supervisord's unix socket under var/: the path must be short
        tmp_path = Path(tempfile.mkdtemp(prefix="chaos-", dir="/tmp"))
    farm = ChaosFarm(backend, tmp_path)
    try:
        result = SCENARIOS[scenario][0](farm, TINY)
    finally:
        farm.close()
        if scenario == "deploy_cycles":
            shutil.rmtree(tmp_path, ignore_errors=True)
    print_table([result])
    return result


@pytest.mark.parametrize("scenario,backend", CASES, ids=[f"{s}-{b}" for s, b in CASES])
def test_chaos_scenario_keeps_every_promise_no_job_lost_and_none_run_twice_that_may_not(
        scenario, backend, tmp_path):
    # Given a fresh farm on the backend, When the scenario's faults hit it under load
    result = run(scenario, backend, tmp_path)
    # Then every dispatched job ran (or failed on purpose) and none ran twice that may not have
    assert result.lost == 0, result
    assert result.ok, result
