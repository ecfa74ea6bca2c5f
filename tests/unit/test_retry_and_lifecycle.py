import datetime as dt
import signal

from farm.worker.lifecycle import Lifecycle, StopReason
from farm.worker.options import WorkerOptions
from farm.worker.retry import backoff_delay, decide

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _decide(**kw):
    args = dict(attempts=1, tries=3, backoff=(1, 5, 10), exceptions=1, max_exceptions=None,
                retry_until=None, now=NOW, raised=True)
    args.update(kw)
    return decide(**args)


def test_backoff_takes_the_nth_value_and_repeats_the_last():
    assert [backoff_delay((1, 5, 10), n) for n in (1, 2, 3, 4, 9)] == [1, 5, 10, 10, 10]
    assert backoff_delay((), 3) == 0


def test_a_job_is_retried_until_its_tries_are_used():
    assert _decide(attempts=1).retry and _decide(attempts=1).delay == 1
    assert _decide(attempts=2).delay == 5
    assert not _decide(attempts=3).retry


def test_max_exceptions_fails_the_job_before_its_tries():
    assert not _decide(attempts=2, tries=10, exceptions=2, max_exceptions=2).retry
    assert _decide(attempts=2, tries=10, exceptions=2, max_exceptions=2, raised=False).retry


def test_retry_until_replaces_tries():
    later = NOW + dt.timedelta(hours=1)
    assert _decide(attempts=50, retry_until=later).retry
    assert not _decide(attempts=1, retry_until=NOW - dt.timedelta(seconds=1)).retry


def _life(**kw):
    return Lifecycle(WorkerOptions(connection="x", **kw), started=100.0)


def test_a_first_term_drains_and_a_second_interrupts_a_running_job():
    life = _life()
    assert life.on_signal(signal.SIGTERM) is False
    assert life.should_stop(101, 10, 0) is StopReason.SIGNAL
    life.busy = True
    assert life.on_signal(signal.SIGINT) is True
    assert life.should_stop(101, 10, 0) is StopReason.ABANDON
    assert StopReason.ABANDON.exit_code == 1 and StopReason.SIGNAL.exit_code == 0


def test_usr2_pauses_and_cont_resumes():
    life = _life()
    life.on_signal(signal.SIGUSR2)
    assert life.paused
    life.on_signal(signal.SIGCONT)
    assert not life.paused and life.should_stop(101, 10, 0) is None


def test_limits_end_the_worker_with_their_reason():
    assert _life(max_jobs=5).should_stop(101, 10, 5) is StopReason.MAX_JOBS
    assert _life(max_time=10).should_stop(111, 10, 0) is StopReason.MAX_TIME
    assert _life(memory=64).should_stop(101, 65, 0) is StopReason.MEMORY
    life = _life()
    life.restart_requested = True
    assert life.should_stop(101, 10, 0) is StopReason.RESTART
    assert StopReason.MAX_JOBS.recycles and not StopReason.EMPTY.recycles
