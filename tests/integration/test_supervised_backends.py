"""Issue 21: the rendered farm under a real supervisord on every server backend, and a worker
that cannot start ending FATAL instead of spinning."""
from __future__ import annotations

import os
import textwrap
from collections import Counter
import pytest

from conftest import ROOT, SUPPORT, connection_yaml, drop_vhosts
from test_supervisor import TWO, Supervised, sup  # noqa: F401  (the fixture: a project dir with its own supervisord)


def write(s: Supervised, backend: str, pipelines: str) -> None:
    """Supervised.write with the connection `main` on `backend` (tables or a vhost of its own)."""
    env = f"{{PYTHONPATH: '{SUPPORT}{os.pathsep}{ROOT}'}}"
    body = textwrap.indent(textwrap.dedent(pipelines).strip().replace("ENV", env), "  ")
    conn = connection_yaml(backend, s.root, "main", retry_after=30)
    s.manifest.write_text("imports: [testjobs]\ndefault: main\nconnections:\n" + textwrap.indent(conn, "  ")
                          + "pipelines:\n" + body + "\n")


@pytest.mark.parametrize("backend", ["postgresql", "mysql", "amqp"])
def test_a_farm_on_each_server_runs_under_supervisord_and_a_restart_midway_runs_every_job_once(sup, backend):  # noqa: F811
    # Given a rendered pipeline of two workers on the server, under supervisord, both beating
    write(sup, backend, TWO)
    try:
        sup.start()
        pids = sup.wait_for(lambda: len(sup.running("w")) == 2 and sup.running("w"), what="two workers")
        sup.beating(pids)
        # When 200 jobs of 30 ms are dispatched and the pipeline is restarted once 50 have run
        tags = [f"j{i}" for i in range(200)]
        sup.dispatch(tags, seconds=0.03)
        sup.wait_for(lambda: len(sup.tags()) >= 50, what="the first 50 jobs")
        new = sup.restart("w", 2)
        # Then, once the workers have stopped, every job ran exactly once and was started once,
        # the new workers having run part of them
        sup.wait_for(lambda: len(sup.tags()) == 200, timeout=60, what="all 200 jobs")
        sup.ctl("stop", "w:*")
        assert sup.tags() == Counter(tags)
        started = Counter(line.split()[0] for line in (sup.root / "out.txt.started").read_text().splitlines())
        assert started == Counter(tags), "no job was started twice"
        ran_by = {int(line.split()[2]) for line in sup.out.read_text().splitlines()}
        assert ran_by & set(new.values()) and ran_by & set(pids.values()), (pids, new, ran_by)
    finally:
        sup.shutdown()
        sup.started = False
        drop_vhosts()


def test_a_worker_whose_manifest_is_broken_ends_fatal_after_startretries_instead_of_spinning(sup):  # noqa: F811
    # Given a rendered pipeline of one worker running under supervisord (startretries=3)
    sup.write(TWO.replace("numprocs: 2", "numprocs: 1"))
    sup.start()
    sup.wait_for(lambda: sup.running("w"), what="the worker")
    assert "startretries=3" in (sup.root / "supervisor" / "conf.d" / "w.conf").read_text()
    log = sup.root / "var" / "log" / "supervisord.log"
    before = len(log.read_text().splitlines())
    # When a deploy breaks the manifest and the pipeline is restarted
    sup.manifest.write_text(sup.manifest.read_text().replace("numprocs: 1", "numprocs: 0"))
    sup.ctl("restart", "w:*", ok=None)          # its start fails: supervisorctl says so
    # Then supervisord gives up on it as FATAL: its last start and the three retries before
    # it each exited 2 within startsecs (on a loaded machine a start slower than startsecs
    # counts as a success and begins the count again), and it is not started again
    sup.wait_for(lambda: sup.states()["w:w_00"][0] == "FATAL", timeout=40, what="the worker to be FATAL")
    lines = log.read_text().splitlines()[before:]
    events = [kind for line in lines for kind in ("spawned: 'w_00'", "success: w_00", "exited: w_00", "gave up: w_00")
              if kind in line]
    assert events[-9:] == ["spawned: 'w_00'", "exited: w_00"] * 4 + ["gave up: w_00"], lines
    exits = [line for line in lines if "exited: w_00" in line]
    assert all("(exit status 2; not expected)" in line for line in exits), lines
    assert "too many start retries too quickly" in lines[-1] and len(exits) <= 10, lines
    # each start having printed the manifest's problem
    worker_log = (sup.root / "var" / "log" / "w_00.log").read_text()
    assert worker_log.count("pipelines.w.numprocs: expected a positive integer, got 0") == len(exits), worker_log
