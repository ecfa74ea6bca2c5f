"""The scheduler's ticks (real croniter and zoneinfo, explicit instants), its loop, the manifest's
`schedule:` and the scheduler's rendered supervisord program and systemd unit."""
from __future__ import annotations

import datetime as dt
import io
import textwrap
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from farm import manifest, render, schedule
from farm.errors import DriverUnavailable, ManifestError
from farm.log import Log
from farm.schedule import Entry, Scheduler

NY, KYIV = ZoneInfo("America/New_York"), ZoneInfo("Europe/Kyiv")
FARMCTL = "/opt/farm/bin/farmctl"


def at(zone, *fields, fold=0) -> float:
    return dt.datetime(*fields, tzinfo=zone, fold=fold).timestamp()


def ticks(cron: str, zone: str, after: float, n: int) -> list[schedule.Tick]:
    it = Entry(name="e", cron=cron, job="m:J", timezone=zone).ticks(after)
    return [next(it) for _ in range(n)]


def test_a_0230_entry_fires_once_on_a_spring_forward_day_when_the_clocks_jump():
    # Given New York's spring-forward day (2026-03-08: 02:00 EST becomes 03:00 EDT; 02:30 does not exist)
    # When the ticks of a 02:30 entry after noon the day before are computed
    got = ticks("30 2 * * *", "America/New_York", at(NY, 2026, 3, 7, 12, 0), 3)
    # Then that day it fires once, at 03:00 EDT, and at 02:30 on the days around it
    assert [t.label for t in got] == ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00",
                                      "2026-03-10T02:30:00-04:00"]
    assert got[0].key == "2026-03-08T02:30"


def test_a_0130_entry_fires_once_on_a_fall_back_day_at_the_first_0130():
    # Given New York's fall-back day (2026-11-01: 01:00-01:59 happens twice, EDT then EST)
    got = ticks("30 1 * * *", "America/New_York", at(NY, 2026, 10, 31, 12, 0), 2)
    # Then the entry fires once that day, at the first 01:30 (EDT), and the next day at 01:30 EST
    assert [t.label for t in got] == ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
    # And a scheduler that starts during the second 01:xx hour finds no second 01:30 that day:
    # the wall time's key was the first one's
    second = ticks("30 1 * * *", "America/New_York", at(NY, 2026, 11, 1, 1, 10, fold=1), 1)
    assert second[0].label == "2026-11-02T01:30:00-05:00"
    assert got[0].key == "2026-11-01T01:30"


@pytest.mark.parametrize("start, expected", [
    # Kyiv springs forward on 2026-03-29 (03:00 EET becomes 04:00 EEST): 03:30 fires at 04:00
    ((2026, 3, 28, 12, 0), ["2026-03-29T04:00:00+03:00", "2026-03-30T03:30:00+03:00"]),
    # and falls back on 2026-10-25 (04:00 EEST becomes 03:00 EET): 03:30 fires once, the first time
    ((2026, 10, 24, 12, 0), ["2026-10-25T03:30:00+03:00", "2026-10-26T03:30:00+02:00"]),
])
def test_kyiv_dst_days_give_one_tick_each(start, expected):
    assert [t.label for t in ticks("30 3 * * *", "Europe/Kyiv", at(KYIV, *start), 2)] == expected


def test_ticks_that_fall_in_a_spring_forward_gap_fire_once_not_in_a_burst():
    # Given an every-30-minutes entry on the spring-forward day (02:00, 02:30 and 03:00 name one instant)
    got = ticks("*/30 * * * *", "America/New_York", at(NY, 2026, 3, 8, 1, 10), 4)
    # Then 03:00 EDT fires once, under the first key
    assert [(t.key, t.label) for t in got] == [
        ("2026-03-08T01:30", "2026-03-08T01:30:00-05:00"), ("2026-03-08T02:00", "2026-03-08T03:00:00-04:00"),
        ("2026-03-08T03:30", "2026-03-08T03:30:00-04:00"), ("2026-03-08T04:00", "2026-03-08T04:00:00-04:00")]


def test_the_repeated_hour_of_a_fall_back_day_is_not_run_twice_by_an_every_30_minutes_entry():
    got = ticks("*/30 * * * *", "America/New_York", at(NY, 2026, 11, 1, 0, 10), 5)
    assert [t.label for t in got] == ["2026-11-01T00:30:00-04:00", "2026-11-01T01:00:00-04:00",
                                      "2026-11-01T01:30:00-04:00", "2026-11-01T02:00:00-05:00",
                                      "2026-11-01T02:30:00-05:00"]


def test_every_ticks_fall_on_multiples_of_the_period_since_the_epoch_whenever_a_scheduler_starts():
    for start in (1_000_000.0, 1_000_007.3, 1_000_019.999):
        it = Entry(name="e", cron="@every 30s", job="m:J", every=30).ticks(start)
        assert [next(it).at for _ in range(3)] == [1_000_020.0, 1_000_050.0, 1_000_080.0]
    # a tick exactly at the start is not the scheduler's: it fell before it ran
    it = Entry(name="e", cron="@every 1h", job="m:J", every=3600).ticks(7200.0)
    assert (next(it).at, next(it).key) == (10800.0, "14400")


def test_upcoming_gives_each_entry_with_its_next_fire_times_in_its_timezone(tmp_path):
    m = manifest.load(_project(tmp_path, """\
        schedule:
          nightly: {cron: "0 2 * * *", job: "app.jobs:Report", args: {kind: daily}, queue: reports, timezone: Europe/Kyiv}
          beat: {cron: "@every 30s", job: "app.jobs:Ping"}
        """))
    rows = schedule.upcoming(m, now=at(KYIV, 2026, 12, 4, 12, 0))
    assert rows == [
        {"name": "nightly", "cron": "0 2 * * *", "job": "app.jobs:Report", "queue": "reports",
         "connection": "database", "timezone": "Europe/Kyiv",
         "next": ["2026-12-05T02:00:00+02:00", "2026-12-06T02:00:00+02:00", "2026-12-07T02:00:00+02:00"]},
        {"name": "beat", "cron": "@every 30s", "job": "app.jobs:Ping", "queue": None,
         "connection": "database", "timezone": "UTC",
         "next": ["2026-12-04T10:00:30+00:00", "2026-12-04T10:01:00+00:00", "2026-12-04T10:01:30+00:00"]},
    ]


# -- the loop ------------------------------------------------------------------------------
class Store:
    """A store's claim as the drivers make it: the first caller of a name wins."""

    def __init__(self) -> None:
        self.claimed: set[str] = set()
        self.down = False

    def claim(self, entry: Entry, tick: schedule.Tick) -> bool:
        if self.down:
            raise DriverUnavailable("connection 'main': cannot connect: refused")
        name = tick.claim_name(entry)
        if name in self.claimed:
            return False
        self.claimed.add(name)
        return True


def _scheduler(store: Store, started: float, out: list[str], log: io.StringIO, every: int = 10) -> Scheduler:
    entry = Entry(name="beat", cron=f"@every {every}s", job="m:J", every=every)
    return Scheduler([entry], started, store.claim, lambda e, t: out.append(t.key) or t.key, Log(log))


def test_two_schedulers_dispatch_each_tick_once_and_a_late_start_replays_nothing():
    # Given a scheduler started at 1000 and a second one started at 1032, on one store
    store, out, log = Store(), [], io.StringIO()
    a = _scheduler(store, 1000.0, out, log)
    # When the first runs at each second to 1040 and the second from 1032
    b = None
    for now in range(1001, 1041):
        a.run_once(float(now))
        if now == 1032:
            b = _scheduler(store, float(now), out, log)
        if b:
            b.run_once(float(now))
    # Then each tick from 1010 on was dispatched once, and the second found none before its start
    assert out == ["1010", "1020", "1030", "1040"]
    assert b.next["beat"].at == 1050.0


def test_a_held_up_scheduler_dispatches_only_the_latest_due_tick_and_logs_the_skipped_ones():
    store, out, log = Store(), [], io.StringIO()
    s = _scheduler(store, 1000.0, out, log)
    s.run_once(1035.0)            # 1010, 1020 and 1030 are due at once
    assert out == ["1030"]
    assert "schedule.skipped entry=beat ticks=2 first=1970-01-01T00:16:50+00:00" in log.getvalue()
    s.run_once(1040.5)
    assert out == ["1030", "1040"]
    assert "schedule.dispatch entry=beat tick=1970-01-01T00:17:10+00:00 id=1030 late=" in log.getvalue()


def test_a_tick_found_long_after_its_time_is_skipped_not_dispatched():
    # Given an hourly scheduler whose process was suspended past its tick at 3600
    store, out, log = Store(), [], io.StringIO()
    s = _scheduler(store, 0.0, out, log, every=3600)
    # When it wakes more than LATE seconds after the tick
    s.run_once(3600 + schedule.LATE + 1)
    # Then the tick is logged as skipped, not dispatched, and the next one is awaited
    assert out == [] and "schedule.skipped entry=beat ticks=1" in log.getvalue()
    assert s.wake_at() == 7200.0


def test_a_failing_claim_is_logged_and_the_next_tick_tries_again():
    store, out, log = Store(), [], io.StringIO()
    s = _scheduler(store, 1000.0, out, log)
    store.down = True
    s.run_once(1010.0)
    store.down = False
    s.run_once(1020.0)
    assert out == ["1020"]
    assert "schedule.error entry=beat tick=1970-01-01T00:16:50+00:00 error=\"connection 'main': cannot connect: refused\"" \
        in log.getvalue()
    assert "Traceback" not in log.getvalue()


# -- the manifest ----------------------------------------------------------------------------
def _project(tmp_path: Path, body: str, imports: str = "[app.jobs]") -> Path:
    (tmp_path / "conf").mkdir(exist_ok=True)
    path = tmp_path / "conf" / "farm.yaml"
    path.write_text(f"imports: {imports}\nconnections:\n  database: {{driver: database, url: 'sqlite:///var/farm.db'}}\n"
                    "  now: {driver: sync}\n" + textwrap.dedent(body))
    return path


def test_a_bad_cron_timezone_job_or_connection_is_a_manifest_error_with_its_line(tmp_path):
    path = _project(tmp_path, """\
        schedule:
          a: {cron: "0 2 * *", job: "app.jobs:A"}
          b: {cron: "@every 0s", job: "app.jobs:B"}
          c: {cron: "0 0 30 2 *", job: "app.jobs:C", timezone: Mars/Olympus}
          d: {cron: "* * * * *", job: "other:D"}
          e: {cron: "* * * * *", job: "no name"}
          f: {cron: "* * * * *", job: "app.jobs:F", connection: now}
          g: {cron: "* * * * *", job: "app.jobs:G", colour: red, args: [1]}
        """)
    with pytest.raises(ManifestError) as e:
        manifest.load(path)
    text = "\n".join(e.value.problems)
    for line, problem in [(6, "schedule.a.cron: not a five-field cron expression"),
                          (7, "schedule.b.cron: expected '@every N'"),
                          (8, "schedule.c.cron: '0 0 30 2 *' never fires"),
                          (8, "schedule.c.timezone: unknown timezone 'Mars/Olympus'"),
                          (9, "schedule.d.job: its module 'other' is not listed under imports: (app.jobs)"),
                          (10, "schedule.e.job: expected module:Qualname"),
                          (11, "schedule.f.connection: a sync connection has no store"),
                          (12, "schedule.g.colour: unknown key"),
                          (12, "schedule.g.args: expected a mapping")]:
        assert f"farm.yaml:{line}: {problem}" in text, (problem, text)


def test_a_pipeline_cannot_take_the_schedulers_program_name(tmp_path):
    path = _project(tmp_path, "pipelines:\n  farm-scheduler: {}\nschedule:\n  a: {cron: '@every 1m', job: 'app.jobs:A'}\n")
    with pytest.raises(ManifestError, match="pipelines.farm-scheduler: 'farm-scheduler' is the scheduler's own program"):
        manifest.load(path)


# -- rendering -------------------------------------------------------------------------------
SCHEDULE = "schedule:\n  beat: {cron: '@every 30s', job: 'app.jobs:Ping'}\n"


def test_render_adds_the_scheduler_with_a_schedule_and_removes_it_when_the_schedule_goes(tmp_path):
    # Given a rendered manifest with a pipeline and a schedule
    path = _project(tmp_path, "pipelines:\n  mail: {}\n" + SCHEDULE)
    m = manifest.load(path)
    render.apply(m, render.plan(m, FARMCTL))
    program = tmp_path / "supervisor" / "conf.d" / "farm-scheduler.conf"
    unit = tmp_path / "systemd" / "farm-scheduler.service"
    # Then the scheduler has its own program (one process) and unit
    text = program.read_text()
    assert "[program:farm-scheduler]\n" in text and "numprocs=1\n" in text and "autorestart=true\n" in text
    assert f"command={FARMCTL} schedule --config {path}\n" in text
    assert "Restart=always\n" in unit.read_text() and f"ExecStart={FARMCTL} schedule --config {path}\n" in unit.read_text()
    # When the schedule is taken out and the manifest rendered again
    path.write_text(path.read_text().replace(SCHEDULE, ""))
    m = manifest.load(path)
    plan = render.plan(m, FARMCTL)
    render.apply(m, plan)
    # Then both files are gone and the pipeline's stay
    assert sorted(plan.remove) == [program, unit]
    assert not program.exists() and not unit.exists()
    assert (tmp_path / "supervisor" / "conf.d" / "mail.conf").exists()


def test_the_scheduler_program_goes_where_the_system_supervisords_include_finds_it(tmp_path):
    etc = tmp_path / "etc" / "supervisord.d"
    path = _project(tmp_path, f"supervisor: {{include: '{etc}/*.ini', user: www-data}}\n" + SCHEDULE)
    files = render.render(manifest.load(path), FARMCTL)
    text = files[etc / "farm-scheduler.ini"]
    assert "user=www-data\n" in text and "process_name=%(program_name)s\n" in text
    assert "User=www-data\n" in files[tmp_path / "systemd" / "farm-scheduler.service"]


def test_a_tick_whose_dispatch_failed_is_given_up_and_dispatched_once_later_by_either_scheduler():
    # Given two schedulers on one store, whose dispatches fail while the broker is away
    store, out, log = Store(), [], io.StringIO()
    broker_up = {"up": False}

    def dispatch(e: Entry, t: schedule.Tick) -> str:
        if not broker_up["up"]:
            raise DriverUnavailable("connection 'rabbit': broker away")
        out.append(t.key)
        return t.key

    def unclaim(e: Entry, t: schedule.Tick) -> None:
        store.claimed.discard(t.claim_name(e))

    entry = Entry(name="beat", cron="@every 10s", job="m:J", every=10)
    a = Scheduler([entry], 1000.0, store.claim, dispatch, Log(log), unclaim=unclaim)
    b = Scheduler([entry], 1000.0, store.claim, dispatch, Log(log), unclaim=unclaim)
    # When the tick at 1010 fails, and the broker is back two seconds later
    a.run_once(1010.0)
    b.run_once(1010.0)
    assert out == [] and "tried again" in log.getvalue()
    broker_up["up"] = True
    a.run_once(1012.0)
    b.run_once(1012.0)
    # Then it is dispatched exactly once; a tick still failing past LATE is given up with a line
    assert len(out) == 1
    broker_up["up"] = False
    a.run_once(1020.0)
    a.run_once(1020.0 + schedule.LATE + 1)
    assert "given up" in log.getvalue()
