"""A local stand-in of Twilio's Calls resource, for call control without the internet.

:class:`TwilioApiStandIn` is a FastAPI app (serve it with :meth:`TwilioApiStandIn.serve` or
:func:`gateway.serving.serve_app`) implementing, as Twilio documents them::

    GET  /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json    the Call resource
    POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json    update a live call
         Status=completed   hang up          Status=canceled  no effect on an answered call
         Twiml=<Response>   new TwiML        Url=...&Method=  new TwiML from a URL (recorded;
                                                              the stand-in fetches nothing)

    POST /2010-04-01/Accounts/{AccountSid}/Calls.json                place a call (below)

with HTTP Basic auth (the account SID + auth token, or an API key SID + secret), Twilio's error
bodies ``{"code", "message", "more_info", "status"}`` (20003 bad credentials or another
account's path, 20404 unknown call, 21220 updating a call that is not in progress, 20001 an
invalid parameter value, 21205 an invalid Url) and the Call resource JSON with RFC 2822 dates.

Simulated calls live in a registry: :meth:`~TwilioApiStandIn.register` a call once it streams,
with an ``on_update`` coroutine; a POST that changes the call awaits it with the
:class:`CallUpdate` (that is where the simulated carrier ends the media stream) and then
answers, as Twilio answers once the update took effect. :meth:`~TwilioApiStandIn.unregister`
when the call ends on its own. For tests there is a request log (:attr:`requests`) and fault
knobs: :meth:`~TwilioApiStandIn.fail_next` (answer 429/5xx the next N times, optionally with
``Retry-After``) and :meth:`~TwilioApiStandIn.delay_next` (answer late).

**Placing calls.** A create is validated as Twilio does (E.164 ``To``/``From`` — 21211/21212 —,
``Twiml`` or ``Url``, ``MachineDetection``, ``AsyncAmd`` with its callback, the
``StatusCallbackEvent`` names) and answered ``201`` with the ``queued`` call. Then the stand-in
plays the callee :meth:`~TwilioApiStandIn.callee` scripted for the ``To`` number: it fires the
status callbacks in Twilio's order (initiated, ringing, then ``in-progress`` on answer or a
final ``busy``/``no-answer``/``failed``, and ``completed`` when the stream ends), signed with the
auth token like Twilio's; on answer it dials the ``<Connect><Stream>`` of the TwiML as a
simulated carrier (:class:`~gateway.loadtest.caller.SimulatedCall` running the callee's script)
and, after the scripted delay, POSTs the AMD callback with the scripted ``AnsweredBy`` (or never,
when the callee says the callback is lost). :meth:`~TwilioApiStandIn.placed_call` awaits the
result; :attr:`~TwilioApiStandIn.callbacks` logs every callback and the gateway's answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import re
import secrets
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.serving import RunningServer, serve_app
from gateway.telephony.signature import sign

if TYPE_CHECKING:
    from gateway.loadtest.result import CallResult
    from gateway.loadtest.script import Step

__all__ = [
    "API_VERSION",
    "ApiRequest",
    "CallUpdate",
    "Callback",
    "Callee",
    "TwilioApiStandIn",
    "dial_numbers",
]

log = logging.getLogger("gateway.loadtest.twilio_api")

API_VERSION = "2010-04-01"
MAX_TWIML_CHARS = 4000
_SUBRESOURCES = (
    "user_defined_message_subscriptions",
    "notifications",
    "recordings",
    "streams",
    "payments",
    "user_defined_messages",
    "siprec",
    "events",
    "transcriptions",
)
_LIVE = "in-progress"
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_EVENTS = ("initiated", "ringing", "answered", "completed")


@dataclass(frozen=True, slots=True)
class Callee:
    """Who picks up a call the stand-in places, and what happens.

    ``answer``: ``answer`` (the call connects and streams), or the final status Twilio would
    report instead (``busy``, ``no-answer``, ``failed``). ``answered_by`` is the AMD verdict,
    POSTed ``amd_delay_s`` after the answer (never when ``amd_lost``). ``script`` is what the
    callee does on the stream (a human says hello; a machine plays its greeting and a beep).
    """

    answer: Literal["answer", "busy", "no-answer", "failed"] = "answer"
    answered_by: str = "human"
    amd_delay_s: float = 0.3
    amd_lost: bool = False
    ring_s: float = 0.05
    script: tuple[Step, ...] = ()
    max_duration_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Callback:
    """One callback the stand-in sent (``kind`` ``status`` or ``amd``) and the answer it got."""

    kind: str
    url: str
    form: dict[str, str]
    status_code: int | None


@dataclass(frozen=True, slots=True)
class CallUpdate:
    """What a REST update asked of a live call."""

    call_sid: str
    action: Literal["hangup", "twiml", "url"]
    twiml: str | None = None
    url: str | None = None
    method: str | None = None

    @property
    def dialed(self) -> list[str]:
        """The numbers the new TwiML ``<Dial>``s, in order (empty for a hang-up or a URL)."""
        return dial_numbers(self.twiml) if self.twiml else []


def dial_numbers(twiml: str) -> list[str]:
    """Numbers in ``<Dial>`` verbs: ``<Dial>+1555</Dial>`` and ``<Dial><Number>+1555</Number>``.

    Unparseable TwiML dials nothing (Twilio would fail the call with a document parse error).
    """
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError:
        return []
    numbers: list[str] = []
    for dial in root.iter("Dial"):
        nested = dial.findall("Number")
        if nested:
            numbers.extend((n.text or "").strip() for n in nested)
        elif (dial.text or "").strip():
            numbers.append((dial.text or "").strip())
    return numbers


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """One request the stand-in answered (the test's view of what the client sent)."""

    method: str
    path: str
    account_sid: str
    call_sid: str
    form: dict[str, str]
    auth_ok: bool
    username: str | None
    status_code: int
    error_code: int | None = None


@dataclass
class _Call:
    sid: str
    account_sid: str
    to: str
    from_: str
    direction: str
    status: str
    created: datetime
    updated: datetime
    start: datetime
    end: datetime | None = None
    on_update: Callable[[CallUpdate], Awaitable[None]] | None = None
    updates: list[CallUpdate] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    awaiting_stream: bool = False
    """Placed by the stand-in and answered: its simulated carrier registers it next."""


@dataclass(frozen=True, slots=True)
class _Fault:
    status: int
    retry_after: str | None


class _Reply(Exception):
    """Answer the current request with this Twilio error (raised from validation helpers)."""

    def __init__(
        self, status: int, code: int, message: str, retry_after: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class TwilioApiStandIn:
    """Twilio's Calls resource for one account, backed by registered simulated calls.

    ``api_keys`` maps API key SIDs (``SK...``) to their secrets. ``callback_timeout_s`` bounds
    how long a POST waits for a call's ``on_update`` (a harness bug must not hang a test).
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        api_keys: Mapping[str, str] | None = None,
        callback_timeout_s: float = 10.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not account_sid or not auth_token:
            raise ValueError("the stand-in needs an account SID and an auth token")
        self.account_sid = account_sid
        self._auth_token = auth_token
        self._api_keys = dict(api_keys or {})
        self.callback_timeout_s = callback_timeout_s
        self._now = now
        self._calls: dict[str, _Call] = {}
        self._faults: deque[_Fault] = deque()
        self._delays: deque[float] = deque()
        self.requests: list[ApiRequest] = []
        self.callbacks: list[Callback] = []
        self._callees: dict[str, Callee] = {}
        self._placed: dict[str, asyncio.Task[CallResult | None]] = {}
        self._http: httpx.AsyncClient | None = None
        self.app = self._build_app()

    # --- the registry -------------------------------------------------------------------------

    def register(
        self,
        call_sid: str,
        to: str,
        from_: str,
        on_update: Callable[[CallUpdate], Awaitable[None]],
        *,
        direction: str = "inbound",
    ) -> None:
        """Add an answered (``in-progress``) call; REST updates of it are handed to
        ``on_update``. A SID may be registered again once its earlier call has ended."""
        old = self._calls.get(call_sid)
        if old is not None and old.status == _LIVE and not old.awaiting_stream:
            raise ValueError(f"call {call_sid} is already registered and in progress")
        now = self._now()
        if old is not None and old.awaiting_stream:  # a call the stand-in placed now streams
            old.on_update, old.awaiting_stream, old.status, old.updated = (
                on_update,
                False,
                _LIVE,
                now,
            )
            return
        self._calls[call_sid] = _Call(
            sid=call_sid,
            account_sid=self.account_sid,
            to=to,
            from_=from_,
            direction=direction,
            status=_LIVE,
            created=now,
            updated=now,
            start=now,
            on_update=on_update,
        )

    def unregister(self, call_sid: str, *, completed: bool = True) -> None:
        """The simulated call is gone: stop delivering updates to it. ``completed`` marks the
        call ended (the caller or the gateway hung up); after a redirect pass ``False``: Twilio
        is now running the new TwiML, so the call stays ``in-progress``."""
        call = self._calls.get(call_sid)
        if call is None:
            return
        call.on_update = None
        if completed and call.status == _LIVE:
            self._complete(call)

    def call(self, call_sid: str) -> dict[str, Any]:
        """The Call resource JSON of a registered call (``KeyError`` if unknown)."""
        return self._resource(self._calls[call_sid])

    def updates(self, call_sid: str) -> list[CallUpdate]:
        """Every update applied to the call, in order."""
        return list(self._calls[call_sid].updates)

    def callee(self, number: str, callee: Callee) -> None:
        """Calls placed to ``number`` reach this callee (others: a human who stays silent)."""
        self._callees[number] = callee

    async def placed_call(self, call_sid: str) -> CallResult | None:
        """Wait until the placed call is over; its stream's result (None: it never streamed)."""
        return await asyncio.shield(self._placed[call_sid])

    # --- fault knobs --------------------------------------------------------------------------

    def fail_next(
        self, status: int = 500, times: int = 1, *, retry_after: float | str | None = None
    ) -> None:
        """Answer the next ``times`` requests with ``status`` (429 or 5xx, with Twilio's error
        body) before looking at them; ``retry_after`` adds a ``Retry-After`` header."""
        if not 400 <= status <= 599:
            raise ValueError(f"fault status {status} is not an HTTP error")
        header = None if retry_after is None else str(retry_after)
        self._faults.extend(_Fault(status, header) for _ in range(times))

    def delay_next(self, seconds: float, times: int = 1) -> None:
        """Handle the next ``times`` requests only after ``seconds`` (client timeouts)."""
        self._delays.extend(seconds for _ in range(times))

    # --- serving ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[RunningServer]:
        """Serve the app until the block exits (``port=0``: a free port; base URL ``.url``)."""
        async with contextlib.AsyncExitStack() as stack:
            self._http = await stack.enter_async_context(httpx.AsyncClient(timeout=10.0))
            stack.push_async_callback(self._stop_placed)
            server = await stack.enter_async_context(serve_app(self.app, host=host, port=port))
            yield server

    async def _stop_placed(self) -> None:
        tasks = [t for t in self._placed.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- the app ------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="twilio-api-stand-in", docs_url=None, redoc_url=None, openapi_url=None)
        path = f"/{API_VERSION}/Accounts/{{account_sid}}/Calls/{{call_sid}}.json"

        @app.get(path)
        async def fetch_call(account_sid: str, call_sid: str, request: Request) -> Response:
            return await self._handle(request, account_sid, call_sid, {})

        @app.post(path)
        async def update_call(account_sid: str, call_sid: str, request: Request) -> Response:
            form = {k: str(v) for k, v in (await request.form()).multi_items()}
            return await self._handle(request, account_sid, call_sid, form)

        @app.post(f"/{API_VERSION}/Accounts/{{account_sid}}/Calls.json")
        async def create_call(account_sid: str, request: Request) -> Response:
            items = [(k, str(v)) for k, v in (await request.form()).multi_items()]
            return await self._handle(request, account_sid, "", dict(items), items)

        @app.exception_handler(StarletteHTTPException)
        async def twilio_errors(request: Request, exc: StarletteHTTPException) -> Response:
            if exc.status_code == 405:
                return _error(405, 20004, "Method not allowed")
            if exc.status_code == 404:
                return _error(404, 20404, _not_found(request.url.path))
            return _error(exc.status_code, 20000 + exc.status_code, str(exc.detail))

        return app

    async def _handle(
        self,
        request: Request,
        account_sid: str,
        call_sid: str,
        form: dict[str, str],
        items: list[tuple[str, str]] | None = None,
    ) -> Response:
        username, auth_ok = self._authenticate(request.headers.get("authorization"))
        try:
            response = await self._answer(request, account_sid, call_sid, form, auth_ok, items)
            code = None
        except _Reply as reply:
            response = _error(reply.status, reply.code, reply.message)
            code = reply.code
            if reply.status == 401:
                response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
            if reply.retry_after is not None:
                response.headers["Retry-After"] = reply.retry_after
        self.requests.append(
            ApiRequest(
                method=request.method,
                path=request.url.path,
                account_sid=account_sid,
                call_sid=call_sid,
                form=form,
                auth_ok=auth_ok,
                username=username,
                status_code=response.status_code,
                error_code=code,
            )
        )
        return response

    async def _answer(
        self,
        request: Request,
        account_sid: str,
        call_sid: str,
        form: dict[str, str],
        auth_ok: bool,
        items: list[tuple[str, str]] | None = None,
    ) -> Response:
        if self._delays:
            await asyncio.sleep(self._delays.popleft())
        if self._faults:
            fault = self._faults.popleft()
            raise _Reply(
                fault.status, 20000 + fault.status, _phrase(fault.status), fault.retry_after
            )
        if not auth_ok or account_sid != self.account_sid:
            # Twilio answers another account's path like bad credentials.
            raise _Reply(401, 20003, "Authenticate")
        if items is not None:
            return JSONResponse(self._create(form, items), status_code=201)
        call = self._calls.get(call_sid)
        if call is None:
            raise _Reply(404, 20404, _not_found(request.url.path))
        if request.method == "GET":
            return JSONResponse(self._resource(call))
        return JSONResponse(await self._update(call, form))

    def _authenticate(self, header: str | None) -> tuple[str | None, bool]:
        if not header or not header[:6].lower() == "basic ":
            return None, False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None, False
        username, sep, password = decoded.partition(":")
        if not sep:
            return username, False
        if username == self.account_sid:
            expected = self._auth_token
        elif username in self._api_keys:
            expected = self._api_keys[username]
        else:
            return username, False
        return username, hmac.compare_digest(password.encode(), expected.encode())

    async def _update(self, call: _Call, form: dict[str, str]) -> dict[str, Any]:
        status = form.get("Status")
        twiml = form.get("Twiml")
        url = form.get("Url")
        method = form.get("Method")
        if status is not None and status not in ("completed", "canceled"):
            raise _Reply(400, 20001, f"Status must be one of 'canceled' or 'completed': {status!r}")
        if twiml is not None and url is not None:
            raise _Reply(400, 20001, "Twiml and Url are mutually exclusive")
        if twiml is not None and len(twiml) > MAX_TWIML_CHARS:
            raise _Reply(400, 20001, f"Twiml exceeds {MAX_TWIML_CHARS} characters")
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise _Reply(400, 21205, f"Url is not a valid URL: {url[:200]}")
        if method is not None and method.upper() not in ("GET", "POST"):
            raise _Reply(400, 20001, f"Method must be GET or POST: {method[:20]!r}")
        async with call.lock:  # concurrent updates apply one at a time, as on Twilio
            update: CallUpdate | None = None
            if status == "completed":
                update = CallUpdate(call.sid, "hangup")
            elif twiml is not None:
                update = CallUpdate(call.sid, "twiml", twiml=twiml)
            elif url is not None:
                update = CallUpdate(call.sid, "url", url=url, method=(method or "POST").upper())
            if update is None and status is None:
                return self._resource(call)  # nothing that changes the call (StatusCallback...)
            if call.status != _LIVE:
                raise _Reply(400, 21220, "Call is not in-progress. Cannot redirect.")
            if update is None:
                # Status=canceled only stops queued or ringing calls; an answered one goes on.
                return self._resource(call)
            callback = call.on_update
            if callback is not None:
                try:
                    await asyncio.wait_for(callback(update), self.callback_timeout_s)
                except Exception as exc:
                    log.exception("stand-in: on_update of call %s failed", call.sid)
                    raise _Reply(
                        500, 20500, f"simulated call did not take the update: {exc!r}"
                    ) from None
            call.updates.append(update)
            call.updated = self._now()
            if update.action == "hangup" and call.status == _LIVE:
                self._complete(call)
            return self._resource(call)

    # --- placing calls ------------------------------------------------------------------------

    def _create(self, form: dict[str, str], items: list[tuple[str, str]]) -> dict[str, Any]:
        to, from_ = form.get("To", ""), form.get("From", "")
        if not _E164.match(to):
            raise _Reply(400, 21211, f"Invalid 'To' Phone Number: {to[:40]}")
        if not _E164.match(from_):
            raise _Reply(400, 21212, f"Invalid 'From' Phone Number: {from_[:40]}")
        twiml, url = form.get("Twiml"), form.get("Url")
        if (twiml is None) == (url is None):
            raise _Reply(400, 21205, "Exactly one of Twiml and Url is required")
        if twiml is not None and len(twiml) > MAX_TWIML_CHARS:
            raise _Reply(400, 20001, f"Twiml exceeds {MAX_TWIML_CHARS} characters")
        detection = form.get("MachineDetection")
        if detection is not None and detection not in ("Enable", "DetectMessageEnd"):
            raise _Reply(400, 20001, "MachineDetection must be Enable or DetectMessageEnd")
        if form.get("AsyncAmd", "false") not in ("true", "false"):
            raise _Reply(400, 20001, "AsyncAmd must be true or false")
        for name in ("StatusCallback", "AsyncAmdStatusCallback"):
            value = form.get(name)
            parts = urlsplit(value or "")
            if value is not None and (parts.scheme not in ("http", "https") or not parts.netloc):
                raise _Reply(400, 21205, f"{name} is not a valid URL: {value[:200]}")
        events = [v for k, v in items if k == "StatusCallbackEvent"]
        for event in events:
            if event not in _EVENTS:
                raise _Reply(
                    400, 20001, f"StatusCallbackEvent {event[:40]!r} is not one of {_EVENTS}"
                )
        now = self._now()
        sid = "CA" + secrets.token_hex(16)
        call = _Call(
            sid=sid,
            account_sid=self.account_sid,
            to=to,
            from_=from_,
            direction="outbound-api",
            status="queued",
            created=now,
            updated=now,
            start=now,
            awaiting_stream=True,
        )
        self._calls[sid] = call
        callee = self._callees.get(to, Callee())
        self._placed[sid] = asyncio.create_task(
            self._play_callee(call, callee, form, events or ["completed"]), name=f"callee:{sid}"
        )
        return self._resource(call)

    async def _play_callee(
        self, call: _Call, callee: Callee, form: dict[str, str], events: list[str]
    ) -> CallResult | None:
        """Twilio's side of a placed call, in its order of callbacks."""
        from gateway.loadtest.caller import CallOptions, SimulatedCall

        sequence = 0

        async def status(status: str, event: str, **extra: str) -> None:
            nonlocal sequence
            call.status, call.updated = status, self._now()
            url = form.get("StatusCallback")
            if url is None or event not in events:
                return
            fields = {
                "AccountSid": call.account_sid,
                "ApiVersion": API_VERSION,
                "CallSid": call.sid,
                "CallStatus": status,
                "Called": call.to,
                "Caller": call.from_,
                "CallbackSource": "call-progress-events",
                "Direction": "outbound-api",
                "From": call.from_,
                "SequenceNumber": str(sequence),
                "Timestamp": _rfc2822(self._now()) or "",
                "To": call.to,
                **extra,
            }
            sequence += 1
            await self._callback("status", url, fields)

        await status("queued", "initiated")
        await asyncio.sleep(callee.ring_s)
        await status("ringing", "ringing")
        await asyncio.sleep(callee.ring_s)
        if callee.answer != "answer":
            call.end = self._now()
            await status(callee.answer, "completed", CallDuration="0", Duration="0")
            return None
        call.start = self._now()
        await status(_LIVE, "answered")
        target = stream_target(form.get("Twiml") or "")
        if target is None:
            call.end = self._now()
            await status("failed", "completed", CallDuration="0")
            return None
        options = CallOptions(
            media_url=target[0],
            custom_parameters=target[1],
            call_sid=call.sid,
            to_number=call.to,
            from_number=call.from_,
            twilio_api=self,
            auth_token=self._auth_token,
            max_duration_s=callee.max_duration_s,
        )
        stream = asyncio.create_task(SimulatedCall(list(callee.script), options).run())
        amd_url = form.get("AsyncAmdStatusCallback")
        if form.get("MachineDetection") and amd_url and not callee.amd_lost:
            done, _ = await asyncio.wait({stream}, timeout=callee.amd_delay_s)
            if not done:
                await self._callback(
                    "amd",
                    amd_url,
                    {
                        "AccountSid": call.account_sid,
                        "AnsweredBy": callee.answered_by,
                        "CallSid": call.sid,
                        "MachineDetectionDuration": str(round(callee.amd_delay_s * 1000)),
                    },
                )
        result = await stream
        if call.status == _LIVE:
            self._complete(call)
        seconds = str(int(((call.end or self._now()) - call.start).total_seconds()))
        await status("completed", "completed", CallDuration=seconds, Duration=seconds)
        return result

    async def _callback(self, kind: str, url: str, fields: dict[str, str]) -> None:
        """POST a signed callback as Twilio does; its answer is logged, never raised."""
        http = self._http
        assert http is not None, "serve() the stand-in to place calls"
        code: int | None = None
        try:
            response = await http.post(
                url,
                data=fields,
                headers={"X-Twilio-Signature": sign(self._auth_token, url, fields)},
            )
            code = response.status_code
        except httpx.HTTPError as exc:
            log.warning("stand-in: %s callback to %s failed: %r", kind, url, exc)
        self.callbacks.append(Callback(kind, url, fields, code))

    def _complete(self, call: _Call) -> None:
        call.status = "completed"
        call.end = call.updated = self._now()

    def _resource(self, call: _Call) -> dict[str, Any]:
        uri = f"/{API_VERSION}/Accounts/{call.account_sid}/Calls/{call.sid}.json"
        base = uri.removesuffix(".json")
        duration = None
        if call.end is not None:
            duration = str(int((call.end - call.start).total_seconds()))
        return {
            "account_sid": call.account_sid,
            "annotation": None,
            "answered_by": None,
            "api_version": API_VERSION,
            "caller_name": None,
            "date_created": _rfc2822(call.created),
            "date_updated": _rfc2822(call.updated),
            "direction": call.direction,
            "duration": duration,
            "end_time": _rfc2822(call.end),
            "forwarded_from": None,
            "from": call.from_,
            "from_formatted": _formatted(call.from_),
            "group_sid": None,
            "parent_call_sid": None,
            "phone_number_sid": None,
            "price": None,
            "price_unit": "USD",
            "queue_time": "0",
            "sid": call.sid,
            "start_time": _rfc2822(call.start),
            "status": call.status,
            "subresource_uris": {name: f"{base}/{_camel(name)}.json" for name in _SUBRESOURCES},
            "to": call.to,
            "to_formatted": _formatted(call.to),
            "trunk_sid": None,
            "uri": uri,
        }


def stream_target(twiml: str) -> tuple[str, dict[str, str]] | None:
    """The ``<Connect><Stream>`` URL and ``<Parameter>`` pairs of a TwiML document, or None."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError:
        return None
    stream = root.find("./Connect/Stream")
    if stream is None or not stream.get("url"):
        return None
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return stream.get("url", ""), params


def _rfc2822(when: datetime | None) -> str | None:
    """Twilio's date format: ``Tue, 31 Aug 2010 20:36:28 +0000``."""
    if when is None:
        return None
    return format_datetime(when.astimezone(UTC).replace(microsecond=0))


def _formatted(number: str) -> str:
    """North American numbers as Twilio displays them: ``(555) 010-0002``; others unchanged."""
    if len(number) == 12 and number.startswith("+1") and number[1:].isdigit():
        return f"({number[2:5]}) {number[5:8]}-{number[8:]}"
    return number


def _camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))


def _not_found(path: str) -> str:
    return f"The requested resource {path} was not found"


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status_code=status,
    )
