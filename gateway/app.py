"""The gateway's HTTP/websocket surface: ``create_app(settings, ...)``.

Routes:

- ``POST /twilio/voice``  the number's Voice URL: validate, admit, answer TwiML
- ``WS   /twilio/media``  the bidirectional Media Stream of an admitted call
- ``GET  /healthz``       liveness (no dependencies)
- ``GET  /readyz``        503 while draining or at capacity
- ``GET  /metrics``       Prometheus text format
- ``POST /admin/reload``  reload the profiles file (bearer token; off without one)
- ``GET  /admin/calls``   live calls and the last finished ones (bearer token)
- ``GET  /admin/records`` call records, newest first; filters ``number``, ``outcome``,
  ``since``, ``until`` (ISO 8601), ``limit`` (bearer token)
- ``GET  /admin/records/{call_sid}``  one call record (bearer token)
- ``GET  /admin/usage``   tokens and cost per number over ``since``/``until`` (bearer token)

Every ``/admin`` route also accepts the console's session cookie instead of the bearer token
(with its CSRF header on ``POST``), so the console reads the same API an operator scripts.
- ``/console/*``          the operator console and its browser phone (:mod:`gateway.console.routes`)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.requests import HTTPConnection
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

from gateway import proxies
from gateway.admission import Admissions, Replayed, is_loopback_host
from gateway.aio import cancel_and_wait
from gateway.bridge.call import RECENT_CALLS, CallRunner, CallServices, UpstreamFactory
from gateway.console import routes as console_routes
from gateway.errors import CapacityError, ConfigError, Forbidden
from gateway.numbers import Profile, ProfileStore
from gateway.observability import Metrics, mask_number
from gateway.records.pricing import Usage
from gateway.records.store import RecordQuery, RecordStore, RecordStoreError
from gateway.settings import Settings
from gateway.telephony import signature
from gateway.telephony.signature import Params
from gateway.tracing import TRACEPARENT_PARAM

log = logging.getLogger("gateway.app")

MEDIA_PATH = "/twilio/media"
VOICE_PATH = "/twilio/voice"
CALL_TOKEN_PARAM = "gateway_call_token"
PROFILE_PARAM = "gateway_number"


@dataclass
class GatewayState:
    """Process-wide state shared by the routes; one per app."""

    settings: Settings
    profiles: ProfileStore
    metrics: Metrics
    upstream: UpstreamFactory
    admissions: Admissions
    services: CallServices = field(default_factory=CallServices)
    records: RecordStore | None = None
    clock: Callable[[], float] = time.monotonic
    # Admission tokens are checked by whichever replica gets the stream: wall-clock time.
    wall_clock: Callable[[], float] = time.time
    calls: dict[str, CallRunner] = field(default_factory=dict)
    console: console_routes.Console = field(default_factory=console_routes.Console)
    # Whose Forwarded / X-Forwarded-* headers count (GATEWAY_TRUSTED_PROXIES), parsed once.
    trusted_proxies: tuple[proxies.Network, ...] = field(init=False)
    ready: bool = False
    streams: int = 0
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_CALLS))
    # Set while no media stream is open: what a drain waits for.
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()
        self.trusted_proxies = self.settings.trusted_proxy_networks()


def create_app(
    settings: Settings,
    *,
    upstream: UpstreamFactory,
    profiles: ProfileStore | None = None,
    metrics: Metrics | None = None,
    services: CallServices | None = None,
    records: RecordStore | None = None,
) -> FastAPI:
    """Build the gateway app. ``upstream`` opens one Realtime session per call; ``services``
    are the optional rest: the carrier's REST API, prices, the call-record writer."""
    console = console_routes.Console()
    services = services or CallServices()
    if services.on_change is None:
        services = dataclasses.replace(services, on_change=console.bus.changed)
    state = GatewayState(
        settings=settings,
        profiles=profiles or ProfileStore(settings.profiles_file),
        metrics=metrics or Metrics(),
        upstream=upstream,
        admissions=_admissions(settings),
        services=services,
        records=records,
        console=console,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.ready = True
        watcher = asyncio.create_task(_watch_profiles(state), name="profiles-watcher")
        try:
            yield
        finally:
            state.ready = False
            await cancel_and_wait(watcher)
            await asyncio.gather(
                *(c.hang_up("gateway shutting down") for c in state.calls.values())
            )

    app = FastAPI(title="gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = state

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        now = state.wall_clock()
        if not state.ready or state.admissions.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not state.admissions.has_room(now):
            return JSONResponse({"status": "at capacity"}, status_code=503)
        return JSONResponse({"status": "ready", "calls": state.admissions.load(now)})

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post(VOICE_PATH)
    async def incoming_call(request: Request) -> Response:
        try:
            form = await _read_form(request, state.settings.max_webhook_bytes)
        except _BadBody as exc:
            state.metrics.webhooks.labels(exc.result).inc()
            log.warning("webhook refused: %s", exc)
            return PlainTextResponse(exc.result.replace("_", " "), status_code=exc.status)
        params = {name: values[-1] for name, values in form.items()}
        origin = _origin(request, state)
        try:
            _authorize_carrier(request, state, origin, form)
        except Forbidden as exc:
            state.metrics.webhooks.labels("forbidden").inc()
            log.warning("webhook refused: %s", exc)
            return PlainTextResponse("forbidden", status_code=403)
        call_sid = params.get("CallSid", "")
        if not call_sid:
            state.metrics.webhooks.labels("bad_request").inc()
            return PlainTextResponse("missing CallSid", status_code=400)
        called, caller = params.get("To"), params.get("From")
        profile = state.profiles.for_number(called)
        with state.services.tracing.webhook(call_sid, called) as traceparent:
            try:
                admission = state.admissions.admit(call_sid, called, caller, state.wall_clock())
            except Replayed as exc:
                state.metrics.webhooks.labels("replayed").inc()
                log.warning("webhook refused: %s", exc)
                return PlainTextResponse("forbidden", status_code=403)
            except CapacityError as exc:
                state.metrics.webhooks.labels("refused_capacity").inc()
                log.warning("call %s refused: %s", call_sid, exc)
                return _twiml(_fallback_only(profile))
        state.metrics.webhooks.labels("admitted").inc()
        log.info(
            "call %s admitted for %s (profile %s) from %s",
            call_sid,
            called or "an unnamed number (no 'To' in the webhook)",
            profile.name,
            mask_number(caller),
        )
        stream_url = _carrier_url(state, origin, MEDIA_PATH, websocket=True)
        twiml = _connect_twiml(stream_url, admission.token, called, profile, traceparent)
        return _twiml(twiml)

    @app.websocket(MEDIA_PATH)
    async def media_stream(ws: WebSocket) -> None:
        try:
            _authorize_carrier(ws, state, _origin(ws, state), None)
        except Forbidden as exc:
            await CallRunner(ws, state).refuse(exc)
            return
        await serve_stream(ws)

    async def serve_stream(ws: WebSocket) -> None:
        """Run an authorized media stream (a carrier's, or the console's browser phone)."""
        runner = CallRunner(ws, state)
        state.streams += 1
        state.idle.clear()
        try:
            await runner.run()
        finally:
            state.streams -= 1
            if state.streams == 0:
                state.idle.set()

    @app.post("/admin/reload")
    async def admin_reload(request: Request) -> Response:
        _require_admin(request, state)
        try:
            fresh = state.profiles.reload()
        except ConfigError as exc:
            state.metrics.profile_reloads.labels("invalid").inc()
            return JSONResponse({"reloaded": False, "error": str(exc)}, status_code=422)
        state.metrics.profile_reloads.labels("ok").inc()
        return JSONResponse({"reloaded": True, "numbers": sorted(fresh.numbers)})

    @app.get("/admin/calls")
    async def admin_calls(request: Request) -> Response:
        _require_admin(request, state)
        return JSONResponse(
            {
                "calls": [c.summary() for c in state.calls.values()],
                "recent": list(state.recent),
            }
        )

    @app.get("/admin/records")
    async def admin_records(
        request: Request,
        number: str | None = None,
        outcome: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 100,
    ) -> Response:
        _require_admin(request, state)
        store = _records(state)
        if not 1 <= limit <= 1000:
            raise HTTPException(422, "limit must be between 1 and 1000")
        query = RecordQuery(
            number=number,
            outcome=outcome,
            since=_instant("since", since),
            until=_instant("until", until),
            limit=limit,
        )
        with _store_errors():
            found = await store.query(query)
        return JSONResponse({"records": [r.to_dict() for r in found]})

    @app.get("/admin/records/{call_sid}")
    async def admin_record(request: Request, call_sid: str) -> Response:
        _require_admin(request, state)
        with _store_errors():
            found = await _records(state).get(call_sid)
        if found is None:
            raise HTTPException(404, f"no call record for {call_sid}")
        return JSONResponse(found.to_dict())

    @app.get("/admin/usage")
    async def admin_usage(
        request: Request,
        since: str | None = None,
        until: str | None = None,
        number: str | None = None,
    ) -> Response:
        _require_admin(request, state)
        with _store_errors():
            rows = await _records(state).totals(
                since=_instant("since", since), until=_instant("until", until), number=number
            )
        total = {
            "calls": sum(r.calls for r in rows),
            "duration_s": round(sum(r.duration_s for r in rows), 3),
            "usage": sum((r.usage for r in rows), Usage()).as_dict(),
            "cost_usd": round(sum(r.cost_usd for r in rows), 6),
            "unpriced_calls": sum(r.unpriced_calls for r in rows),
        }
        return JSONResponse({"numbers": [r.to_dict() for r in rows], "total": total})

    console_routes.install(app, state, console, serve_stream)
    return app


def _records(state: GatewayState) -> RecordStore:
    if state.records is None:
        raise HTTPException(404, "call records are off (GATEWAY_RECORDS_URL=off)")
    return state.records


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """A records database that fails a query is a 503 saying why (its URL password masked)."""
    try:
        yield
    except RecordStoreError as exc:
        raise HTTPException(503, str(exc)) from None


def _instant(name: str, value: str | None) -> datetime | None:
    """An ISO 8601 query parameter as an aware UTC time (no zone means UTC)."""
    if value is None or value == "":
        return None
    if re.search(r" \d\d:\d\d$", value):  # an unescaped "+01:00" arrives as " 01:00"
        value = f"{value[:-6]}+{value[-5:]}"
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(
            422, f"{name}: {value!r} is not an ISO 8601 time such as 2026-12-01T09:00:00Z"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _admissions(settings: Settings) -> Admissions:
    key = settings.call_token_key()
    if key is None:
        return Admissions(max_calls=settings.max_calls, max_setup_rate=settings.max_setup_rate)
    return Admissions(
        max_calls=settings.max_calls, max_setup_rate=settings.max_setup_rate, secret=key
    )


def _twiml(resp: VoiceResponse) -> Response:
    return Response(str(resp), media_type="application/xml")


def _fallback(resp: VoiceResponse, profile: Profile) -> VoiceResponse:
    if profile.fallback.number:
        resp.dial(profile.fallback.number)
    else:
        resp.say(profile.fallback.message)
        resp.hangup()
    return resp


def _fallback_only(profile: Profile) -> VoiceResponse:
    return _fallback(VoiceResponse(), profile)


def _connect_twiml(
    url: str, token: str, called: str | None, profile: Profile, traceparent: str | None = None
) -> VoiceResponse:
    resp = VoiceResponse()
    connect = Connect()
    stream = Stream(url=url)
    stream.parameter(name=CALL_TOKEN_PARAM, value=token)
    if called:
        stream.parameter(name=PROFILE_PARAM, value=called)
    if traceparent:  # the stream's span continues the webhook's trace, on any replica
        stream.parameter(name=TRACEPARENT_PARAM, value=traceparent)
    connect.append(stream)
    resp.append(connect)
    # Twilio runs what follows <Connect> only when the stream ends: our fallback.
    return _fallback(resp, profile)


FORM_TYPE = "application/x-www-form-urlencoded"


class _BadBody(Exception):
    """A webhook body refused before it is parsed: ``status`` to answer, ``result`` to count."""

    def __init__(self, status: int, result: str, why: str) -> None:
        super().__init__(why)
        self.status, self.result = status, result


async def _read_form(request: Request, limit: int) -> dict[str, list[str]]:
    """The webhook's form fields, each name with its values in order; raise :class:`_BadBody`.

    The body comes before the signature can be checked, so anyone can send one: it is read
    only up to ``limit`` bytes (a declared ``Content-Length`` above it is refused unread) and
    only as the urlencoded form Twilio sends, never multipart (files, spooling).
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != FORM_TYPE:
        raise _BadBody(415, "unsupported_media_type", f"content type {ctype!r} is not {FORM_TYPE}")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _BadBody(413, "too_large", f"body of {declared} bytes (limit {limit})")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _BadBody(413, "too_large", f"body above {limit} bytes")
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _BadBody(400, "bad_request", f"unreadable form body: {exc}") from None
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    return form


def _origin(conn: HTTPConnection, state: GatewayState) -> proxies.Origin:
    """Client, scheme and host of a request; proxy headers count from trusted proxies only."""
    return proxies.resolve(
        peer=conn.client.host if conn.client else None,
        scheme=conn.url.scheme,
        host=conn.headers.get("host") or conn.url.netloc,
        headers=conn.headers.items(),
        trusted=state.trusted_proxies,
    )


def _carrier_url(
    state: GatewayState, origin: proxies.Origin, path: str, *, websocket: bool, query: str = ""
) -> str:
    """The URL the carrier called (or is told to call): ``GATEWAY_PUBLIC_URL`` when set."""
    return signature.public_url(
        request_url=f"{origin.scheme}://{origin.host}{path}",
        public_base=state.settings.public_url,
        path=path,
        websocket=websocket,
        query=query,
    )


def _authorize_carrier(
    conn: HTTPConnection, state: GatewayState, origin: proxies.Origin, params: Params | None
) -> None:
    """Raise :class:`Forbidden` unless this carrier request may go on: the webhook (form
    ``params``) or, with ``params=None``, the media-stream upgrade."""
    token = state.settings.twilio_auth_token
    if token is None:
        _unsigned_allowed(origin.client, state)
        return
    if state.settings.public_url is None and not is_loopback_host(origin.hostname):
        # Without a public URL the signature would be checked against whatever Host the
        # request names, and the TwiML would send the stream there.
        raise Forbidden(
            f"Host {origin.host!r} is not accepted: with TWILIO_AUTH_TOKEN set, set "
            "GATEWAY_PUBLIC_URL to the URL Twilio calls (only loopback hosts work without it)"
        )
    websocket = params is None
    url = _carrier_url(state, origin, conn.url.path, websocket=websocket, query=conn.url.query)
    sig = conn.headers.get("x-twilio-signature", "")
    secret = token.get_secret_value()
    if websocket:
        valid = signature.validate_websocket_upgrade(secret, url, sig)
    else:
        assert params is not None
        valid = signature.validate_webhook(secret, url, params, sig)
    if not valid:
        what = "media stream upgrade" if websocket else "webhook request"
        raise Forbidden(f"X-Twilio-Signature does not match the {what} (checked against {url})")


def _unsigned_allowed(host: str | None, state: GatewayState) -> None:
    mode = state.settings.carrier_auth
    if mode == "unsigned":
        log.warning("accepting an UNSIGNED carrier request from %s (GATEWAY_ALLOW_UNSIGNED)", host)
        return
    if mode == "refused":
        raise Forbidden(
            "OPENAI_API_KEY is set and TWILIO_AUTH_TOKEN is not, so unsigned carrier requests "
            "are refused (set the token, or GATEWAY_ALLOW_UNSIGNED=true for development)"
        )
    if not is_loopback_host(host):
        raise Forbidden(
            "no TWILIO_AUTH_TOKEN is configured, so only loopback clients are accepted "
            "(set the token, or GATEWAY_ALLOW_UNSIGNED=true for development)"
        )


def _require_admin(request: Request, state: GatewayState) -> None:
    token = state.settings.admin_token
    if token is None:
        raise HTTPException(404, "admin endpoints are off (set GATEWAY_ADMIN_TOKEN)")
    given = request.headers.get("authorization", "")
    expected = f"Bearer {token.get_secret_value()}"
    if hmac.compare_digest(given.encode(), expected.encode()):
        return
    if not given and request.cookies.get(console_routes.COOKIE):
        state.console.authorize(request, state)  # the console's session (CSRF on POSTs)
        return
    raise HTTPException(401, "bad or missing admin bearer token")


async def _watch_profiles(state: GatewayState, interval_s: float = 2.0) -> None:
    """Reload the profiles file when it changes on disk; a bad file keeps the old profiles."""
    while True:
        await asyncio.sleep(interval_s)
        if not state.profiles.changed_on_disk():
            continue
        try:
            state.profiles.reload()
        except ConfigError as exc:
            state.metrics.profile_reloads.labels("invalid").inc()
            log.error("profiles file changed but is invalid; keeping the old profiles: %s", exc)
        else:
            state.metrics.profile_reloads.labels("ok").inc()
            log.info("profiles reloaded from %s", state.profiles.path)


def gateway_state(app: FastAPI) -> GatewayState:
    """The :class:`GatewayState` of an app built by :func:`create_app` (for the CLI and tests)."""
    st: Any = app.state.gateway
    assert isinstance(st, GatewayState)
    return st
