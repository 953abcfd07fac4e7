"""CORS for the one route a browser calls: ``POST /v1/realtime/calls``.

The documented browser flow is: a server mints an ephemeral key (``client_secrets``, with the
real key, server-side), then the web page posts its SDP offer to ``/v1/realtime/calls`` with
``Authorization: Bearer ek_...`` and ``Content-Type: application/sdp``. Both headers make the
request "non-simple", so the browser first sends a preflight ``OPTIONS``; without an answer
the page's ``fetch`` fails before the offer leaves. The route is answered for any origin, as
the browser flow needs (the ephemeral key, not the origin, is the credential; no cookies are
involved, so ``*`` is allowed), and ``Location`` is exposed so the page can hang up its call.
Other routes stay without CORS: ``client_secrets`` must not be called from a page.
"""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CALLS_PATH = "/v1/realtime/calls"
ALLOWED_HEADERS = "Authorization, Content-Type, OpenAI-Beta, OpenAI-Organization, OpenAI-Project"
_RESPONSE = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "Location"}
_PREFLIGHT = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": ALLOWED_HEADERS,
    "Access-Control-Max-Age": "600",
}


class CallsCors:
    """ASGI middleware: CORS headers on ``/v1/realtime/calls`` only; everything else passes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != CALLS_PATH:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in _PREFLIGHT.items()],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                for name, value in _RESPONSE.items():
                    out[name] = value
            await send(message)

        await self.app(scope, receive, send_with_cors)
