"""The web console (``/``): static files from package data that call the HTTP/JSON API, nothing else.

The console is plain HTML, CSS and ES modules under ``assets/`` (no build step, no CDN: the machines
that run quantledger may have no internet). Every rule it shows (which types exist, what fits on disk,
which type to pick, what a digest's verdict is) comes from an API answer; the console only draws them.
Its pages are fragments of the one document (``#/new``, ``#/jobs``, ``#/jobs/<id>/compare``,
``#/recommend``, ``#/verify``, ``#/catalogue``).

Every answer of the HTTP server carries a Content-Security-Policy that allows only this origin's own
scripts, styles and API (``security_headers``), so a job's source name or an error message can never
run as script in the console, and no other site may frame it.
"""

from __future__ import annotations

import pathlib

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ASSETS = pathlib.Path(__file__).with_name("assets")
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)


async def _index(request: Request) -> Response:
    return FileResponse(ASSETS / "index.html", headers={"cache-control": "no-cache"})


def console_routes() -> list[BaseRoute]:
    return [
        Route("/", _index, methods=["GET"]),
        Mount("/console", StaticFiles(directory=ASSETS), name="console"),
    ]


class SecurityHeaders:
    """ASGI middleware: ``SECURITY_HEADERS`` on every HTTP answer (streams included, untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self._app(scope, receive, send_with_headers)
