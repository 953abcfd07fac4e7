"""The gateway's HTTP/websocket surface: ``create_app(settings, ...)``.

Routes:

- ``POST /twilio/voice``  the number's Voice URL: validate, admit, answer TwiML
- ``WS   /twilio/media``  the bidirectional Media Stream of an admitted call
- the same pair for every other carrier :func:`gateway.telephony.carriers.served` serves
  (``/signalwire/voice``, ``/telnyx/voice``, ``/plivo/answer``; docs/carriers.md)
- ``GET  /healthz``       liveness (no dependencies)
- ``GET  /readyz``        503 while draining or at capacity
- ``GET  /metrics``       Prometheus text format
- ``POST /admin/reload``  reload the profiles file (bearer token; off without one)
- ``GET  /admin/calls``   live calls and the last finished ones (bearer token)
- ``GET  /admin/records`` call records, newest first; filters ``number``, ``outcome``,
  ``since``, ``until`` (ISO 8601), ``limit`` (bearer token)
- ``GET  /admin/records/{call_sid}``  one call record (bearer token)
- ``GET  /admin/usage``   tokens and cost per number over ``since``/``until``, and per
  direction (inbound/outbound; ``direction`` filters) (bearer token)
- ``POST /calls``         place an outbound call (bearer token; docs/outbound.md)
- ``GET|PUT|DELETE /admin/opt-outs[/{number}]``  numbers never to call (bearer token)
- ``GET  /calls/{id}``    an outbound call's progress (bearer token)
- ``POST /twilio/outbound/status``  Twilio's status callback of an outbound call (signed)
- ``POST /twilio/outbound/amd``     its answering machine verdict (signed)

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
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
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
from gateway.bridge.call import (
    OUTBOUND_PARAM,
    RECENT_CALLS,
    CallRunner,
    CallServices,
    UpstreamFactory,
)
from gateway.console import routes as console_routes
from gateway.errors import CapacityError, ConfigError, Forbidden
from gateway.limits import Notice
from gateway.numbers import E164, ProfileStore
from gateway.observability import Metrics, mask_number
from gateway.outbound import Dialer, OutboundCall, OutboundRefused, check_variables
from gateway.records.model import CallRecord
from gateway.records.pricing import Usage
from gateway.records.store import RecordQuery, RecordStore, RecordStoreError, UsageTotals
from gateway.settings import Settings
from gateway.telephony import signature
from gateway.telephony.carriers import (
    CALL_TOKEN_PARAM,
    PROFILE_PARAM,
    Answer,
    Carrier,
    SignedRequest,
    StreamTarget,
    carrier_named,
    served,
)
from gateway.telephony.rest import CreateCall, TwilioApiError, TwilioRestClient
from gateway.tracing import TRACEPARENT_PARAM

log = logging.getLogger("gateway.app")

MEDIA_PATH = "/twilio/media"
VOICE_PATH = "/twilio/voice"
STATUS_PATH = "/twilio/outbound/status"
AMD_PATH = "/twilio/outbound/amd"
OUTBOUND_TOKEN_MARGIN_S = 60.0
"""An outbound call's token lives for its ring time plus this (Twilio's setup, the stream)."""


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
    outbound: Dialer = field(default_factory=Dialer)
    console: console_routes.Console = field(default_factory=console_routes.Console)
    # Whose Forwarded / X-Forwarded-* headers count (GATEWAY_TRUSTED_PROXIES), parsed once.
    trusted_proxies: tuple[proxies.Network, ...] = field(init=False)
    ready: bool = False
    streams: int = 0
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_CALLS))
    # Set while no media stream is open: what a drain waits for.
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    # Upgrades refused before the handshake: one log line a minute, however many there are.
    refused_upgrades: Notice = field(default_factory=Notice)

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

    for carrier in served(settings).values():
        _carrier_routes(app, state, carrier)

    async def serve_stream(ws: WebSocket) -> None:
        """Run an authorized media stream in Twilio's dialect: the console's browser phone."""
        await _run_stream(state, CallRunner(ws, state))

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
        direction: str | None = None,
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
            direction=_direction(direction),
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
        direction: str | None = None,
    ) -> Response:
        _require_admin(request, state)
        store, wanted = _records(state), _direction(direction)
        window = {"since": _instant("since", since), "until": _instant("until", until)}
        with _store_errors():
            rows = await store.totals(**window, number=number, direction=wanted)
            directions = {
                d: _sum_totals(await store.totals(**window, number=number, direction=d))
                for d in DIRECTIONS
                if wanted in (None, d)
            }
        return JSONResponse(
            {
                "numbers": [r.to_dict() for r in rows],
                "total": _sum_totals(rows),
                "directions": directions,
            }
        )

    @app.post("/calls")
    async def place_call(request: Request) -> Response:
        _require_admin(request, state)
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, "the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise HTTPException(400, "the body must be a JSON object")
        try:
            call = await _place(request, state, body)
        except OutboundRefused as exc:
            headers = None
            if exc.retry_after_s is not None:
                headers = {"Retry-After": str(max(1, round(exc.retry_after_s + 0.49)))}
            return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)
        return JSONResponse(call.view(), status_code=201)

    @app.get("/calls/{call_id}")
    async def get_call(request: Request, call_id: str) -> Response:
        _require_admin(request, state)
        call = state.outbound.get(call_id)
        if call is None:
            raise HTTPException(404, f"no outbound call {call_id}")
        return JSONResponse(call.view())

    @app.get("/admin/opt-outs")
    async def list_opt_outs(request: Request) -> Response:
        _require_admin(request, state)
        with _store_errors():
            found = await _records(state).opt_outs()
        return JSONResponse({"opt_outs": [o.to_dict() for o in found]})

    @app.put("/admin/opt-outs/{number}")
    async def add_opt_out(request: Request, number: str) -> Response:
        _require_admin(request, state)
        if not E164.match(number):
            raise HTTPException(422, f"{number!r} is not an E.164 number such as +15551234567")
        reason = ""
        if await request.body():
            try:
                body = await request.json()
            except ValueError:
                raise HTTPException(400, 'the body must be JSON: {"reason": "..."}') from None
            reason = str(body.get("reason") or "")[:500] if isinstance(body, dict) else ""
        at = datetime.fromtimestamp(state.wall_clock(), UTC)
        with _store_errors():
            await _records(state).opt_out(number, reason, at)
        return Response(status_code=204)

    @app.delete("/admin/opt-outs/{number}")
    async def remove_opt_out(request: Request, number: str) -> Response:
        _require_admin(request, state)
        with _store_errors():
            removed = await _records(state).remove_opt_out(number)
        if not removed:
            raise HTTPException(404, f"{number} is not on the opt-out list")
        return Response(status_code=204)

    @app.post(STATUS_PATH)
    async def status_callback(request: Request) -> Response:
        call, params = await _outbound_callback(request, state)
        if state.outbound.status(call, params, state.wall_clock()):
            # Busy, no answer, failed, canceled: no stream ever bound, so the slot is freed
            # here and the record written here, with no upstream session opened (no cost).
            state.admissions.release(call.id)
            _save_unstreamed(state, call)
        log.info("outbound call %s: %s", call.id, call.status)
        return Response(status_code=204)

    @app.post(AMD_PATH)
    async def amd_callback(request: Request) -> Response:
        call, params = await _outbound_callback(request, state)
        state.outbound.amd(call, params)
        log.info("outbound call %s answered by %s", call.id, call.answered_by)
        return Response(status_code=204)

    console_routes.install(app, state, console, serve_stream)
    return app


def upgrade_screen(app: FastAPI) -> Callable[[Mapping[str, Any]], bool]:
    """The websocket upgrades ``app`` wants to see, decided before the handshake (for
    :func:`gateway.serving.serve_app`'s ``screen=``).

    A media-stream upgrade (to any served carrier's media path) that fails the same carrier
    check as the route (signature, or loopback-only without a credential) is refused there
    and then: counted as
    ``gateway_calls_total{outcome="refused"}`` like a refusal by the route, logged once a
    minute with how many there were, and never given a websocket, a task or a call. Upgrades
    to any other path go to the app, which answers them as it always has (a route of its own,
    or 403): the screen only speaks for the route whose check it repeats. The route keeps its
    own check, for servers without a screen.
    """
    state = gateway_state(app)
    by_path = {c.media_path: c for c in served(state.settings).values()}

    def screen(scope: Mapping[str, Any]) -> bool:
        carrier = by_path.get(str(scope.get("path")))
        if carrier is None:
            return True
        configured = carrier.credential(state.settings) is not None
        if state.settings.carrier_auth_for(configured=configured) == "unsigned":
            return True  # accepted from anywhere, and the route logs it
        conn = HTTPConnection(dict(scope))
        try:
            _authorize_carrier(conn, state, _origin(conn, state), carrier, None)
        except Forbidden as exc:
            state.metrics.calls.labels("refused").inc()
            n = state.refused_upgrades.count(state.clock())
            if n is not None:
                log.warning(
                    "media stream refused: %s (%d upgrade(s) refused before the handshake "
                    "since the last such line; at most one line a minute)",
                    exc,
                    n,
                )
            return False
        return True

    return screen


async def _place(request: Request, state: GatewayState, body: dict[str, Any]) -> OutboundCall:
    """Validate, admit and create one outbound call; raise :class:`OutboundRefused`."""
    variables = check_variables(body.get("variables"))
    to = body.get("to")
    if state.records is not None and isinstance(to, str):
        try:
            blocked = await state.records.opted_out(to)
        except RecordStoreError as exc:
            raise OutboundRefused(503, f"cannot check the opt-out list: {exc}") from None
        if blocked:
            raise OutboundRefused(403, f"{to} is on the opt-out list: not called")
    api = state.services.carrier_api
    if not isinstance(api, TwilioRestClient):
        raise OutboundRefused(
            409,
            "outbound calls need Twilio's REST API: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN "
            "(or TWILIO_API_KEY and TWILIO_API_SECRET)",
        )
    # From the limits' check to the call's entry in the dialer nothing awaits: two requests
    # at once cannot both take the last slot or the last token of the pace.
    now, wall = state.clock(), state.wall_clock()
    profile = state.outbound.check(
        state.profiles.current, to, body.get("from"), body.get("profile"), now
    )
    to, from_ = str(body["to"]), str(body["from"])
    call = state.outbound.placing(to, from_, profile, variables, now, wall)
    ttl = state.settings.outbound_ring_timeout_s + OUTBOUND_TOKEN_MARGIN_S
    try:
        admission = state.admissions.admit(call.id, profile.name, to, wall, ttl_s=ttl)
    except CapacityError as exc:
        state.outbound.failed_to_place(call, str(exc), wall)
        raise OutboundRefused(503, f"not placed: {exc}", 1.0) from None
    origin = _origin(request, state)
    detection = profile.outbound.machine_detection
    create = CreateCall(
        to=to,
        from_=from_,
        twiml=str(_outbound_twiml(state, origin, admission.token, profile.name, call.id)),
        status_callback=_carrier_url(
            state, origin, STATUS_PATH, websocket=False, query=f"call={call.id}"
        ),
        machine_detection=None if detection == "off" else detection,
        machine_detection_timeout_s=profile.outbound.detection_timeout_s,
        amd_callback=_carrier_url(
            state, origin, AMD_PATH, websocket=False, query=f"call={call.id}"
        ),
        timeout_s=state.settings.outbound_ring_timeout_s,
    )
    try:
        info = await api.create_call(create)
    except TwilioApiError as exc:
        state.admissions.release(call.id)
        state.outbound.failed_to_place(call, str(exc), state.wall_clock())
        status = 422 if exc.status == 400 else 502
        raise OutboundRefused(status, f"Twilio did not create the call: {exc}") from None
    state.outbound.placed(call, info.sid, info.status, state.wall_clock())
    log.info(
        "outbound call %s placed to %s (profile %s): %s",
        call.id,
        mask_number(to),
        profile.name,
        info.sid,
    )
    return call


def _outbound_twiml(
    state: GatewayState, origin: proxies.Origin, token: str, profile: str, call_id: str
) -> VoiceResponse:
    """``<Connect><Stream>`` with the call's token, then ``<Hangup/>``: when the stream ends
    the outbound call is over (no fallback: nobody called us)."""
    resp = VoiceResponse()
    connect = Connect()
    stream = Stream(url=_carrier_url(state, origin, MEDIA_PATH, websocket=True))
    stream.parameter(name=CALL_TOKEN_PARAM, value=token)
    stream.parameter(name=PROFILE_PARAM, value=profile)
    stream.parameter(name=OUTBOUND_PARAM, value=call_id)
    connect.append(stream)
    resp.append(connect)
    resp.hangup()
    return resp


async def _outbound_callback(
    request: Request, state: GatewayState
) -> tuple[OutboundCall, dict[str, str]]:
    """The signed form of a status or AMD callback and the call it names; raise 4xx."""
    try:
        body, form = await _read_form(request, state.settings.max_webhook_bytes)
    except _BadBody as exc:
        raise HTTPException(exc.status, exc.result.replace("_", " ")) from None
    try:
        twilio = carrier_named("twilio")
        _authorize_carrier(request, state, _origin(request, state), twilio, (body, form))
    except Forbidden as exc:
        state.metrics.webhooks.labels("forbidden").inc()
        log.warning("outbound callback refused: %s", exc)
        raise HTTPException(403, "forbidden") from None
    call = state.outbound.get(request.query_params.get("call", ""))
    if call is None:
        raise HTTPException(404, "no such outbound call")
    params = {name: values[-1] for name, values in form.items()}
    if call.call_sid is not None and params.get("CallSid") not in (None, call.call_sid):
        raise HTTPException(409, "the callback's CallSid is not this call's")
    return call, params


def _save_unstreamed(state: GatewayState, call: OutboundCall) -> None:
    """The record of an outbound call that never streamed: its final status is its outcome."""
    save = state.services.save_record
    if save is None or call.call_sid is None:
        return
    started = datetime.fromtimestamp(call.created_wall, UTC)
    save(
        CallRecord(
            call_sid=call.call_sid,
            started_at=started,
            ended_at=datetime.fromtimestamp(state.wall_clock(), UTC),
            number=call.profile,
            profile=call.profile,
            caller=mask_number(call.to),
            outcome=call.status,
            end_reason=f"outbound call {call.status}",
            cost_usd=0.0,  # no Realtime session was opened
            actions=[{"kind": "outbound", "id": call.id}],
            direction="outbound",
            answered_by=call.answered_by,
        )
    )


DIRECTIONS = ("inbound", "outbound")


def _direction(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if value not in DIRECTIONS:
        raise HTTPException(422, f"direction must be inbound or outbound, not {value!r}")
    return value


def _sum_totals(rows: list[UsageTotals]) -> dict[str, Any]:
    return {
        "calls": sum(r.calls for r in rows),
        "duration_s": round(sum(r.duration_s for r in rows), 3),
        "usage": sum((r.usage for r in rows), Usage()).as_dict(),
        "cost_usd": round(sum(r.cost_usd for r in rows), 6),
        "unpriced_calls": sum(r.unpriced_calls for r in rows),
    }


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
    admissions = Admissions(
        max_calls=settings.max_calls,
        max_setup_rate=settings.max_setup_rate,
        setup_queue_s=settings.setup_queue_s,
    )
    key = settings.call_token_key()
    if key is not None:
        admissions.secret = key
    return admissions


def _carrier_routes(app: FastAPI, state: GatewayState, carrier: Carrier) -> None:
    """The webhook and media routes of one carrier: the same steps for every carrier, each
    carrier-specific one a method of ``carrier``."""

    @app.post(carrier.voice_path, name=f"{carrier.name}_voice")
    async def incoming_call(request: Request) -> Response:
        try:
            body, form = await _read_form(request, state.settings.max_webhook_bytes)
        except _BadBody as exc:
            state.metrics.webhooks.labels(exc.result).inc()
            log.warning("webhook refused: %s", exc)
            return PlainTextResponse(exc.result.replace("_", " "), status_code=exc.status)
        params = {name: values[-1] for name, values in form.items()}
        origin = _origin(request, state)
        try:
            _authorize_carrier(request, state, origin, carrier, (body, form))
        except Forbidden as exc:
            state.metrics.webhooks.labels("forbidden").inc()
            log.warning("webhook refused: %s", exc)
            return PlainTextResponse("forbidden", status_code=403)
        try:
            call = carrier.incoming_call(params)
        except ValueError as exc:
            state.metrics.webhooks.labels("bad_request").inc()
            return PlainTextResponse(str(exc), status_code=400)
        call_sid, called, caller = call.call_sid, call.called, call.caller
        profile = state.profiles.for_number(called)
        if profile.carrier is not None and profile.carrier != carrier.name:
            state.metrics.webhooks.labels("forbidden").inc()
            log.warning(
                "webhook refused: %s belongs to %s (its profile), not %s",
                mask_number(called),
                profile.carrier,
                carrier.name,
            )
            return PlainTextResponse("forbidden", status_code=403)
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
                return _answer(carrier.fallback(profile.fallback))
        wait = admission.answer_at - state.wall_clock()
        state.metrics.setup_queue_seconds.observe(max(0.0, wait))
        if wait > 0:
            # Setups are paced: this call's turn comes in `wait` s; its answer (and so its
            # stream and upstream session) waits until then, the live calls keep the loop.
            log.info("call %s queued %.0f ms for its setup turn", call_sid, wait * 1000)
            await asyncio.sleep(wait)
        state.metrics.webhooks.labels("admitted").inc()
        log.info(
            "call %s admitted for %s (profile %s) from %s%s",
            call_sid,
            called or "an unnamed number (no 'To' in the webhook)",
            profile.name,
            mask_number(caller),
            "" if carrier.name == "twilio" else f" via {carrier.name}",
        )
        parameters = {CALL_TOKEN_PARAM: admission.token}
        if called:
            parameters[PROFILE_PARAM] = called
        if traceparent:  # the stream's span continues the webhook's trace, on any replica
            parameters[TRACEPARENT_PARAM] = traceparent
        stream_url = _carrier_url(state, origin, carrier.media_path, websocket=True)
        target = StreamTarget(stream_url, parameters, call_sid)
        return _answer(carrier.answer(target, profile.fallback))

    @app.websocket(carrier.media_path, name=f"{carrier.name}_media")
    async def media_stream(ws: WebSocket) -> None:
        query = dict(parse_qsl(ws.url.query, keep_blank_values=True))
        runner = CallRunner(
            ws,
            state,
            codec=carrier.new_codec(state.settings, query),
            carrier_api=carrier.name == "twilio",
        )
        try:
            _authorize_carrier(ws, state, _origin(ws, state), carrier, None)
        except Forbidden as exc:
            await runner.refuse(exc)
            return
        await _run_stream(state, runner)


async def _run_stream(state: GatewayState, runner: CallRunner) -> None:
    """Run one authorized media stream, counted while it is open (a drain waits for none)."""
    state.streams += 1
    state.idle.clear()
    try:
        await runner.run()
    finally:
        state.streams -= 1
        if state.streams == 0:
            state.idle.set()


def _answer(answer: Answer) -> Response:
    return Response(answer.body, media_type=answer.media_type)


FORM_TYPE = "application/x-www-form-urlencoded"


class _BadBody(Exception):
    """A webhook body refused before it is parsed: ``status`` to answer, ``result`` to count."""

    def __init__(self, status: int, result: str, why: str) -> None:
        super().__init__(why)
        self.status, self.result = status, result


async def _read_form(request: Request, limit: int) -> tuple[bytes, dict[str, list[str]]]:
    """The webhook's raw body and form fields, each name with its values in order; raise
    :class:`_BadBody`.

    The body comes before the signature can be checked, so anyone can send one: it is read
    only up to ``limit`` bytes (a declared ``Content-Length`` above it is refused unread) and
    only as the urlencoded form the carriers send, never multipart (files, spooling).
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
    return bytes(body), form


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
    conn: HTTPConnection,
    state: GatewayState,
    origin: proxies.Origin,
    carrier: Carrier,
    webhook: tuple[bytes, dict[str, list[str]]] | None,
) -> None:
    """Raise :class:`Forbidden` unless this carrier request may go on: the webhook (its raw
    body and form) or, with ``webhook=None``, the media-stream upgrade."""
    credential = carrier.credential(state.settings)
    if credential is None:
        _unsigned_allowed(origin.client, state, carrier)
        return
    if state.settings.public_url is None and not is_loopback_host(origin.hostname):
        # Without a public URL the signature would be checked against whatever Host the
        # request names, and the answer would send the stream there.
        raise Forbidden(
            f"Host {origin.host!r} is not accepted: with {carrier.credential_setting} set, set "
            f"GATEWAY_PUBLIC_URL to the URL {carrier.name.capitalize()} calls (only loopback "
            "hosts work without it)"
        )
    websocket = webhook is None
    url = _carrier_url(state, origin, conn.url.path, websocket=websocket, query=conn.url.query)
    headers = {k.lower(): v for k, v in conn.headers.items()}
    if webhook is None:
        carrier.check_upgrade(credential, url, headers)
        return
    body, form = webhook
    method = conn.scope.get("method", "POST")
    signed = SignedRequest(url, method, headers, body, form, state.wall_clock())
    carrier.check_webhook(credential, signed, state.settings)


def _unsigned_allowed(host: str | None, state: GatewayState, carrier: Carrier) -> None:
    setting = carrier.credential_setting
    mode = state.settings.carrier_auth_for(configured=False)
    if mode == "unsigned":
        log.warning("accepting an UNSIGNED carrier request from %s (GATEWAY_ALLOW_UNSIGNED)", host)
        return
    if mode == "refused":
        raise Forbidden(
            f"OPENAI_API_KEY is set and {setting} is not, so unsigned carrier requests "
            "are refused (set it, or GATEWAY_ALLOW_UNSIGNED=true for development)"
        )
    if not is_loopback_host(host):
        raise Forbidden(
            f"no {setting} is configured, so only loopback clients are accepted "
            "(set it, or GATEWAY_ALLOW_UNSIGNED=true for development)"
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
