"""A TCP forwarder on loopback, for tests of servers that are down or whose connections drop.

Besides forwarding, it makes connection faults happen on cue rather than by timing luck:
`swallow_reply_after(pattern)` lets the request that carries `pattern` reach the server and
then drops the server's next reply and cuts that connection (the commit landed, the client
never hears of it); `drop_request(pattern)` cuts before the server sees the request; `cut()`
cuts every open connection and keeps accepting new ones.
"""
from __future__ import annotations

import socket
import threading


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Link:
    """One client connection and its upstream, with the fault armed on it (if any)."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.swallow_next = False       # the server's next reply is dropped, then the link cut

    def cut(self) -> None:
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


class Proxy:
    """A TCP forwarder on loopback, started late: the database 'comes up' when it starts."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socks: list[socket.socket] = [self.server]
        self.links: list[_Link] = []
        self.closed = False
        self.lock = threading.Lock()
        self.faults: list[tuple[str, bytes]] = []       # armed: ("swallow" | "drop", pattern)
        self.fired = threading.Event()                  # set each time an armed fault goes off
        self.fired_count = 0

    def start(self) -> None:
        self.server.bind(("127.0.0.1", self.port))
        self.server.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    # -- faults on cue -----------------------------------------------------------------
    def swallow_reply_after(self, pattern: bytes) -> None:
        """The next request carrying `pattern` (on any connection) reaches the server; the
        server's reply to it is dropped and that connection cut."""
        with self.lock:
            self.faults.append(("swallow", pattern))

    def drop_request(self, pattern: bytes) -> None:
        """The next request carrying `pattern` never reaches the server; its connection is cut."""
        with self.lock:
            self.faults.append(("drop", pattern))

    def stall_request(self, pattern: bytes) -> None:
        """The next request carrying `pattern`, and everything after it on that connection,
        never reaches the server, and the connection stays open: a stalled network, no FIN."""
        with self.lock:
            self.faults.append(("stall", pattern))

    def cut(self) -> int:
        """Cut every open connection (new ones are still accepted); how many were cut."""
        with self.lock:
            links, self.links = self.links, []
        for link in links:
            link.cut()
        return len(links)

    # -- forwarding --------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            link = _Link(client, upstream)
            with self.lock:
                if self.closed:             # accepted as close() ran: refused all the same
                    client.close()
                    upstream.close()
                    return
                self.socks += [client, upstream]
                self.links.append(link)
            threading.Thread(target=self._requests, args=(link,), daemon=True).start()
            threading.Thread(target=self._replies, args=(link,), daemon=True).start()

    def _armed(self, data: bytes) -> str | None:
        """The fault armed for a request carrying `data`, taken off the list (None: forward)."""
        with self.lock:
            for i, (kind, pattern) in enumerate(self.faults):
                if pattern in data:
                    del self.faults[i]
                    return kind
        return None

    def _went_off(self) -> None:
        with self.lock:
            self.fired_count += 1
        self.fired.set()

    def _requests(self, link: _Link) -> None:
        try:
            while data := link.client.recv(65536):
                kind = self._armed(data) if self.faults else None
                if kind == "drop":
                    link.cut()
                    self._went_off()
                    return
                if kind == "swallow":
                    link.swallow_next = True
                if kind == "stall":
                    self._went_off()
                    while link.client.recv(65536):      # read and dropped, never answered
                        pass
                    return
                link.upstream.sendall(data)
        except OSError:
            pass
        finally:
            self._shut(link)

    def _replies(self, link: _Link) -> None:
        try:
            while data := link.upstream.recv(65536):
                if link.swallow_next:
                    link.cut()
                    self._went_off()
                    return
                link.client.sendall(data)
        except OSError:
            pass
        finally:
            self._shut(link)

    @staticmethod
    def _shut(link: _Link) -> None:
        for s in (link.client, link.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Cut every connection and refuse new ones. close() alone leaves the listening socket
        up while the accept thread is blocked in accept(): the next connection got through."""
        with self.lock:
            self.closed = True
        try:
            self.server.shutdown(socket.SHUT_RDWR)      # wakes accept() and stops listening
        except OSError:
            pass
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)    # close() alone does not wake a pipe thread's recv():
            except OSError:                     # the socket lived on and a peer's query hung
                pass
            s.close()
