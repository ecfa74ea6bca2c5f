"""A TCP forwarder on loopback whose connections the chaos scenarios cut.

Every connection a worker or producer opens to PostgreSQL, MariaDB or RabbitMQ goes through a
`Proxy`. `cut_all()` drops every live connection at once (both sides see the socket shut down,
as when a NAT or a load balancer forgets them) and keeps listening, so a client that reconnects
gets through at once. `lose_reply(*matches)` arms a sharper fault: the next request that
contains one of `matches` (b"INSERT": a dispatch's write) reaches the server, which carries it
out, but its reply is swallowed and that connection cut, so the client cannot know the outcome.
"""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field


def free_port() -> int:
    """A port nobody listens on right now (for a URL that must be refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(eq=False)
class _Pair:
    """One client connection and its upstream twin; closed by the last pipe thread to end."""
    client: socket.socket
    upstream: socket.socket
    doomed: bool = False            # its next reply is swallowed, then it is cut
    open_pipes: int = 2
    lock: threading.Lock = field(default_factory=threading.Lock)

    def shutdown(self) -> None:
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)     # wakes the pipe threads' recv(); close() alone does not
            except OSError:
                pass

    def pipe_ended(self) -> None:
        with self.lock:
            self.open_pipes -= 1
            last = self.open_pipes == 0
        if last:                    # no thread uses the sockets any more: the fds may go
            self.client.close()
            self.upstream.close()


@dataclass
class ProxyStats:
    """What the proxy did, for a scenario's note."""
    connections: int = 0
    cut: int = 0                    # connections dropped by cut_all()
    replies_lost: int = 0           # replies swallowed by lose_reply()
    refused: int = 0                # clients closed because the server did not answer


class Proxy:
    """Forwards 127.0.0.1:port to `target`; `port=0` picks a free one (read `.port` after)."""

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", port))
        self.port: int = self.server.getsockname()[1]
        self.pairs: set[_Pair] = set()
        self.lock = threading.Lock()
        self.closed = False
        self.armed: tuple[bytes, ...] | None = None      # lose_reply() waiting for a request holding one
        self.stats = ProxyStats()

    def start(self) -> "Proxy":
        self.server.listen(64)
        threading.Thread(target=self._accept, daemon=True, name=f"proxy-{self.port}").start()
        return self

    def url_for(self, url: str) -> str:
        """`url` (an SQLAlchemy or amqp URL naming the target) pointed at this proxy instead."""
        host, port = self.target
        for old in (f"@{host}:{port}", f"//{host}:{port}"):
            if old in url:
                return url.replace(old, old.replace(f"{host}:{port}", f"127.0.0.1:{self.port}"), 1)
        raise ValueError(f"{url} does not name {host}:{port}")

    def cut_all(self) -> int:
        """Drop every live connection (both directions); new ones are still accepted. Returns
        how many were cut."""
        with self.lock:
            pairs, self.pairs = self.pairs, set()
            self.stats.cut += len(pairs)
        for pair in pairs:
            pair.shutdown()
        return len(pairs)

    def lose_reply(self, *matches: bytes) -> None:
        """Arm: the next request containing one of `matches` (any request if none given) is
        delivered, its reply swallowed, and its connection cut. One shot; arming again replaces
        the matches."""
        with self.lock:
            self.armed = matches or (b"",)

    def close(self) -> None:
        """Cut every connection and refuse new ones."""
        with self.lock:
            self.closed = True
        try:
            self.server.shutdown(socket.SHUT_RDWR)       # wakes accept()
        except OSError:
            pass
        self.server.close()
        self.cut_all()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:                 # the server is down (rabbit stop_app): so is the proxy
            with self.lock:
                self.stats.refused += 1
            client.close()
            return
        pair = _Pair(client, upstream)
        with self.lock:
            if self.closed:
                client.close()
                upstream.close()
                return
            self.pairs.add(pair)
            self.stats.connections += 1
        threading.Thread(target=self._pipe, args=(pair, client, upstream, True), daemon=True).start()
        threading.Thread(target=self._pipe, args=(pair, upstream, client, False), daemon=True).start()

    def _pipe(self, pair: _Pair, src: socket.socket, dst: socket.socket, request: bool) -> None:
        try:
            while data := src.recv(65536):
                if request:
                    self._maybe_doom(pair, data)
                elif pair.doomed:       # the reply to the doomed request: swallowed, then cut
                    with self.lock:
                        self.stats.replies_lost += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.pairs.discard(pair)
            pair.shutdown()
            pair.pipe_ended()

    def _maybe_doom(self, pair: _Pair, data: bytes) -> None:
        if self.armed is None:
            return
        with self.lock:
            if self.armed is not None and any(m in data for m in self.armed):
                self.armed = None
                pair.doomed = True      # before the request is forwarded: its reply comes after
