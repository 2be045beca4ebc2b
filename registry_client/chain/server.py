"""serve_chain: the EmbeddedChain behind an HTTP JSON-RPC endpoint (POST /), with GET /health."""

from __future__ import annotations

import http.server
import json
import logging
import pathlib
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from registry_client.bounded_json import JsonRefused, parse_bounded_json
from registry_client.chain.node import EmbeddedChain
from registry_client.chain.rpc import DEFAULT_CALL_TIMEOUT, DEFAULT_GAS_CAP, RpcDispatcher

log = logging.getLogger(__name__)
MAX_BODY = 8 << 20
#: JSON-RPC requests nest a few levels (a batch of calls with an access list: about 5)
MAX_DEPTH = 32
SOCKET_TIMEOUT = 60.0
_LENGTH = re.compile(r"[0-9]{1,15}")


def _rpc_error(code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}


class _Refused(Exception):
    """A request refused before dispatch: HTTP status, JSON-RPC error code, message; the connection closes."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _handler(dispatcher: RpcDispatcher) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        """JSON-RPC over HTTP for local, non-browser clients.

        No CORS headers are ever sent, and any request carrying an ``Origin`` header (every browser sends
        one with a POST, ``null`` from sandboxed and file pages included) is refused with 403, so a web
        page, even one on a DNS-rebound name, cannot drive the node. Bodies need a valid Content-Length
        of at most MAX_BODY (chunked bodies are refused) and are parsed bounded in size and depth."""

        protocol_version = "HTTP/1.1"
        timeout = SOCKET_TIMEOUT  # a client that stops sending mid-request loses its connection, not a thread forever

        def setup(self) -> None:
            super().setup()
            # headers and body leave in two writes: without this, Nagle + delayed ACK add ~40 ms per call
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _reply(self, status: int, body: Any, *, close: bool = False) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def _refuse_browsers(self) -> None:
            if self.headers.get("Origin") is not None:
                raise _Refused(403, -32600, "requests from web pages (an Origin header) are refused")

        def _body(self) -> bytes:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                raise _Refused(411, -32600, "chunked bodies are not accepted: send a Content-Length")
            lengths = self.headers.get_all("Content-Length") or []
            if len(lengths) != 1 or not _LENGTH.fullmatch(lengths[0].strip()):
                raise _Refused(411, -32600, "a POST needs one valid Content-Length")
            length = int(lengths[0])
            if length > MAX_BODY:
                raise _Refused(413, -32600, f"request body too large: at most {MAX_BODY} bytes")
            body = self.rfile.read(length)
            if len(body) != length:
                raise _Refused(400, -32700, "parse error: the body ended before its Content-Length")
            return body

        def do_GET(self) -> None:
            try:
                self._refuse_browsers()
            except _Refused as refused:
                self._reply(refused.status, _rpc_error(refused.code, refused.message), close=True)
                return
            if self.path.rstrip("/") == "/health":
                number = dispatcher.methods["eth_blockNumber"]([])
                self._reply(200, {"status": "ok", "blockNumber": int(number, 16)})
            else:
                self._reply(404, {"error": "POST JSON-RPC to /"})

        def do_POST(self) -> None:
            try:
                self._refuse_browsers()
                body = self._body()
            except _Refused as refused:
                self._reply(refused.status, _rpc_error(refused.code, refused.message), close=True)
                return
            try:
                request = parse_bounded_json(body, max_bytes=MAX_BODY, max_depth=MAX_DEPTH)
            except JsonRefused as exc:
                self._reply(200, _rpc_error(-32700, f"parse error: {exc}"))
                return
            try:
                response = dispatcher.handle(request)
            except Exception:  # the dispatcher answers every error itself; this is a last guard
                log.exception("JSON-RPC request failed")
                self._reply(200, _rpc_error(-32603, "internal error"))
                return
            if response is None:
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._reply(200, response)

        def do_OPTIONS(self) -> None:  # a CORS preflight: no CORS headers, so browsers never send the call
            self._reply(403, _rpc_error(-32600, "requests from web pages are refused"), close=True)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed (reset, timed out): log it in one line, keep serving the others."""
        log.warning("connection from %s failed: %s", client_address, sys.exception())


def serve_chain(
    data_dir: pathlib.Path,
    host: str,
    port: int,
    funded: list[str],
    *,
    on_ready: Callable[[str], None] | None = None,
    gas_cap: int = DEFAULT_GAS_CAP,
    call_timeout: float = DEFAULT_CALL_TIMEOUT,
) -> None:
    """Serve until SIGTERM/SIGINT; then snapshot the state and stop.

    ``gas_cap`` and ``call_timeout`` bound each eth_call / eth_estimateGas (see ``rpc``)."""
    chain = EmbeddedChain.open(data_dir, funded)
    dispatcher = RpcDispatcher(chain, gas_cap=gas_cap, call_timeout=call_timeout)
    server = _Server((host, port), _handler(dispatcher))
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
