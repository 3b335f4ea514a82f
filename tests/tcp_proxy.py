"""A small threaded TCP proxy on 127.0.0.1 for fault tests.

It forwards every accepted connection to an upstream ``host:port`` and can cut all open
connections on demand (:meth:`TcpProxy.cut`) or once a number of bytes has flowed from the
upstream to the clients (:meth:`TcpProxy.cut_after`), which is how a network drop in the middle
of a transfer is simulated. New connections are still accepted after a cut, so a client that
reconnects recovers.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
from types import TracebackType

logger = logging.getLogger("tests.tcp_proxy")


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``; cut connections on demand."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host = "127.0.0.1"
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()
        self._cut_threshold: int | None = None
        self.bytes_down = 0  # upstream -> client, over the proxy's lifetime
        self.connections = 0  # accepted client connections
        self.cuts = 0  # connections closed by cut()
        self._acceptor = threading.Thread(target=self._accept_loop, name="tcp-proxy-accept", daemon=True)

    def start(self) -> TcpProxy:
        """Start accepting connections; returns ``self``."""
        self._acceptor.start()
        return self

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def cut(self) -> int:
        """Close every open connection at once (both sides); returns how many were cut."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by the other direction
                sock.close()
        self.cuts += len(pairs)
        return len(pairs)

    def cut_after(self, more_bytes: int) -> None:
        """Arm a one-shot cut of every connection once ``more_bytes`` more bytes flowed downstream."""
        with self._lock:
            self._cut_threshold = self.bytes_down + more_bytes

    def close(self) -> None:
        """Stop accepting, cut everything and wait for the forwarding threads."""
        self._stopped.set()
        self._listener.close()
        self.cut()
        for thread in [self._acceptor, *self._threads]:
            if thread.is_alive():
                thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError as exc:
                logger.warning("proxy: upstream %s unreachable: %s", self.upstream, exc)
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
                self.connections += 1
            thread = threading.Thread(target=self._pump, args=(client, upstream), name="tcp-proxy-pump", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy bytes both ways until either side closes (or the pair is cut)."""
        peer = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ)
            selector.register(upstream, selectors.EVENT_READ)
            try:
                while not self._stopped.is_set():
                    for key, _ in selector.select(timeout=0.2):
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        data = sock.recv(65536)
                        if not data:
                            return
                        peer[sock].sendall(data)
                        if sock is upstream:
                            self._count_down(len(data))
            except (OSError, ValueError):
                return  # cut() closed the sockets under us
            finally:
                with self._lock:
                    if (client, upstream) in self._pairs:
                        self._pairs.remove((client, upstream))
                for sock in (client, upstream):
                    sock.close()

    def _count_down(self, nbytes: int) -> None:
        fire = False
        with self._lock:
            self.bytes_down += nbytes
            if self._cut_threshold is not None and self.bytes_down >= self._cut_threshold:
                self._cut_threshold = None
                fire = True
        if fire:
            logger.info("proxy: cutting all connections after %d bytes", self.bytes_down)
            threading.Thread(target=self.cut, name="tcp-proxy-cut", daemon=True).start()
