"""Issue 17: what the chaos scenarios found broken in the worker, one test per finding."""
from __future__ import annotations

import signal


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
