"""Issue 17: what the chaos scenarios found broken in the worker, one test per finding."""
from __future__ import annotations

import signal
import subprocess
import sys


def test_memory_recycling_worker_stopped_while_it_waits_out_startsecs_exits_0(make_farm):
    # Given a worker past its --memory at once, which stops after its first look and, being
    # younger than supervisord's startsecs, waits out the rest of its first second
    f = make_farm("sqlite")
    w = f.worker("--memory", "1", "--sleep", "0.1")
    for line in w.stderr:
        if "worker.stop" in line:
            assert "reason=memory" in line, line
            break
    else:
        raise AssertionError(f"the worker never logged worker.stop (exit {w.wait(10)})")
    # When supervisord stops it in that wait (the chaos harness's memory_recycling did: -15)
    w.send_signal(signal.SIGTERM)
    # Then it exits 0, as any graceful stop does, not killed by the signal's default action
    assert w.wait(10) == 0


def test_memory_recycling_a_worker_whose_run_is_over_exits_with_its_own_status_through_a_term():
    # Given a process past its worker's run, about to exit with its own status (farmctl work
    # calls signals.exiting() between Worker.run() and the exit)
    code = ("import os, signal, sys, time\n"
            "from farm.worker import signals\n"
            "signals.exiting()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(0.2)\n"
            "sys.exit(3)\n")
    # When supervisord's TERM arrives in that window
    done = subprocess.run([sys.executable, "-c", code], timeout=30)
    # Then the exit status is the worker's own, not death by signal (-15)
    assert done.returncode == 3
