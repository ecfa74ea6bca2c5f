"""Issue 16: `farmctl dashboard`, a real process over a real farm with real workers, looked at
in a real browser (Debian's chromium driven by Playwright; a missing browser skips here and
fails under CI=true, where scripts/test installs it)."""
from __future__ import annotations

import json
import select
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

import farm
from conftest import ROOT, Farm, need_tool, require, wait_until
from test_supervisor import sup  # noqa: F401  (the fixture: a project dir with its own supervisord)
from testjobs import AlwaysFails, Noop, Record

try:
    from farm.schedule import upcoming
except ImportError:                 # the scheduler (issue 16) not there yet: no schedule section
    upcoming = None
try:
    from farm import metrics as METRICS
except ImportError:                 # metrics (issue 16) not there yet: /metrics says so
    METRICS = None

TOKEN = "s3cret-token"
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
SCREENSHOT = ROOT / "docs" / "dashboard.png"
NIGHTLY = 'schedule:\n  nightly: {cron: "0 3 * * *", job: "testjobs:Noop", queue: backlog, timezone: UTC}\n'
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def start_dashboard(f: Farm, token: str | None) -> str:
    """`farmctl dashboard --port 0` on the farm; its URL, read from the line it prints."""
    return dashboard_on(f.env(), f.tmp, f.procs, token)


def dashboard_on(env: dict[str, str], cwd: Path, procs: list[Any], token: str | None) -> str:
    env = dict(env)
    env.pop("FARM_DASHBOARD_TOKEN", None)
    if token is not None:
        env["FARM_DASHBOARD_TOKEN"] = token
    log = cwd / f"dashboard-{len(procs)}.log"      # a file: a pipe nobody reads fills up
    with log.open("w") as err:
        p = subprocess.Popen([sys.executable, "-m", "farm", "dashboard", "--port", "0", "--interval", "0.3"],
                             cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    procs.append(p)
    ready, _, _ = select.select([p.stdout], [], [], 20)
    line = p.stdout.readline() if ready else ""
    assert line.startswith("dashboard: http://127.0.0.1:"), (line, p.poll(), log.read_text())
    return line.split()[1]


def http(method: str, url: str, token: str | None = None, host: str | None = None) -> tuple[int, Any]:
    """(status, parsed JSON body, or the text for anything else)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if host:
        headers["Host"] = host
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with NO_PROXY.open(req, timeout=20) as r:
            status, ctype, body = r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        status, ctype, body = e.code, e.headers["Content-Type"], e.read().decode()
    return status, json.loads(body) if ctype == "application/json" else body


def status(url: str) -> dict[str, Any]:
    code, doc = http("GET", url + "api/status")
    assert code == 200, doc
    return doc


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium = need_tool("chromium")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        require(False, "Playwright is not installed (pip install -e '.[test]')")
    expect.set_options(timeout=15_000)      # a loaded 2-core machine: the page refreshes every 3 s
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--no-proxy-server"])
        try:
            yield b
        finally:
            b.close()


def test_the_page_shows_the_farm_and_its_buttons_retry_and_forget_failed_jobs(make_farm: Any, browser: Any) -> None:
    from playwright.sync_api import expect

    # Given a farm on SQLite: 3 jobs waiting on a queue nobody works, two failed jobs (one whose
    # path and payload carry HTML), a worker, and a dashboard with a token
    f = make_farm("sqlite", extra=NIGHTLY if upcoming else "")
    gate = f.tmp / f"gate {HOSTILE.replace('/', '|')}"
    out = gate / "out.txt"
    for _ in range(3):
        farm.dispatch(Noop(), queue="backlog")
    farm.dispatch_many([Noop() for _ in range(20)])
    hostile_id = farm.dispatch(Record(str(out), HOSTILE), tries=1)
    doomed_id = farm.dispatch(AlwaysFails(str(f.tmp / "af.txt")), tries=1)
    f.farmctl("work", "--stop-when-empty", "--queue", "default", check=True)
    assert f.store().count_failed() == 2
    worker = f.worker("--queue", "default")
    if hasattr(farm, "pause"):          # operations (issue 16): a paused queue is marked
        farm.pause("backlog")
    url = start_dashboard(f, TOKEN)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    other = browser.new_page()      # a second browser tab, never reloaded
    other.goto(url)
    expect(other.locator("#failed-total")).to_have_text("(2)")

    # Then the page shows the queues, the worker and the failed jobs as they are
    expect(page.locator('#queues tr[data-queue="backlog"] td.ready')).to_have_text("3")
    expect(page.locator('#queues tr[data-queue="default"] td.failed')).to_have_text("2")
    if hasattr(farm, "pause"):
        expect(page.locator('#queues tr[data-queue="backlog"] td.name .paused')).to_have_text("paused")
    expect(page.locator(f'#workers tr[data-pid="{worker.pid}"]')).to_have_count(1)
    expect(page.locator("#failed tbody tr")).to_have_count(2)
    hostile_row = page.locator(f'#failed tr[data-id="{hostile_id}"]')
    expect(hostile_row.locator("td.exception")).to_contain_text(HOSTILE.replace("/", "|"))
    expect(page.locator("#batches")).to_contain_text("No batches.")
    if upcoming:
        expect(page.locator('#schedule tr[data-name="nightly"]')).to_contain_text("0 3 * * *testjobs:Noopbacklog")
    if hasattr(f.store(), "counts_by_minute"):      # the last hour's jobs per minute: 20 done, 2 failed
        expect(page.locator("#chart rect.done title")).to_contain_text(": 20 done")
        expect(page.locator("#chart rect.failed title")).to_contain_text(": 2 failed")
    # and a hostile payload is text: shown as written, never parsed or run
    hostile_row.locator("td.job").click()
    expect(page.locator("#details-payload")).to_contain_text(json.dumps(HOSTILE)[1:-1])
    assert page.locator("main img, main script").count() == 0
    assert page.evaluate("window.pwned") is None
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # When the person searches by job name, only that job's entries are listed
    page.fill("#search-job", "AlwaysFails")
    page.click("#failed-search button")
    expect(page.locator("#failed tbody tr")).to_have_count(1)
    expect(page.locator("#failed tbody tr")).to_have_attribute("data-id", doomed_id)
    page.fill("#search-job", "")
    page.click("#failed-search button")
    expect(page.locator("#failed tbody tr")).to_have_count(2)

    # A button without a token asks for it; a wrong token is refused and nothing changes
    hostile_row.locator("button.retry").click()
    expect(page.locator("#message")).to_contain_text("enter the dashboard's token")
    page.fill("#token", "wrong")
    page.click("#token-form button[type=submit]")
    hostile_row.locator("button.retry").click()
    expect(page.locator("#message")).to_contain_text("the token was refused")
    assert f.store().count_failed() == 2

    # When the right token is entered and retry clicked (its directory now made), a worker runs it
    page.fill("#token", TOKEN)
    page.click("#token-form button[type=submit]")
    gate.mkdir()
    hostile_row.locator("button.retry").click()
    f.wait_for(lambda: out.exists() and out.read_text().startswith(HOSTILE), what="the retried job's output")
    expect(hostile_row).to_have_count(0)
    # and forget deletes the other entry
    page.locator(f'#failed tr[data-id="{doomed_id}"] button.forget').click()
    expect(page.locator("#failed > .empty")).to_be_visible()
    assert f.store().count_failed() == 0
    expect(page.locator("#failed-total")).to_have_text("(0)")
    # and the other tab, refreshing itself, shows it too
    expect(other.locator("#failed-total")).to_have_text("(0)")
    expect(other.locator('#queues tr[data-queue="backlog"] td.ready')).to_have_text("3")

    # When a batch of two jobs is dispatched, one for the worker and one on the unworked queue
    waiting = Noop()
    waiting.queue = "backlog"
    batch_id = farm.batch([Noop(), waiting], name="thumbs").dispatch()
    # Then the page shows the batch half done, with its progress bar
    box = page.locator(f'#batches .batch[data-id="{batch_id}"]')
    expect(box).to_contain_text("thumbs: 1 of 2 finished")
    expect(box.locator(".bar > div")).to_have_attribute("style", "width: 50%;")


def test_actions_need_the_token_and_a_dashboard_without_one_is_read_only(make_farm: Any) -> None:
    # Given a failed job and two dashboards: one with a token, one without
    f = make_farm("sqlite")
    job_id = farm.dispatch(AlwaysFails(str(f.tmp / "af.txt")), tries=1)
    f.farmctl("work", "--stop-when-empty", check=True)
    with_token, read_only = start_dashboard(f, TOKEN), start_dashboard(f, None)
    action = f"api/failed/{job_id}/forget"

    # Then an action without the token or with a wrong one is 401, on the read-only one 403
    assert http("POST", with_token + action)[0] == 401
    assert http("POST", with_token + action, token="wrong")[0] == 401
    code, doc = http("POST", read_only + action, token=TOKEN)
    assert (code, doc["error"]) == (403, "read-only: FARM_DASHBOARD_TOKEN is not set on the dashboard")
    assert f.store().count_failed() == 1
    # and reading needs no token on either
    for url in (with_token, read_only):
        code, doc = http("GET", url + f"api/failed/{job_id}")
        assert code == 200 and doc["payload"]["job"] == "testjobs:AlwaysFails"
        assert "RuntimeError: always" in doc["exception"]
    # Bad requests are answered with JSON, never a traceback
    assert http("GET", with_token + "api/failed?page=x") == (
        400, {"error": "page: expected a whole number from 0 to 10000, got 'x'"})
    assert http("GET", with_token + "api/failed/nope") == (404, {"error": "no failed job with id nope"})
    assert http("POST", with_token + "api/failed/nope/retry", token=TOKEN) == (
        404, {"error": "no failed job with id nope"})
    assert http("GET", with_token + "elsewhere") == (404, {"error": "no such page: /elsewhere"})
    assert http("POST", with_token + "api/status", token=TOKEN)[0] == 405
    assert http("PUT", with_token + action, token=TOKEN)[0] == 501
    # A page elsewhere cannot read it through a DNS name rebound to 127.0.0.1
    port = with_token.rstrip("/").rpartition(":")[2]
    assert http("GET", with_token + "api/status", host=f"evil.example:{port}") == (
        403, {"error": "this dashboard does not answer for Host 'evil.example' (farmctl dashboard --allow-host NAME)"})
    assert http("GET", with_token + "api/status", host=f"localhost:{port}")[0] == 200
    # The right token forgets it
    assert http("POST", with_token + action, token=TOKEN) == (200, {"id": job_id, "forgotten": 1})
    assert f.store().count_failed() == 0
    # /api/status never waits on the database: with the SQLite file locked it answers at once,
    # with the figures read before the lock
    as_of = wait_until(lambda: status(with_token)["as_of"], 10, "a first snapshot")
    db = sqlite3.connect(f.tmp / "farm.db", isolation_level=None, timeout=10)
    db.execute("BEGIN EXCLUSIVE")
    try:
        held, seen = time.monotonic(), set()
        while time.monotonic() - held < 1.5:
            started = time.monotonic()
            doc = status(with_token)
            assert time.monotonic() - started < 0.5
            if started - held > 0.5:        # a reading under way when the lock came has ended
                seen.add(doc["as_of"])
            time.sleep(0.05)
        assert len(seen) == 1 and doc["as_of"] >= as_of     # nothing new was read while locked
    finally:
        db.execute("ROLLBACK")
        db.close()
    wait_until(lambda: status(with_token)["as_of"] > doc["as_of"], 10, "a snapshot after the lock")
    # /metrics is Prometheus text
    code, text = http("GET", with_token + "metrics")
    assert code == 200 and isinstance(text, str)
    if METRICS:
        assert "# TYPE farm_queue_jobs gauge" in text
    # TERM (supervisord, Kubernetes) stops a dashboard with status 0
    f.procs[-1].terminate()
    assert f.procs[-1].wait(10) == 0


@pytest.mark.parametrize("backend", ["redis", "amqp"])
def test_the_api_reads_and_retries_on_other_backends(make_farm: Any, backend: str) -> None:
    # Given a farm with two waiting jobs and one failed job
    f = make_farm(backend)
    for _ in range(2):
        farm.dispatch(Noop(), queue="backlog")
    job_id = farm.dispatch(AlwaysFails(str(f.tmp / "af.txt")), tries=1)
    f.farmctl("work", "--stop-when-empty", "--queue", "default", check=True)
    url = start_dashboard(f, TOKEN)

    # Then /api/status counts them, with no batches yet
    doc = wait_until(lambda: (d := status(url))["as_of"] and d, 15, "a first snapshot")
    assert doc["queues"]["backlog"]["ready"] == 2
    assert doc["queues"]["default"]["failed"] == 1
    assert doc["batches"] == []
    code, page = http("GET", url + "api/failed?queue=default")
    assert code == 200 and [x["id"] for x in page["items"]] == [job_id] and page["total"] == 1
    # When it is retried through the API, it is ready again under the same id
    assert http("POST", url + f"api/failed/{job_id}/retry", token=TOKEN) == (200, {"id": job_id, "retried": 1})
    wait_until(lambda: (q := status(url)["queues"]["default"])["ready"] == 1 and q["failed"] == 0,
               10, "the retried job back on its queue")


def test_the_page_shows_the_pipeline_of_each_worker_and_supervisords_programs(sup: Any, browser: Any) -> None:  # noqa: F811
    from playwright.sync_api import expect

    # Given a rendered pipeline of one worker run by supervisord, and a dashboard
    sup.write("""
        w:
          queues: [default]
          numprocs: 1
          environment: ENV
    """)
    sup.start()
    pid = sup.running("w")["w:w_00"]
    procs: list[Any] = []
    try:
        url = dashboard_on(sup.env(), sup.root, procs, None)
        page = browser.new_page()
        page.goto(url)
        # Then the worker is listed with its pipeline, and supervisord's program with its state
        worker = page.locator(f'#workers tr[data-pid="{pid}"]')
        expect(worker.locator("td").first).to_have_text("w")
        expect(page.locator("#supervisor tbody tr")).to_have_text(["w:w_00RUNNING" + str(pid)])
        expect(page.locator("#supervisor-none")).to_be_hidden()
        # When a job fails and a button is clicked on this dashboard (no token set), it says so
        sup.app()
        job_id = farm.dispatch(AlwaysFails(str(sup.root / "af.txt")), tries=1)
        page.fill("#token", TOKEN)
        page.click("#token-form button[type=submit]")
        expect(page.locator("#token-state")).to_have_text("token set for this tab")
        page.locator(f'#failed tr[data-id="{job_id}"] button.retry').click()
        expect(page.locator("#message")).to_contain_text("this dashboard is read-only")
        assert sup.app().store("main").count_failed() == 1
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
            p.stdout.close()


def test_the_page_finds_a_job_cancels_it_and_pauses_and_resumes_a_queue(make_farm: Any, browser: Any) -> None:
    from playwright.sync_api import expect

    # Given a worker on queue `mail`, a job delayed by an hour, and a dashboard with a token
    f = make_farm("sqlite")
    out = f.tmp / "out.txt"
    later = farm.dispatch(Record(str(out), "later"), queue="mail", delay=3600)
    farm.dispatch(Record(str(out), "keep"), queue="mail", delay=3600)      # keeps `mail` listed
    worker = f.worker("--queue", "mail", "--sleep", "0.2")
    url = start_dashboard(f, TOKEN)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.fill("#token", TOKEN)
    page.click("#token-form button[type=submit]")

    # When the person looks the delayed job up, the page says where it is
    page.fill("#lookup-id", later)
    page.click("#lookup-form button")
    expect(page.locator("#lookup-result td.state")).to_have_text("delayed")
    expect(page.locator("#lookup-result td.queue")).to_have_text("mail")
    # and cancel removes it: it is no longer anywhere, and never runs
    page.locator("#lookup-result button.cancel").click()
    expect(page.locator("#message")).to_contain_text(f"job {later} cancelled")
    assert farm.job_status(later) is None
    code, doc = http("GET", url + f"api/jobs/{later}")
    assert code == 404, doc
    page.fill("#lookup-id", "no-such-id")
    page.click("#lookup-form button")
    expect(page.locator("#message")).to_contain_text("no job with id no-such-id")

    # When the person pauses `mail`, the worker takes no job from it
    expect(page.locator('#queues tr[data-queue="mail"] button.pause')).to_have_count(1)
    page.locator('#queues tr[data-queue="mail"] button.pause').click()
    expect(page.locator('#queues tr[data-queue="mail"] td.name .paused')).to_have_text("paused")
    assert farm.paused() == ["mail"]
    time.sleep(1.2)                     # workers stop taking from a paused queue within a second
    farm.dispatch(Record(str(out), "now"), queue="mail")
    time.sleep(1.0)
    assert not out.exists()
    # and resume lets it run
    page.locator('#queues tr[data-queue="mail"] button.resume').click()
    f.wait_for(lambda: out.exists() and out.read_text().startswith("now"), what="the job after resume")
    assert farm.paused() == [] and worker.poll() is None


def test_job_cancel_and_pause_routes_need_the_token_and_say_why_they_refuse(make_farm: Any) -> None:
    f = make_farm("sqlite")
    gate = f.tmp / "gate"
    from testjobs import Timed

    running = farm.dispatch(Timed(str(f.tmp / "t.txt"), "t", gate=str(gate)))
    f.worker("--sleep", "0.2")
    f.wait_for(lambda: (f.tmp / "t.txt.started").exists(), what="the job to start")
    f.wait_for(lambda: f.store().workers(), what="the worker's first heartbeat")
    url = start_dashboard(f, TOKEN)
    for path in (f"api/jobs/{running}/cancel", "api/queues/default/pause", "api/queues/default/resume"):
        assert http("POST", url + path)[0] == 401
        assert http("POST", url + path, token="wrong")[0] == 401
        assert http("GET", url + path)[0] == 405
    code, doc = http("GET", url + f"api/jobs/{running}")
    assert code == 200 and doc["state"] == "reserved" and doc["worker"] == f.store().workers()[0]["id"], doc
    code, doc = http("POST", url + f"api/jobs/{running}/cancel", token=TOKEN)
    assert code == 409 and "has started" in doc["error"], doc      # started: refused, and it finishes
    gate.touch()
    f.wait_for(lambda: (f.tmp / "t.txt").exists(), what="the running job to finish")
    read_only = dashboard_on(f.env(), f.tmp, f.procs, None)
    assert http("POST", read_only + "api/queues/default/pause")[0] == 403
    assert farm.paused() == []
