"""Real `farmctl schedule` processes on one store: each tick dispatched once, TERM, no replay."""
from __future__ import annotations

import datetime as dt
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import BACKENDS, Farm, wait_until
from test_supervisor import Supervised, sup  # noqa: F401  (the fixture)

DISPATCH = re.compile(r"^(\S+) INFO \d+ schedule\.dispatch entry=beat tick=(\S+) id=(\S+)", re.M)


def _schedule(f: Farm, every: str = "1s") -> str:
    return (f"schedule:\n  beat: {{cron: '@every {every}', job: 'testjobs:Record', "
            f"args: {{path: '{f.tmp / 'out.txt'}', tag: beat}}}}\n")


def _farm(make_farm: Any, backend: str) -> Farm:
    f = make_farm(backend)
    f.manifest.write_text(f.manifest.read_text() + _schedule(f))
    return f


def _start(f: Farm, n: int) -> tuple[subprocess.Popen[str], Path]:
    log = f.tmp / f"scheduler{n}.log"
    p = subprocess.Popen([sys.executable, "-m", "farm", "schedule"], cwd=f.tmp, env=f.env(),
                         stdout=subprocess.DEVNULL, stderr=log.open("w"), text=True)
    f.procs.append(p)
    return p, log


def _started(log: Path) -> float:
    """When the scheduler took its start (the log line's time)."""
    line = next(x for x in log.read_text().splitlines() if " schedule.start " in x)
    return _time(line.split()[0])


def _time(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _dispatches(logs: list[Path]) -> list[tuple[float, float, str]]:
    """(tick, when logged, job id) of every dispatch in these logs."""
    return [(_time(tick), _time(logged), job_id) for log in logs
            for logged, tick, job_id in DISPATCH.findall(log.read_text())]


def _stop(p: subprocess.Popen[str]) -> float:
    """TERM, then the seconds until it exited; it must exit 0."""
    sent = time.monotonic()
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0
    return time.monotonic() - sent


def _ready(f: Farm) -> int:
    return sum(c["ready"] or 0 for c in f.queue().counts().values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_schedulers_dispatch_every_tick_exactly_once_within_a_second(make_farm, backend):
    # Given two schedulers on one store with an @every 1s entry
    f = _farm(make_farm, backend)
    started = [_start(f, n) for n in range(2)]
    logs = [log for _, log in started]
    explain = lambda: "\n".join(log.read_text() for log in logs)      # noqa: E731
    wait_until(lambda: all(" schedule.start " in log.read_text() for log in logs), 30, "two schedulers",
               explain=explain)
    all_up = max(_started(log) for log in logs)
    # When they run together for two ticks (each tries every one)
    wait_until(lambda: sum(t > all_up for t, _, _ in _dispatches(logs)) >= 2, 10, "two ticks", explain=explain)
    # Then TERM stops each within a second, exit status 0
    times = [_stop(p) for p, _ in started]
    assert all(t < 1.0 for t in times), times
    # And every tick from the first to the last was dispatched once, within a second of its
    # time, and the queue holds exactly those jobs
    got = _dispatches(logs)
    ticks = sorted(t for t, _, _ in got)
    assert len(ticks) == len(set(ticks)), explain()
    assert ticks == [ticks[0] + i for i in range(len(ticks))], explain()
    assert all(logged - tick < 1.0 for tick, logged, _ in got), explain()
    assert len(set(job_id for _, _, job_id in got)) == len(got)
    wait_until(lambda: _ready(f) == len(got), 10, f"{len(got)} jobs in the queue", explain=lambda: str(_ready(f)))



def test_a_scheduler_started_later_does_not_replay_the_ticks_it_missed(make_farm):
    # Given a scheduler that dispatched a tick and was stopped
    f = _farm(make_farm, "sqlite")
    a, a_log = _start(f, 0)
    wait_until(lambda: _dispatches([a_log]), 30, "a first tick", explain=a_log.read_text)
    _stop(a)
    stopped = time.time()
    # When ticks fall while no scheduler runs, and then a second one starts
    time.sleep(2.0)
    b, b_log = _start(f, 1)
    wait_until(lambda: _dispatches([b_log]), 30, "the second scheduler's first tick", explain=b_log.read_text)
    _stop(b)
    # Then the second dispatched only ticks after its start: those in between are not in the queue
    a_ticks = [t for t, _, _ in _dispatches([a_log])]
    b_ticks = [t for t, _, _ in _dispatches([b_log])]
    assert max(a_ticks) <= stopped and min(b_ticks) > _started(b_log) >= stopped + 2.0
    assert _ready(f) == len(a_ticks) + len(b_ticks)


def test_a_bad_cron_timezone_job_or_args_stops_the_scheduler_with_exit_2_and_the_line(make_farm):
    # Given a manifest whose entries have a bad cron and an unknown timezone
    f = make_farm("sqlite")
    base = f.manifest.read_text()
    first = len(base.splitlines()) + 2
    f.manifest.write_text(base + "schedule:\n  a: {cron: '61 * * * *', job: 'testjobs:Record'}\n"
                          "  b: {cron: '@every 1s', job: 'testjobs:Record', timezone: Nowhere/Else}\n")
    # Then `farmctl schedule` lists both with their lines and exits 2
    cp = f.farmctl("schedule", timeout=30)
    assert cp.returncode == 2, cp.stderr
    assert f"farm.yaml:{first}: schedule.a.cron: not a five-field cron expression" in cp.stderr
    assert f"farm.yaml:{first + 1}: schedule.b.timezone: unknown timezone 'Nowhere/Else'" in cp.stderr
    # Given a job its module does not define, and args its class does not take
    f.manifest.write_text(base + "schedule:\n  c: {cron: '@every 1s', job: 'testjobs:Nope'}\n"
                          "  d: {cron: '@every 1s', job: 'testjobs:Record', args: {colour: red}}\n")
    # Then the scheduler refuses to start, naming each entry's line, with no traceback
    cp = f.farmctl("schedule", timeout=30)
    assert cp.returncode == 2, cp.stderr
    assert f"farm.yaml:{first}: schedule.c.job: testjobs defines no job 'Nope'" in cp.stderr
    assert f"farm.yaml:{first + 1}: schedule.d.args: testjobs:Record cannot be made from them: TypeError" in cp.stderr
    assert "Traceback" not in cp.stderr and " schedule.start " not in cp.stderr


def test_supervisord_runs_the_rendered_scheduler_and_drops_it_when_the_schedule_goes(sup):  # noqa: F811
    # Given a rendered farm with one worker and an @every 1s entry, under supervisord
    sup.write("w: {queues: [default], sleep: 0.2, environment: ENV}")
    plain = sup.manifest.read_text()
    sup.manifest.write_text(plain + "schedule:\n  beat: {cron: '@every 1s', job: 'testjobs:Record', "
                            f"args: {{path: '{sup.out}', tag: beat}}}}\n")
    sup.start()
    # Then supervisord runs farm-scheduler and its ticks' jobs run on the worker
    sup.wait_for(lambda: sup.states().get("farm-scheduler", ("",))[0] == "RUNNING", what="farm-scheduler")
    sup.wait_for(lambda: sup.tags()["beat"] >= 2, what="two ticks run by the worker")
    # When the schedule is taken out, rendered and `supervisorctl update`d
    sup.manifest.write_text(plain)
    sup.farmctl("render")
    assert not (sup.root / "supervisor" / "conf.d" / "farm-scheduler.conf").exists()
    sup.ctl("update")
    # Then the scheduler is gone and the worker stays
    sup.wait_for(lambda: "farm-scheduler" not in sup.states(), what="farm-scheduler removed")
    assert sup.running("w")


def test_an_edited_manifest_is_read_again_and_a_broken_one_leaves_the_entries_as_they_were(make_farm):
    # Given a running scheduler with one @every 1s entry
    f = _farm(make_farm, "sqlite")
    p, log = _start(f, 0)
    wait_until(lambda: _dispatches([log]), 30, "a first tick", explain=log.read_text)
    plain = f.manifest.read_text()
    # When an entry is added to the manifest
    f.manifest.write_text(plain + "  other: {cron: '@every 1s', job: 'testjobs:Noop'}\n")
    # Then it is dispatched too, without a restart
    wait_until(lambda: " schedule.dispatch entry=other " in log.read_text(), 15, "the new entry's tick",
               explain=log.read_text)
    # When the manifest is broken
    f.manifest.write_text(plain.replace("@every 1s", "@every never"))
    wait_until(lambda: " ERROR " in log.read_text(), 15, "the reload's error", explain=log.read_text)
    # Then the problem is logged with its line and the entries go on
    text = log.read_text()
    assert "schedule.reload error=" in text and "schedule.beat.cron: expected '@every N'" in text
    before = len(_dispatches([log]))
    wait_until(lambda: len(_dispatches([log])) > before, 10, "a tick after the broken edit", explain=log.read_text)
    assert _stop(p) < 1.0 and "Traceback" not in log.read_text()


def test_ticks_while_the_database_is_down_are_logged_and_the_next_tick_after_it_is_back_is_dispatched(make_farm):
    from sqlalchemy.engine import make_url

    from conftest import PG_URL
    from tcpproxy import Proxy, free_port

    # Given a scheduler whose PostgreSQL is down (a proxy not yet listening)
    make_farm("postgresql")                    # checks the server is there (fails under CI if not)
    real = make_url(PG_URL)
    proxy = Proxy(free_port(), (real.host or "127.0.0.1", real.port or 5432))
    f = make_farm("sqlite")
    table = "sched" + uuid.uuid4().hex[:8]
    f.manifest.write_text(
        "imports: [testjobs]\ndefault: main\nconnections:\n  main:\n    driver: database\n"
        f"    url: {real.set(port=proxy.port).render_as_string(hide_password=False)}\n"
        f"    table: {table}\n    failed_table: f{table}\n" + _schedule(f))
    p, log = _start(f, 0)
    try:
        # Then each tick's failure is logged, and the scheduler goes on
        wait_until(lambda: log.read_text().count(" schedule.error ") >= 2, 30, "two failed ticks",
                   explain=log.read_text)
        assert p.poll() is None
        # When the database comes back, the next tick is dispatched
        proxy.start()
        wait_until(lambda: _dispatches([log]), 30, "a tick after the database is back", explain=log.read_text)
        assert _stop(p) < 1.0
        assert "Traceback" not in log.read_text() and "detail=\"not claimed; the next tick tries again\"" \
            in log.read_text()
    finally:
        proxy.close()
