"""A TCP forwarder on loopback, for tests of servers that are down or whose connections drop."""
from __future__ import annotations

import socket
import threading


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    """A TCP forwarder on loopback, started late: the database 'comes up' when it starts."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socks: list[socket.socket] = [self.server]
        self.closed = False
        self.lock = threading.Lock()

    def start(self) -> None:
        self.server.bind(("127.0.0.1", self.port))
        self.server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                if self.closed:             # accepted as close() ran: refused all the same
                    client.close()
                    upstream.close()
                    return
                self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
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
