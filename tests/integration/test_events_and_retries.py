"""Issue 15: `farm.on` events, `farm.SkipRetry` and `tries = 0`, with real worker processes.

The handlers and jobs are in tests/support/miscjobs.py, which the manifest lists under
`imports:` so a worker registers its handlers when it starts.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import farm
from conftest import ROOT, SUPPORT, Farm


def with_misc(f: Farm) -> Farm:
    """The farm's manifest with miscjobs under `imports:` as well."""
    f.manifest.write_text(f.manifest.read_text().replace("imports: [testjobs]", "imports: [testjobs, miscjobs]", 1))
    f.app = farm.configure(f.manifest)
    return f


def drain(f: Farm, *args: str) -> str:
    """Run a worker until no job is ready; its stderr (the log)."""
    w = f.worker("--stop-when-empty", "--backoff", "0", *args)
    _, err = w.communicate(timeout=60)
    assert w.returncode == 0, err
    return err


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_event_handlers_see_every_attempt_and_a_handler_that_raises_changes_nothing(make_farm, concurrency):
    # Given handlers for before, after and failing (and one that always raises) in an imports: module
    f = with_misc(make_farm("sqlite"))
    import miscjobs

    ok_path, bad_path = f.tmp / "ok.txt", f.tmp / "bad.txt"
    ok = farm.dispatch(miscjobs.Watched(str(ok_path)))
    bad = farm.dispatch(miscjobs.Watched(str(bad_path), succeed_on=99))     # tries = 2

    # When a worker (one thread, or job threads) runs both jobs
    err = drain(f, "--concurrency", concurrency)

    # Then `before` came before each handle(), `after` after the success, `failing` once at the end
    assert f.lines(ok_path) == [f"before 1 default main {ok}", "handle 1", f"after 1 default main {ok}"]
    assert f.lines(bad_path) == [f"before 1 default main {bad}", "handle 1", f"before 2 default main {bad}",
                                 "handle 2", f"failing 2 default main {bad} ValueError"]
    # and each raising handler was logged with its exception, the jobs settled as without it
    assert err.count("event.error") == 5, err
    assert "RuntimeError: handler boom at before" in err and "RuntimeError: handler boom at failing" in err
    assert [e.id for e in f.store().failed()] == [bad]
    assert "job.done" in err and f.queue().counts().get("default", {}).get("ready", 0) == 0


def test_events_fire_in_dispatch_sync_and_on_the_async_driver(tmp_path: Path):
    # Given a process whose default connection is async and whose imports register the handlers
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "farm.yaml").write_text(
        "imports: [testjobs, miscjobs]\ndefault: dev\nconnections:\n  dev: {driver: async}\n")
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""\
        import farm, miscjobs
        farm.dispatch_sync(miscjobs.Watched({str(tmp_path / 'sync.txt')!r}, succeed_on=0))
        farm.dispatch(miscjobs.Watched({str(tmp_path / 'async.txt')!r}, succeed_on=99))
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(PYTHONPATH=os.pathsep.join([str(SUPPORT), str(ROOT)]), FARM_CONFIG=str(tmp_path / "conf" / "farm.yaml"))

    # When it runs one job with dispatch_sync and dispatches a failing one on the async pool
    cp = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=60)

    # Then both saw their events (the async job's queued jobs are finished before the exit)
    assert cp.returncode == 0, cp.stderr
    sync_lines = (tmp_path / "sync.txt").read_text().splitlines()
    assert [line.split()[0] for line in sync_lines] == ["before", "handle", "after"]
    async_lines = (tmp_path / "async.txt").read_text().splitlines()
    assert [line.split()[0] for line in async_lines] == ["before", "handle", "before", "handle", "failing"]
    assert async_lines[-1].split()[3] == "dev" and async_lines[-1].endswith("ValueError")
    assert cp.stderr.count("event.error") == 2 + 3, cp.stderr


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql", "amqp"])
def test_a_job_that_raises_skip_retry_fails_at_once_and_its_failed_hook_runs(make_farm, backend):
    # Given a job with five tries that raises farm.SkipRetry
    f = with_misc(make_farm(backend))
    import miscjobs

    job_id = farm.dispatch(miscjobs.Skips(str(f.out)))

    # When a worker runs it
    err = drain(f)

    # Then it ran once, failed() ran, and the failed entry names SkipRetry
    assert f.lines() == ["attempt 1", "failed SkipRetry"]
    (entry,) = f.store().failed()
    assert entry.id == job_id and entry.exception.startswith("SkipRetry: the account is closed")
    assert "job.retry" not in err and "SkipRetry" in err


def test_tries_zero_retries_until_success_and_max_exceptions_still_bounds_it(make_farm):
    # Given tries = 0 jobs (max_exceptions = 4) on a worker whose own default is one try
    f = with_misc(make_farm("sqlite"))
    import miscjobs

    farm.dispatch(miscjobs.Unlimited(str(f.out), "late", succeed_on=3))
    never = farm.dispatch(miscjobs.Unlimited(str(f.out), "never", succeed_on=99))

    # When a worker runs them
    drain(f, "--tries", "1")

    # Then the first succeeded on its third attempt, the second failed at its fourth exception
    out = f.lines()
    assert [x for x in out if x.startswith("late")] == ["late 1", "late 2", "late 3"]
    assert [x for x in out if x.startswith("never")] == ["never 1", "never 2", "never 3", "never 4", "never failed"]
    (entry,) = f.store().failed()
    assert entry.id == never


def test_a_worker_started_with_tries_zero_retries_a_job_without_tries_of_its_own(make_farm):
    # Given a job with no tries of its own that succeeds on its fifth attempt
    f = with_misc(make_farm("sqlite"))
    import miscjobs

    farm.dispatch(miscjobs.NoTries(str(f.out), succeed_on=5))

    # When a worker runs it with --tries 0
    drain(f, "--tries", "0")

    # Then it was retried until it succeeded
    assert f.lines() == [f"attempt {n}" for n in range(1, 6)]
    assert f.store().failed() == []


def null_failed_table(f: Farm) -> Farm:
    """The farm's manifest with `failed_table: null` on its connection (or its store)."""
    text = f.manifest.read_text()
    if f.backend == "redis":
        text = text.replace("    driver: redis\n", "    driver: redis\n    failed_table: null\n", 1)
    else:
        text = re.sub(r"failed_table: f[0-9a-f]+", "failed_table: null", text)
    assert "failed_table: null" in text
    f.manifest.write_text(text)
    f.app = farm.configure(f.manifest)
    return f


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql", "amqp", "redis"])
def test_with_failed_table_null_a_finally_failed_job_is_deleted_and_its_failed_hook_still_runs(make_farm, backend):
    # Given a connection (or, for amqp, its store) with `failed_table: null`
    f = null_failed_table(make_farm(backend))
    import testjobs

    farm.dispatch(testjobs.Flaky(str(f.out)))           # tries = 3, never succeeds

    # When a worker runs it to its final failure
    err = drain(f)

    # Then failed() ran and the log says job.failed, but no failed job is kept and none is queued
    assert f.lines() == ["attempt 1", "attempt 2", "attempt 3", "failed ValueError"]
    assert "job.failed" in err
    assert f.store().failed() == [] and f.store().count_failed() == 0
    assert all(c.get(k) in (0, None) for c in f.queue().counts().values() for k in ("ready", "reserved", "failed"))
    out = f.farmctl("failed", check=True).stdout
    assert "no failed jobs (failed_table: null on connection 'main'" in out
