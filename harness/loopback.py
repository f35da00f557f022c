"""Serve a test HTTP handler on a free port of 127.0.0.1, the only address tests may talk to.

A cluster's stand-ins reach the host at their private network's gateway instead: the
host's own address on a network the test made, never an outside one.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextmanager
def serve_on_loopback(handler: type[BaseHTTPRequestHandler], address: str = "127.0.0.1"):
    """Yield the server's base URL; stop it even on failure."""
    server = ThreadingHTTPServer((address, 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{address}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
