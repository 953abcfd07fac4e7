"""HTTP signalling with the Realtime API: :class:`Signalling`. No aiortc, no timers.

``POST {base_url}/realtime/client_secrets``
    the session and the server key in, an ephemeral ``ek_...`` key out (ephemeral auth only).
``POST {base_url}/realtime/calls``
    the SDP offer in, 201 + the answer SDP out; the call id is the ``rtc_...`` segment of
    ``Location``. Unified auth sends multipart ``sdp`` + ``session`` with the server key;
    ephemeral auth sends the raw SDP with the ephemeral key.
``POST {base_url}/realtime/calls/{call_id}/hangup``
    ends the call on the service's side.

Errors: an HTTP error status raises :class:`~gateway.errors.UpstreamRefused` carrying the
server's code and message (the key scrubbed out) plus a hint for the operator; an answer that
is not what the protocol promises raises :class:`~gateway.errors.UpstreamProtocolError`; a
connection failure raises :class:`~gateway.errors.UpstreamError` (``code="unreachable"``).
``httpx.TimeoutException`` passes through untouched: the caller owns the deadline and knows
which phase overran.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from gateway.errors import UpstreamError, UpstreamProtocolError, UpstreamRefused
from gateway.realtime import events as rt

__all__ = ["Answer", "Signalling", "call_id_from_location", "http_client"]

_HINTS: Final = {
    400: "the request or session configuration is invalid",
    401: "check OPENAI_API_KEY",
    403: "the key's project may not use this model or endpoint",
    404: "check GATEWAY_REALTIME_BASE_URL",
    429: "rate limit or quota reached; retry later",
}


@dataclass(frozen=True, slots=True)
class Answer:
    """The service's answer to an offer: its SDP and the call id (None without ``Location``)."""

    sdp: str
    call_id: str | None


class Signalling:
    """The Realtime API's HTTP endpoints under ``base_url`` (``https://api.openai.com/v1``).

    Every method takes the ``httpx.AsyncClient`` to use, so one client (and its TLS session)
    can serve the whole setup; see :func:`http_client`.
    """

    def __init__(
        self, base_url: str, api_key: str, *, safety_identifier: str | None = None
    ) -> None:
        self.base_url = base_url
        self._api_key = api_key
        self._safety_identifier = safety_identifier

    async def client_secret(
        self, client: httpx.AsyncClient, session: Mapping[str, Any], ttl_s: int
    ) -> str:
        """Mint an ephemeral key for ``session``, valid ``ttl_s`` seconds; returns ``ek_...``."""
        body = {"expires_after": {"anchor": "created_at", "seconds": ttl_s}, "session": session}
        resp = await self._post(client, "/realtime/client_secrets", json=body)
        if resp.status_code != 200:
            raise self.refusal(resp, "the client secret request")
        try:
            value = resp.json()["value"]
        except (ValueError, KeyError, TypeError):
            value = None
        if not isinstance(value, str) or not value:
            raise UpstreamProtocolError("Realtime client_secrets answer has no string 'value'")
        return value

    async def post_offer(
        self,
        client: httpx.AsyncClient,
        offer_sdp: str,
        *,
        session: Mapping[str, Any] | None = None,
        ephemeral_key: str | None = None,
    ) -> Answer:
        """Send the offer; give either ``session`` (unified auth, the server key) or
        ``ephemeral_key`` (the session was given when the key was minted)."""
        if (session is None) == (ephemeral_key is None):
            raise ValueError("post_offer needs exactly one of session or ephemeral_key")
        if ephemeral_key is not None:
            resp = await self._post(
                client,
                "/realtime/calls",
                bearer=ephemeral_key,
                content=offer_sdp.encode(),
                headers={"Content-Type": "application/sdp", "Accept": "application/sdp"},
            )
        else:
            assert session is not None
            resp = await self._post(
                client,
                "/realtime/calls",
                files={
                    "sdp": (None, offer_sdp, "application/sdp"),
                    "session": (None, rt.encode(session), "application/json"),
                },
                headers={"Accept": "application/sdp"},
            )
        if resp.status_code not in (200, 201):
            raise self.refusal(resp, "the call")
        answer = resp.text
        if not answer.lstrip().startswith("v=0"):
            raise UpstreamProtocolError(
                f"Realtime answered HTTP {resp.status_code} without an SDP body "
                f"(content-type {resp.headers.get('content-type')!r})"
            )
        return Answer(answer, call_id_from_location(resp.headers.get("location")))

    async def hangup(self, client: httpx.AsyncClient, call_id: str) -> int:
        """Ask the service to end ``call_id``; returns the HTTP status (2xx: acknowledged)."""
        resp = await self._post(client, f"/realtime/calls/{call_id}/hangup")
        return resp.status_code

    def refusal(self, resp: httpx.Response, what: str) -> UpstreamRefused:
        """The error for an HTTP refusal of ``what``: status, the server's code and message."""
        status = resp.status_code
        code: str | None = None
        detail = ""
        try:
            err = resp.json().get("error")
        except (ValueError, AttributeError):
            err = None
        if isinstance(err, dict):
            code = err.get("code") if isinstance(err.get("code"), str) else None
            etype = err.get("type") if isinstance(err.get("type"), str) else None
            code = code or etype
            detail = str(err.get("message") or "")
        else:
            detail = resp.text[:200].strip()
        hint = _HINTS.get(status) or ("retry later" if status >= 500 else "")
        message = f"Realtime API refused {what}: HTTP {status}"
        if code:
            message += f" {code}"
        if detail:
            message += f": {detail}"
        if hint:
            message += f" ({hint})"
        return UpstreamRefused(self._scrub(message), status=status, code=code)

    async def _post(
        self,
        client: httpx.AsyncClient,
        path: str,
        *,
        bearer: str | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        all_headers = {"Authorization": f"Bearer {bearer or self._api_key}"}
        if self._safety_identifier:
            all_headers["OpenAI-Safety-Identifier"] = self._safety_identifier
        all_headers.update(headers or {})
        try:
            return await client.post(
                f"{self.base_url.rstrip('/')}{path}", headers=all_headers, **kwargs
            )
        except httpx.TimeoutException:
            raise
        except httpx.HTTPError as exc:
            raise UpstreamError(
                self._scrub(
                    f"cannot reach the Realtime API at {self.base_url}: {type(exc).__name__}: {exc}"
                ),
                code="unreachable",
            ) from None

    def _scrub(self, text: str) -> str:
        key = self._api_key
        return text.replace(key, "[redacted]") if key else text


@contextlib.asynccontextmanager
async def http_client(
    shared: httpx.AsyncClient | None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout_s: float,
) -> AsyncIterator[httpx.AsyncClient]:
    """``shared`` as is (its owner closes it), or a fresh client over ``transport`` for the
    block: no redirects, ``timeout_s`` per request, the process's cached TLS context."""
    if shared is not None:
        yield shared
        return
    async with httpx.AsyncClient(
        transport=transport,
        verify=_ssl_context(),
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=False,
    ) as client:
        yield client


def call_id_from_location(location: str | None) -> str | None:
    """The call id in a ``Location`` header: its last path segment starting with ``rtc_``.

    Query and fragment are ignored; a relative or absolute URL both work. None if absent.
    """
    if not location:
        return None
    for segment in reversed(urlsplit(location).path.split("/")):
        if segment.startswith("rtc_"):
            return segment
    return None


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # httpx builds a fresh context (loading the CA bundle, ~20 ms) for every client otherwise.
    return httpx.create_ssl_context()
