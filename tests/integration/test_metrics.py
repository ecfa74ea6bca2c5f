"""Issue 16: metrics. Real workers count what they settle and add it to their store; one
`farmctl metrics` shows the whole farm in Prometheus' text format."""
from __future__ import annotations

import signal
import sqlite3
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import farm
from farm import metrics as farm_metrics
from conftest import BACKENDS, wait_until
from testjobs import Flaky, GivesUp, Noop, Releaser, Stuck

PIPELINE = "\npipelines:\n  mail: {connection: main, queues: [a]}\n  nightly: {connection: main, queues: [b], drain: '0 2 * * *'}\n"


def scrape(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels: value}."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def labels(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def metrics(f: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    return scrape(f.farmctl("metrics", check=True).stdout)


@pytest.mark.parametrize("backend", BACKENDS)
def test_metrics_count_every_outcome_a_worker_settled_and_show_the_queues_as_counts_does(make_farm, backend):
    # Given jobs that succeed, retry then succeed, retry then fail, release then fail, and give up
    f = make_farm(backend)
    for _ in range(3):
        farm.dispatch(Noop())
    farm.dispatch(Flaky(str(f.out), succeed_on=2))
    farm.dispatch(Flaky(str(f.out)), tries=2)
    farm.dispatch(Releaser(str(f.out)))
    farm.dispatch(GivesUp(str(f.out)))
    farm.dispatch(Noop(), queue="later", delay=600)
    # When a worker drains the queue
    cp = f.farmctl("work", "--queue", "default", "--stop-when-empty", "--backoff", "0", timeout=60)
    assert cp.returncode == 0, cp.stderr
    text = f.farmctl("metrics", check=True).stdout
    m = scrape(text)
    assert [fam.name for fam in text_string_to_metric_families(text)] == [
        "farm_queue_jobs", "farm_jobs", "farm_job_duration_seconds", "farm_workers"]   # the parser drops _total
    # Then farm_jobs_total holds exactly what ran, per job and outcome
    jobs = {dict(k)["job"].split(":")[1] + " " + dict(k)["outcome"]: v
            for k, v in m["farm_jobs_total"].items() if dict(k)["queue"] == "default"}
    assert jobs == {"Noop done": 3, "Flaky done": 1, "Flaky retried": 2, "Flaky failed": 1,
                    "Releaser released": 1, "Releaser failed": 1, "GivesUp failed": 1}, cp.stderr
    # and the store's per-minute rows (the dashboard's chart) add up to the same
    by_minute: dict[str, int] = {}
    for r in f.store().counts_by_minute(time.time() - 3600):
        key = r["job"].split(":")[1] + " " + r["outcome"]
        by_minute[key] = by_minute.get(key, 0) + r["n"]
        assert r["queue"] == "default" and r["minute"] % 60 == 0 and r["minute"] > time.time() - 300
    assert by_minute == jobs
    # and the histogram counted each of those attempts once, each in its +Inf bucket
    assert m["farm_job_duration_seconds_count"] == m["farm_jobs_total"]
    for key, n in m["farm_jobs_total"].items():
        assert m["farm_job_duration_seconds_bucket"][tuple(sorted(key + (("le", "+Inf"),)))] == n
        assert m["farm_job_duration_seconds_sum"][key] >= 0
    # and the queue gauges are counts() (amqp cannot count reserved jobs: that gauge is left out)
    counts = f.queue().counts()
    gauges = {(dict(k)["queue"], dict(k)["state"]): v for k, v in m["farm_queue_jobs"].items()
              if dict(k)["connection"] == "main"}
    assert gauges == {(q, s): v for q, c in counts.items() for s, v in c.items() if v is not None}
    assert gauges[("default", "failed")] == 3 and gauges[("later", "delayed")] == 1
    assert gauges[("default", "ready")] == 0


def test_two_workers_counts_add_up_in_one_scrape_and_a_stopped_worker_drops_out(make_farm):
    # Given a pipeline with no worker yet: its gauge is there, at zero (a drain pipeline has none)
    f = make_farm("sqlite", extra=PIPELINE)
    assert metrics(f)["farm_workers"] == {labels(pipeline="mail", state=s): 0 for s in ("busy", "idle", "paused")}
    farm.dispatch_many([Noop() for _ in range(5)], queue="a")
    farm.dispatch_many([Noop() for _ in range(7)], queue="b")
    # When two workers drain a queue each, at the same time, one of them on threads
    both = [f.worker("--queue", "a", "--stop-when-empty"),
            f.worker("--queue", "b", "--stop-when-empty", "--concurrency", "2")]
    assert [p.wait(60) for p in both] == [0, 0]
    # Then one scrape holds both workers' counts
    total = metrics(f)["farm_jobs_total"]
    assert total == {labels(queue="a", job="testjobs:Noop", outcome="done"): 5,
                     labels(queue="b", job="testjobs:Noop", outcome="done"): 7}
    # When a pipeline's worker runs, it is counted as live, then idle
    w = f.worker("--pipeline", "mail")
    live = labels(pipeline="mail", state="idle")

    def scrape_now(now: float | None = None) -> dict[Any, float]:
        return scrape(farm_metrics.render(farm.app.manifest(), now=now).decode())["farm_workers"]

    wait_until(lambda: scrape_now()[live] == 1, 15, "the worker's first heartbeat")
    # and a second one, killed without a goodbye, still is until its heartbeat is LIVE_FOR old
    killed = f.worker("--pipeline", "mail")
    wait_until(lambda: scrape_now()[live] == 2, 15, "the second worker's heartbeat")
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    assert scrape_now()[live] == 2
    assert scrape_now(time.time() + farm_metrics.LIVE_FOR + 1)[live] == 0
    # When the first worker is stopped, it drops out of the very next scrape; the killed
    # one's heartbeat is still in the store, and counted until it ages
    w.send_signal(signal.SIGTERM)
    assert w.wait(15) == 0
    assert len(f.store().workers()) == 1
    assert scrape_now()[live] == 1


def test_a_deployment_made_before_the_counts_table_gets_it_when_a_worker_starts(make_farm):
    # Given a database whose tables were made before the counts table existed
    f = make_farm("sqlite")
    conn = farm.app.manifest().connections["main"]
    farm.dispatch(Noop())
    farm.app._close_all()
    db = sqlite3.connect(f.tmp / "farm.db")
    db.execute(f"DROP TABLE {conn.table}_counts")
    db.commit()
    db.close()
    # When a worker runs a job there
    cp = f.farmctl("work", "--stop-when-empty")
    assert cp.returncode == 0 and "worker.counts" not in cp.stderr, cp.stderr
    # Then the table was made and the job counted
    assert metrics(f)["farm_jobs_total"] == {labels(queue="default", job="testjobs:Noop", outcome="done"): 1}


def test_a_job_the_watchdog_settles_is_counted_before_its_worker_exits(make_farm):
    # Given a job stuck where its timeout cannot reach it
    f = make_farm("sqlite")
    farm.dispatch(Stuck(str(f.out), 30), timeout=1, tries=1)
    # When the heart's watchdog settles it and ends the worker
    cp = f.farmctl("work", "--stop-when-empty", timeout=60)
    assert cp.returncode == 1 and "worker.stuck" in cp.stderr, cp.stderr
    # Then its failure was counted on the way out
    assert metrics(f)["farm_jobs_total"] == {labels(queue="default", job="testjobs:Stuck", outcome="failed"): 1}


def test_a_document_naming_no_job_we_run_is_counted_as_failed_under_one_label(make_farm):
    # Given two raw documents naming jobs that do not exist (a deploy renamed a class)
    f = make_farm("sqlite")
    for name in ("testjobs:Gone", "testjobs:AlsoGone"):
        f.farmctl("push", "--queue", "a", f'{{"v": 1, "job": "{name}", "data": {{}}}}', check=True)
    assert f.farmctl("work", "--queue", "a", "--stop-when-empty").returncode == 0
    # Then the failure-rate alert sees them: failed, under "(bad payload)", not under their names
    total = metrics(f)["farm_jobs_total"]
    assert total[labels(queue="a", job="(bad payload)", outcome="failed")] == 2
    assert not [k for k in total if ("job", "testjobs:Gone") in k]
