"""Issue 20: `driver: async` runs jobs on a thread pool in the dispatching process, with the
worker's tries, backoff, release and failed() hook, and finishes them before the process exits.

Each test runs a real Python process that dispatches on an async connection and exits; what
the jobs (tests/support/asyncjobs.py) recorded is read after it has gone.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, SUPPORT

WORKERS = 3


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A manifest whose default connection is async, with a pool of WORKERS threads."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "farm.yaml").write_text(textwrap.dedent(f"""\
        imports: [asyncjobs]
        default: dev
        connections:
          dev: {{driver: async, workers: {WORKERS}}}
    """))
    return tmp_path


def env(project: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    e["PYTHONPATH"] = os.pathsep.join([str(SUPPORT), str(ROOT)])
    e["FARM_CONFIG"] = str(project / "conf" / "farm.yaml")
    return e


def run(project: Path, code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `code` as a script in the project; it must exit 0."""
    script = project / "script.py"
    script.write_text("import farm, asyncjobs, json, os, time, threading\n" + textwrap.dedent(code))
    cp = subprocess.run([sys.executable, str(script)], cwd=project, env=env(project), capture_output=True,
                        text=True, timeout=timeout)
    assert cp.returncode == 0, f"exit {cp.returncode}\n{cp.stdout}\n{cp.stderr}"
    return cp


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) spans that overlap at one moment."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def test_issue_20_dispatch_returns_at_once_and_the_pool_runs_jobs_on_its_threads_up_to_its_size(project):
    # Given an async connection with a pool of 3 and six jobs of 0.5 s
    out = project / "out.txt"
    # When a script dispatches them and exits at once
    cp = run(project, f"""
        t = time.monotonic()
        first = farm.dispatch(asyncjobs.Timed({str(out)!r}, "j0", seconds=0.5))
        took, ran = time.monotonic() - t, os.path.exists({str(out)!r})
        rest = [farm.dispatch(asyncjobs.Timed({str(out)!r}, f"j{{i}}", seconds=0.5)) for i in range(1, 6)]
        print(json.dumps({{"id": first, "took": took, "ran": ran, "ids": rest}}))
    """)
    # Then dispatch returned the id before the job had run
    said = json.loads(cp.stdout)
    assert len(said["id"]) == 36 and said["took"] < 0.5 and not said["ran"], said
    # And every job ran once, before the process exited, on the pool's threads, three at a time
    done = [line.split() for line in lines(out)]
    assert sorted(d[0] for d in done) == [f"j{i}" for i in range(6)], cp.stderr
    assert all(d[1] == "1" and d[2].startswith("farm-async-dev-") for d in done), done
    assert len({d[2] for d in done}) == WORKERS, done
    assert most_at_once([(float(d[3]), float(d[4])) for d in done]) == WORKERS, done
    assert cp.stderr.count("job.done") == 6, cp.stderr


def test_issue_20_retries_with_backoff_release_and_failed_hook_run_before_the_process_exits(project):
    # Given a job that always raises (tries 3, backoff 0.3 then 0.6), one that releases itself
    # for 0.5 s once, one delayed by 1 s, one past its timeout, and one delayed by an hour
    flaky, released, delayed, spun = (project / n for n in ("flaky", "released", "delayed", "spun"))
    # When a script dispatches them and exits at once
    cp = run(project, f"""
        farm.dispatch(asyncjobs.FlakyTimed({str(flaky)!r}))
        farm.dispatch(asyncjobs.ReleaseOnce({str(released)!r}, 0.5))
        farm.dispatch(asyncjobs.Timed({str(delayed)!r}, "late"), delay=1)
        farm.dispatch(asyncjobs.Spinner({str(spun)!r}, 8))
        farm.dispatch(asyncjobs.Timed({str(delayed)!r}, "never"), delay=3600)
    """)
    # Then the flaky job ran three times, waiting out its backoff, and failed() ran once, on the pool
    attempts = [line.split() for line in lines(flaky)]
    assert [a[:2] for a in attempts[:3]] == [["attempt", "1"], ["attempt", "2"], ["attempt", "3"]], attempts
    times = [float(a[2]) for a in attempts[:3]]
    assert times[1] - times[0] >= 0.3 and times[2] - times[1] >= 0.6, times
    assert len(attempts) == 4 and attempts[3][:2] == ["failed", "ValueError"], attempts
    assert attempts[3][2].startswith("farm-async-dev-"), attempts
    assert cp.stderr.count("job.retry") == 2 and "job.failed" in cp.stderr, cp.stderr
    # And the released job came back after its delay and succeeded
    rel = [line.split() for line in lines(released)]
    assert [r[1] for r in rel] == ["1", "2"] and float(rel[1][2]) - float(rel[0][2]) >= 0.5, rel
    # And the delayed job ran before the exit; the one due in an hour was dropped with a line
    assert [line.split()[0] for line in lines(delayed)] == ["late"], cp.stderr
    assert cp.stderr.count("job.lost") == 1 and "due_in=3" in cp.stderr, cp.stderr
    # And the job past its one-second timeout was stopped and failed, not run to its end
    assert lines(spun) == ["failed JobTimeout"], cp.stderr


def test_issue_20_dispatch_from_eight_threads_at_once_runs_each_job_exactly_once(project):
    # Given eight threads that start dispatching together, 50 jobs each
    out = project / "out.txt"
    # When they dispatch and the script exits
    cp = run(project, f"""
        start, ids = threading.Barrier(8), []
        def send(n):
            start.wait()
            ids.extend(farm.dispatch(asyncjobs.Timed({str(out)!r}, f"t{{n}}-{{i}}")) for i in range(50))
        threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(json.dumps(ids))
    """)
    # Then 400 distinct ids came back and each job ran exactly once
    assert len(set(json.loads(cp.stdout))) == 400
    tags = [line.split()[0] for line in lines(out)]
    assert len(tags) == 400 and set(tags) == {f"t{n}-{i}" for n in range(8) for i in range(50)}, cp.stderr[-2000:]


def test_issue_20_farmctl_work_on_an_async_connection_is_refused_in_one_line_and_status_runs(project):
    # Given an async default connection
    def farmctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "farm", *args], cwd=project, env=env(project),
                              capture_output=True, text=True, timeout=30)

    # When a worker is started on it
    cp = farmctl("work", "--stop-when-empty")
    # Then it exits 2 with one line saying why
    assert cp.returncode == 2 and len(cp.stderr.strip().splitlines()) == 1, cp.stderr
    assert "async driver" in cp.stderr and "'dev'" in cp.stderr, cp.stderr
    # And status works, and says it cannot see another process's jobs
    st = farmctl("status", "--json")
    assert st.returncode == 0, st.stderr
    assert any("(async)" in n for n in json.loads(st.stdout)["notes"]), st.stdout


@pytest.mark.parametrize("spec, problem", [
    ("{driver: async, workers: 0}", "connections.dev.workers: expected a positive integer, got 0"),
    ("{driver: async, workers: many}", "connections.dev.workers: expected a positive integer, got 'many'"),
    ("{driver: database, workers: 2}", "connections.dev.workers: only an async connection has a pool"),
])
def test_issue_20_a_bad_workers_key_is_a_manifest_error_with_its_line(tmp_path, spec, problem):
    from farm.errors import ManifestError
    from farm.manifest import load

    # Given a manifest whose connection on line 3 has a bad `workers:`
    path = tmp_path / "farm.yaml"
    path.write_text(f"default: dev\nconnections:\n  dev: {spec}\n")
    # When it is loaded, Then the problem names the line and the key
    with pytest.raises(ManifestError) as e:
        load(path)
    assert f"farm.yaml:3: {problem}" in str(e.value)
