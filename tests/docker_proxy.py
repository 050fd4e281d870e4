"""A fault-injecting proxy in front of the Docker socket, for tests.

It listens on a unix socket of its own, forwards each HTTP request to the real daemon, and
hands back the daemon's answer, except for the requests a rule picks: those get a 500 without
reaching the daemon, have their connection reset before the daemon sees them, or are forwarded
and then lose their reply (the daemon acted; the client never hears of it).

One request per connection (`Connection: close` on every answer), so the proxy needs no
keep-alive bookkeeping; docker-py simply opens the next connection.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import socketserver
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

DOCKER_SOCKET = "/var/run/docker.sock"


@dataclass
class Fault:
    """Fail the first `times` requests whose `METHOD path` matches `pattern`, in `mode`."""

    pattern: str
    mode: str  # "500", "reset" (never forwarded), or "lose_reply" (forwarded, reply dropped)
    times: int
    done: int = 0
    seen: list[str] = field(default_factory=list)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class DockerFaultProxy:
    def __init__(self, path: Path, faults: list[Fault], upstream: str = DOCKER_SOCKET) -> None:
        self.path = path
        self.faults = faults
        self.upstream = upstream
        self.lock = threading.Lock()
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                # The client may give up first (a wait's own timeout): nothing to answer then.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    proxy._serve_one(self.rfile, self.connection)

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(str(path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> DockerFaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _splice(self, request: bytes, conn: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(self.upstream)
        upstream.sendall(request)

        def pump(source: socket.socket, sink: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := source.recv(65536):
                    sink.sendall(data)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
        back.start()
        pump(conn, upstream)
        back.join()
        upstream.close()

    def _pick(self, request_line: str) -> Fault | None:
        method, target = request_line.split(" ")[:2]
        path = re.sub(r"^/v[0-9.]+", "", target.split("?")[0])
        with self.lock:
            for fault in self.faults:
                if fault.done < fault.times and re.fullmatch(fault.pattern, f"{method} {path}"):
                    fault.done += 1
                    fault.seen.append(f"{method} {path}")
                    return fault
        return None

    def _serve_one(self, reader: BinaryIO, conn: socket.socket) -> None:
        line = reader.readline().decode("latin-1").rstrip("\r\n")
        if not line:
            return
        headers: list[tuple[str, str]] = []
        while True:
            raw = reader.readline().decode("latin-1").rstrip("\r\n")
            if not raw:
                break
            name, _, value = raw.partition(":")
            headers.append((name.strip(), value.strip()))
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
        body = reader.read(length) if length else b""
        fault = self._pick(line)
        if fault is not None and fault.mode == "reset":
            # SO_LINGER 0: the close sends a reset, as a daemon that died mid-request would.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return
        if fault is not None and fault.mode == "500":
            payload = b'{"message":"injected fault: internal server error"}'
            conn.sendall(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(payload), payload)
            )
            return
        if any(k.lower() == "upgrade" for k, _ in headers):
            # An attach hijacks the connection for the container's output: splice the raw
            # bytes both ways from here on.
            raw = line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
            self._splice(raw.encode("latin-1") + body, conn)
            return
        method, target = line.split(" ")[:2]
        upstream = _UnixHTTPConnection(self.upstream, timeout=600)
        try:
            forwarded = {k: v for k, v in headers if k.lower() not in ("connection",)}
            upstream.request(method, target, body=body or None, headers=forwarded)
            reply = upstream.getresponse()
            content = reply.read()
            if fault is not None and fault.mode == "lose_reply":
                conn.close()
                return
            head = [f"HTTP/1.1 {reply.status} {reply.reason}"]
            for name, value in reply.getheaders():
                if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                    head.append(f"{name}: {value}")
            head += [f"Content-Length: {len(content)}", "Connection: close", "", ""]
            conn.sendall("\r\n".join(head).encode("latin-1") + content)
        finally:
            upstream.close()
