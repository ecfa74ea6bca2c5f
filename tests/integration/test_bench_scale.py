"""Issue 19: scripts/bench --scale's harness, run for real on SQLite with tiny counts (~20 s).

The figures themselves are the bench's business (it never asserts); this checks that every
section ran real workers to the end, passed its exactly-once check and printed its table.
"""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

BENCH = ROOT / "bench"
SECTIONS = ["backlog", "delayed", "queues", "idle", "rss"]


def scale(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH / "scale.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_every_section_runs_on_sqlite_exactly_once_and_prints_its_figures(capsys):
    # Given the scale harness with tiny counts on SQLite
    done = scale("--backend", "sqlite", "--tiny", "--section", ",".join(SECTIONS))
    # Then it exits 0 with one JSON line per section, each checked exactly once
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(ln) for ln in done.stdout.splitlines() if ln.startswith("{")]
    assert [r["section"] for r in rows] == SECTIONS
    assert all(r["exactly_once"] is True and "error" not in r for r in rows), rows
    by = {r["section"]: r for r in rows}
    assert [p["jobs"] for p in by["backlog"]["points"]] == [200, 2000]
    assert all(p["per_s"] > 0 for s in ("backlog", "queues") for p in by[s]["points"])
    assert {p["where"] for p in by["queues"]["points"]} == {"spread", "last"}
    assert by["delayed"]["behind_per_s"] > 0 and by["delayed"]["behind_p99_ms"] > 0
    assert by["idle"]["points"][-1]["latency_p99_ms"] > 0 and by["idle"]["points"][-1]["workers_cpu_pct"] >= 0
    assert by["rss"]["rss_peak_mb"] >= by["rss"]["rss_first_mb"] > 0
    # When the tables are printed, Then each section shows a verdict per row
    sys.path[:0] = [str(BENCH)]
    import scale_report

    scale_report.print_table(rows, {"sqlite": "SQLite"})
    printed = capsys.readouterr().out
    for section in SECTIONS:
        assert f"\n{section}: goal:" in printed, printed
    assert printed.count("SQLite") >= 7 and ("ok" in printed or "MISS" in printed)


def test_an_unknown_section_is_refused_in_one_line_with_status_2():
    done = scale("--backend", "sqlite", "--section", "backlog,nope", timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "bench --scale: unknown section 'nope' (known: backlog, delayed, queues, idle, rss, long, weights)"]
