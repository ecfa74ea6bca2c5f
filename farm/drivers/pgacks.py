"""PostgreSQL acks in libpq pipeline mode: each DELETE is on the socket before the next job
starts, and nobody waits for its answer.

The worker's per-job cost on PostgreSQL was one round trip: send the ack, then wait for the
server's reply before the next statement. In pipeline mode the next ack can follow at once;
the replies are read whenever they have arrived, and all of them before the connection
closes. Each DELETE has its own Sync, so it commits on its own (synchronous_commit off, as
for claims: a server crash may rerun a job, a worker crash never). A failed ack surfaces as
an error on the next call; the job is then handed out again after retry_after.

The start of the worker's next job rides on the same statement (a data-modifying CTE), or
goes alone when there is no ack before it: a job's start is written before it runs, at no
extra round trip.

So a job counts as done once its DELETE is on the socket. The acks whose reply has not been
read are kept (`unconfirmed`): when the connection drops, the driver sends them again on a
new connection (a DELETE matching the worker's token is harmless twice) before the worker
claims more, and renews their reservations until then. Only a worker killed before the server
has read an ack leaves that job to run again after retry_after. On a clean exit every
pending ack is settled: the worker reads each reply before it closes the connection.
"""
from __future__ import annotations

import select
import time
from collections import deque
from typing import Any, Callable

_ACK, _ACK_START, _START = b"farm_ack", b"farm_ack_start", b"farm_start"
# acks on the wire with no reply read: past this the worker waits for replies before it sends
# more. The heart renews every unanswered ack's row (FOR UPDATE, briefly); a server slower than
# the worker let them pile up unbounded, each renew grew, and one of many thousands of rows
# held the acks' row locks for minutes (a drain of 500,000 behind a VACUUM stalled)
MAX_UNANSWERED = 500
CATCH_UP_SECONDS = 30.0     # no reply for this long while over the bound: the connection is dead
# an ack unanswered for less than this is left out of the heart's renew. Renewing it locked a
# row whose DELETE was queued right behind: every ack then waited for the renew's commit, and a
# renew slow for any reason held the worker's acks with it. An ack the server has not answered
# in this long is one a stalled connection may be sitting on: that one is renewed
STALLED_AFTER = 2.0


class PipelinedAcks:
    def __init__(self, connect: Callable[[], Any], table: str) -> None:
        self._connect = connect          # a new psycopg connection, autocommit, set up
        def start(param: str) -> str:
            return f"UPDATE {table} SET attempts = attempts + 1 WHERE id = {param} AND reserved_by = $2"

        self._statements = {
            _ACK: f"DELETE FROM {table} WHERE id = $1 AND reserved_by = $2",
            _ACK_START: f"WITH done AS (DELETE FROM {table} WHERE id = $1 AND reserved_by = $2) " + start("$3"),
            _START: start("$1"),
        }
        self._pg: Any = None
        # per statement sent, unanswered: its acked row (None: a start) and when it was sent
        self._sent: deque[tuple[int | None, float]] = deque()

    @property
    def pending(self) -> int:
        """Statements sent whose reply is not read yet."""
        return len(self._sent)

    def unconfirmed(self, older_than: float = 0.0) -> list[int]:
        """The rows whose ack has been sent and not confirmed by the server (for at least
        `older_than` seconds). Safe from another thread: tuple() copies the deque in one step."""
        sent = tuple(self._sent)
        if older_than <= 0:
            return [row for row, _ in sent if row is not None]
        sent_before = time.monotonic() - older_than
        return [row for row, at in sent if row is not None and at <= sent_before]

    def old_in(self, age: float) -> float | None:
        """Seconds until the oldest unanswered ack younger than `age` is that old (None: none is)."""
        now = time.monotonic()
        for row, at in tuple(self._sent):       # oldest first
            if row is not None and now - at < age:
                return at + age - now
        return None

    def send(self, row_id: int, token: str, start: int | None = None) -> None:
        """Put the ack (and the next job's start) on the socket; read whatever replies have
        come in meanwhile."""
        args = [b"%d" % row_id, token.encode()]
        if start is None:
            self._send(_ACK, args, row_id)
        else:
            self._send(_ACK_START, args + [b"%d" % start], row_id)

    def start(self, row_id: int, token: str) -> None:
        """Put a job's start on the socket (a job no ack came before)."""
        self._send(_START, [b"%d" % row_id, token.encode()], None)

    def poll(self) -> None:
        """Read the replies that have come, without waiting (a dropped connection raises)."""
        if self._pg is not None and self._sent:
            self._read()

    def _send(self, name: bytes, args: list[bytes], acked: int | None) -> None:
        pg = self._pg or self._open()
        self._sent.append((acked, time.monotonic()))   # first: if sending fails, it may have gone all the same
        pg.send_query_prepared(name, args)
        pg.pipeline_sync()
        while pg.flush() == 1:           # the kernel's buffer is full: let the server catch up
            select.select([pg.socket], [pg.socket], [], 1.0)
            pg.consume_input()
        self._read()
        if len(self._sent) > MAX_UNANSWERED:
            self._catch_up()

    def _catch_up(self) -> None:
        """Wait until half the unanswered acks have their reply; OperationalError (the driver
        then acks them again on a new connection) if none comes for CATCH_UP_SECONDS."""
        deadline = time.monotonic() + CATCH_UP_SECONDS
        while len(self._sent) > MAX_UNANSWERED // 2:
            left = deadline - time.monotonic()
            if left <= 0:
                from psycopg import OperationalError

                raise OperationalError(f"{len(self._sent)} acks unanswered for {CATCH_UP_SECONDS:.0f} s")
            before = len(self._sent)
            select.select([self._pg.socket], [], [], min(left, 0.5))
            self._read()
            if len(self._sent) < before:
                deadline = time.monotonic() + CATCH_UP_SECONDS

    def settle(self, seconds: float = 5.0) -> None:
        """Wait for the reply to every ack sent (before closing), for `seconds` at most: a
        server that stopped answering must not hold up the worker's exit."""
        deadline = time.monotonic() + seconds
        while self.pending and time.monotonic() < deadline:
            select.select([self._pg.socket], [], [], 0.5)
            self._read()

    def close(self) -> int:
        """Settle and forget the connection; returns the acks whose reply never came."""
        if self._pg is None:
            return 0
        try:
            if not self._pg.status:                  # status 0: CONNECTION_OK
                self.settle()
            return self.pending
        finally:
            self.reset()

    def reset(self) -> None:
        """Forget the connection (the driver closes it, and keeps `unconfirmed()` first: they
        may or may not have committed)."""
        self._pg = None
        self._sent.clear()

    def _open(self) -> Any:
        pg = self._connect().pgconn
        for name, text in self._statements.items():
            _check(pg.prepare(name, text.encode()))
        pg.enter_pipeline_mode()
        pg.nonblocking = 1
        self._pg = pg
        return pg

    def _read(self) -> None:
        from psycopg import pq

        pg = self._pg
        pg.consume_input()
        while self.pending and not pg.is_busy():
            res = pg.get_result()
            if res is None:              # the end of one statement's results
                continue
            if res.status == pq.ExecStatus.PIPELINE_SYNC:
                self._sent.popleft()
            elif res.status != pq.ExecStatus.COMMAND_OK:
                _check(res)


def _check(res: Any) -> None:
    from psycopg import OperationalError, pq

    if res.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.PIPELINE_SYNC):
        raise OperationalError(f"ack failed: {(res.error_message or b'').decode(errors='replace').strip()}")
