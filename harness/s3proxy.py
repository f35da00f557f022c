"""A proxy on 127.0.0.1 in front of moto that makes it behave like S3 over a network: latency and faults.

Every request waits ``latency`` seconds before it is forwarded (real S3's
time to first byte is about 10-30 ms; moto on loopback answers in under 1 ms),
and is counted by method. A fraction ``fault_rate`` of requests is, at random
with a fixed seed, answered with ``503 SlowDown`` (S3's throttling reply) or
dropped: the connection is closed before any response, as a reset or an
idle-timeout would. Both happen before the request reaches moto, so a retried
request is the first one moto sees.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlparse

from harness.loopback import serve_on_loopback

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "content-length",
}
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
)


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


class FaultyS3:
    """Counts what it did, by fault and by HTTP method."""

    def __init__(self, upstream: str, fault_rate: float, seed: int, latency: float = 0.0):
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.fault_rate = fault_rate
        self.latency = latency
        self.local = threading.local()
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter[tuple[str, str]] = Counter()

    def decide(self, method: str) -> str:
        with self.lock:
            draw = self.random.random()
            outcome = "forward"
            if draw < self.fault_rate / 2:
                outcome = "slowdown"
            elif draw < self.fault_rate:
                outcome = "drop"
            self.counts[(outcome, method)] += 1
            return outcome

    def handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_any(self):
                body = read_body(self)
                if proxy.latency:
                    time.sleep(proxy.latency)
                outcome = proxy.decide(self.command)
                if outcome == "drop":
                    self.close_connection = True
                    return
                if outcome == "slowdown":
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN)
                    return
                self.forward(body)

            def forward(self, body: bytes):
                # One kept-alive connection to moto per proxy thread: a new TCP connection per request
                # would cost the proxy more CPU than moto spends answering.
                upstream = getattr(proxy.local, "connection", None)
                if upstream is None:
                    upstream = proxy.local.connection = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                except (OSError, http.client.HTTPException):
                    upstream.close()
                    proxy.local.connection = None
                    raise
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                # A HEAD reply carries the object's length, not its own.
                length = response.getheader("Content-Length") if self.command == "HEAD" else len(data)
                self.send_header("Content-Length", str(length or 0))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any

        return Handler


@contextmanager
def faulty_s3(upstream: str, fault_rate: float = 0.1, seed: int = 7, latency: float = 0.0):
    """Serve the proxy on a free port of 127.0.0.1; yield its endpoint URL and the FaultyS3 counters."""
    proxy = FaultyS3(upstream, fault_rate, seed, latency)
    with serve_on_loopback(proxy.handler()) as url:
        yield url, proxy
