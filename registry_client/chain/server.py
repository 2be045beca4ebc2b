"""serve_chain: the EmbeddedChain behind an HTTP JSON-RPC endpoint (POST /), with GET /health."""

from __future__ import annotations

import http.server
import json
import logging
import pathlib
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from registry_client.chain.node import EmbeddedChain
from registry_client.chain.rpc import RpcDispatcher

log = logging.getLogger(__name__)
MAX_BODY = 8 << 20


def _handler(dispatcher: RpcDispatcher) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # headers and body leave in two writes: without this, Nagle + delayed ACK add ~40 ms per call
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Access-Control-Allow-Origin", "*")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/health":
                number = dispatcher.methods["eth_blockNumber"]([])
                self._reply(200, {"status": "ok", "blockNumber": int(number, 16)})
            else:
                self._reply(404, {"error": "POST JSON-RPC to /"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._reply(413, {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "too large"}})
                return
            try:
                request = json.loads(self.rfile.read(length))
            except (ValueError, UnicodeDecodeError):
                self._reply(200, {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}})
                return
            response = dispatcher.handle(request)
            if response is None:
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._reply(200, response)

        def do_OPTIONS(self) -> None:
            self.send_response(204)
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Access-Control-Allow-Headers", "Content-Type")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return Handler


def serve_chain(
    data_dir: pathlib.Path,
    host: str,
    port: int,
    funded: list[str],
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; then snapshot the state and stop."""
    chain = EmbeddedChain.open(data_dir, funded)
    server = http.server.ThreadingHTTPServer((host, port), _handler(RpcDispatcher(chain)))
    server.daemon_threads = True
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
    url = f"http://{host}:{server.server_address[1]}"
    if on_ready is not None:
        on_ready(url)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        chain.close()
        log.info("chain stopped cleanly")
