"""A tiny threaded HTTP server that hands each request to a fake platform's `handle` method.

Faults are injected per fake: a fake's `handle` may return `Reply(..., fault=...)`:
- "reset": close the connection without answering (after the fake already acted on it),
- "hang": answer nothing for `delay` seconds, then close (a client read timeout).
`latency` delays every reply, for benchmarks.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.time() when it arrived

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode("utf-8"), keep_blank_values=True)


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-serialisable, or bytes
    headers: dict[str, str] = field(default_factory=dict)
    fault: str | None = None
    delay: float = 0.0


class FakePlatform:
    """Subclasses implement `handle`; every request is kept in `requests`."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.requests: list[Request] = []
        self.latency = 0.0

    def handle(self, request: Request) -> Reply:
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms a request on loopback).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            at=time.time(),
        )
        fake = self.server.fake
        with fake.lock:
            fake.requests.append(request)
        reply = fake.handle(request)
        pause = fake.latency + reply.delay
        if pause:
            time.sleep(pause)
        if reply.fault in ("reset", "hang"):
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        headers = {"Content-Type": "application/json; charset=utf-8", **reply.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, fake: FakePlatform, port: int) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", port), _Handler)


def serve_until_interrupted(fake: FakePlatform, port: int, what: str) -> None:
    """`python -m crosspost.fakes.NAME`: serve `fake` on 127.0.0.1 until Ctrl-C or SIGTERM."""
    running = RunningFake(fake, port).start()
    print(f"{what} on {running.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()


class RunningFake:
    """A fake platform serving on 127.0.0.1 in a background thread; use as a context manager."""

    def __init__(self, fake: FakePlatform, port: int = 0) -> None:
        self.fake = fake
        self._server = _Server(fake, port)
        # A short poll interval: stop() waits for one poll, and tests start and stop many fakes.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> RunningFake:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> RunningFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
