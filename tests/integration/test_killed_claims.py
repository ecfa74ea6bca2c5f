"""Issue 21: a job claimed but never started by workers that were SIGKILLed is not failed for
their deaths (README, Reservations: only a job whose workers died *running* it more than twice
is failed; DESIGN: an attempt is counted each time a worker starts the job)."""
from __future__ import annotations

import signal

import pytest

import farm
from conftest import DB_BACKENDS
from testjobs import KillsItsWorker, Record


@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_a_job_claimed_in_the_batch_of_three_killed_workers_but_never_started_still_runs(make_farm, backend):
    # Given a job that kills its worker and, queued right behind it, a bystander (retry_after
    # 1.5 s: each dead worker's claims lapse before the next worker may take them)
    f = make_farm(backend, retry_after=1.5)
    warm = f.tmp / "warm.txt"
    bystander = f.tmp / "bystander.txt"
    holder_id = None
    # When three workers, each warmed up so that it claims in batches, claim the two together
    # and die running the first (the bystander is claimed, never started)
    for death in range(1, 4):
        p = f.worker("--sleep", "0.05")
        farm.dispatch_many([Record(str(warm), f"w{death}-{i}") for i in range(30)])
        f.wait_for(lambda: len(f.lines(warm)) == 30 * death, what="the warm-up jobs")
        if holder_id is None:
            holder_id, _ = farm.dispatch_many([KillsItsWorker(str(f.out)), Record(str(bystander), "bystander")])
        assert p.wait(30) == -signal.SIGKILL
        counts = f.queue().counts()["default"]
        assert counts["reserved"] == 2, f"death {death}: the dead worker held both jobs ({counts})"
    # Then a fourth worker fails the job that killed three workers, and runs the bystander
    p = f.worker("--sleep", "0.05")
    f.wait_for(lambda: f.store().failed() and f.queue().counts()["default"]["reserved"] == 0
               and f.queue().counts()["default"]["ready"] == 0, timeout=30, what="both jobs settled")
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    assert [e.id for e in f.store().failed()] == [holder_id], [e.exception.splitlines()[0] for e in f.store().failed()]
    assert f.lines(bystander) == [f"bystander 1 {p.pid}"]
