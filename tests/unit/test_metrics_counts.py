"""Issue 16: the worker's job counts (farm/counts.py) and README's Prometheus alert rules."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from farm import counts, metrics

README = Path(__file__).resolve().parents[2] / "README.md"


def test_an_attempt_lands_in_the_first_bucket_whose_bound_is_not_below_it():
    # Given attempts of exactly a bound, just above one, and past the last
    c = counts.Counts()
    for seconds in (0.005, 0.0051, 0.0, 61.0):
        c.add("q", "m:J", "done", seconds)
    # When the sums are taken
    (row,) = c.take()
    # Then each is in its bucket, and the cumulative counts end at the total
    assert row["n"] == 4 and abs(row["seconds"] - 61.0101) < 1e-9
    assert row["buckets"] == {"0.005": 2, "0.01": 1, "+Inf": 1}
    cum = counts.cumulative(row["buckets"])
    assert (cum["0.005"], cum["0.01"], cum["60"], cum["+Inf"]) == (2, 3, 3, 4)
    assert c.take() == []


def test_sums_a_store_refused_are_added_to_the_next_flush():
    class Refusing:
        def __init__(self) -> None:
            self.rows: list[dict] = []
            self.refuse = True

        def add_counts(self, rows):
            if self.refuse:
                raise OSError("store away")
            self.rows.extend(rows)

        def prune_counts(self, before):
            return 0

    c, store = counts.Counts(), Refusing()
    c.add("q", "m:J", "failed", 0.2)
    try:
        c.flush(store)
        raise AssertionError("the store's error must go up")
    except OSError:
        pass
    c.add("q", "m:J", "failed", 0.3)
    store.refuse = False
    assert c.flush(store) == 1
    assert [(r["n"], round(r["seconds"], 6), r["buckets"]) for r in store.rows] == [(2, 0.5, {"0.25": 1, "0.5": 1})]


def test_a_flush_adds_each_minute_to_the_totals_with_one_row_per_key():
    rows = [{"minute": 60, "queue": "q", "job": "m:J", "outcome": "done", "n": 2, "seconds": 1.0,
             "buckets": {"1": 2}},
            {"minute": 120, "queue": "q", "job": "m:J", "outcome": "done", "n": 1, "seconds": 0.5,
             "buckets": {"0.5": 1}}]
    keyed = counts.key_rows(rows)
    assert sorted(keyed) == [(0, "q", "m:J", "done", "", 3, 1.5), (0, "q", "m:J", "done", "0.5", 1, 0.0),
                             (0, "q", "m:J", "done", "1", 2, 0.0), (60, "q", "m:J", "done", "", 2, 1.0),
                             (120, "q", "m:J", "done", "", 1, 0.5)]
    (total,) = counts.totals_from([r[1:] for r in keyed if r[0] == 0])
    assert total["n"] == 3 and total["buckets"]["0.5"] == 1 and total["buckets"]["1"] == 3
    assert total["buckets"]["+Inf"] == 3


def _rules_block() -> str:
    text = README.read_text()
    section = text[text.index("\n## Metrics\n"):]
    section = section[:section.index("\n## ", 1)]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    return block


def test_readme_alert_rules_are_valid_and_use_only_exported_metrics(tmp_path):
    block = _rules_block()
    promtool = shutil.which("promtool")
    if promtool:
        path = tmp_path / "rules.yaml"
        path.write_text(block)
        cp = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        assert cp.returncode == 0, cp.stdout + cp.stderr
    doc = yaml.safe_load(block)
    (group,) = doc["groups"]
    assert set(group) == {"name", "rules"}
    alerts = []
    for rule in group["rules"]:
        assert {"alert", "expr"} <= set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "1m"))
        used = set(re.findall(r"\b(farm_[a-z_]+)", rule["expr"]))
        assert used, rule["alert"]
        for name in used:
            assert re.sub(r"_(bucket|count|sum)$", "", name) in metrics.NAMES, name
        alerts.append(rule["alert"])
    assert alerts == ["FarmBacklogGrowing", "FarmPipelineHasNoWorkers", "FarmJobsFailing"]
