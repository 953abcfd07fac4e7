"""The console's HTTP/websocket surface, mounted under ``/console`` by :func:`install`.

Pages and static files are served without a build step from ``gateway/console/static``. Every
route answers 404 while ``GATEWAY_ADMIN_TOKEN`` is unset, exactly like ``/admin/*``. With it:

- ``GET  /console``                     the console, or the login form without a session
- ``POST /console/login``               form field ``token``: the admin token; sets the cookie
- ``POST /console/logout``              ends the session (CSRF header)
- ``GET  /console/api/session``         the session's CSRF token and the profiles to call
- ``GET  /console/api/calls``           live calls and the last finished ones (a snapshot)
- ``GET  /console/api/events``          Server-Sent Events: ``call`` (a call's view, whenever it
  changed), ``line`` (a transcript line), ``ended`` (a call finished)
- ``POST /console/api/calls/{sid}/hangup``  end a live call (CSRF header)
- ``POST /console/api/phone``           admit a browser-phone call; answers the ``<Stream>``
  parameters a carrier would read from the TwiML (CSRF header)
- ``GET  /console/api/health``          live calls vs capacity, added-latency p99, loop lag,
  upstream errors
- ``GET  /console/api/profiles``        every number's effective settings; the file's error
- ``GET  /console/api/records/{sid}/recording``  the call's stereo WAV, when recorded
- ``WS   /console/phone/media``         the browser phone's media stream (Twilio's messages),
  refused without the session cookie or from another origin; the call token in ``start`` binds
  it to the admitted call like any carrier stream

State-changing requests need the session cookie (``SameSite=Strict``), the session's token in
``X-CSRF-Token`` and, when the browser sends one, an ``Origin`` equal to the console's own.
The same session opens the ``/admin`` API (records, usage, reload), which the pages use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.requests import HTTPConnection
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.responses import HTMLResponse, StreamingResponse

from gateway import proxies
from gateway.bridge.call import CALL_TOKEN_PARAM, PROFILE_PARAM, CallRunner
from gateway.console import health
from gateway.console.bus import CallBus
from gateway.console.sessions import LoginThrottle, Session, Sessions, csrf_ok
from gateway.errors import CapacityError, ConfigError, Forbidden
from gateway.numbers import load_profiles
from gateway.records.store import RecordStoreError

if TYPE_CHECKING:
    from gateway.app import GatewayState

log = logging.getLogger("gateway.console")

COOKIE = "gateway_console"
CSRF_HEADER = "x-csrf-token"
PREFIX = "/console"
PHONE_MEDIA_PATH = f"{PREFIX}/phone/media"
PHONE_ACCOUNT_SID = "AC" + "0" * 32
"""The ``accountSid`` the browser phone reports (it has no carrier account)."""
STATIC_DIR = Path(__file__).parent / "static"
HEARTBEAT_S = 10.0
"""An SSE comment this often keeps proxies from closing an idle push stream, and lets the
stream notice a drain."""
MIN_PUSH_INTERVAL_S = 0.2
"""At most this many updates a second per call and stream: a call changes every 20 ms."""

_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

StreamServer = Callable[[WebSocket], Awaitable[None]]


class Console:
    """The console's process-wide state: its sessions and the live-call bus."""

    def __init__(self, sessions: Sessions | None = None, bus: CallBus | None = None) -> None:
        self.sessions = sessions or Sessions()
        self.bus = bus or CallBus()
        self.throttle = LoginThrottle()
        self.static = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()}
        # Read once: the pages are small and the routes must not block the loop on a disk.
        self.pages = {
            n: p.read_text(encoding="utf-8") for n, p in self.static.items() if n.endswith(".html")
        }

    def session_of(self, conn: HTTPConnection, now: float) -> Session | None:
        return self.sessions.get(conn.cookies.get(COOKIE), now)

    def authorize(self, request: Request, state: GatewayState) -> Session:
        """The request's session; a state change (anything but GET/HEAD) must also carry the
        session's CSRF token and, when the browser sends one, our own ``Origin``. Raises the
        HTTP error to answer (the caller has checked the console is on)."""
        session = self.session_of(request, state.wall_clock())
        if session is None:
            raise HTTPException(401, "log in to the console first")
        if request.method not in ("GET", "HEAD"):
            if not _same_origin(request, state):
                raise HTTPException(403, "cross-origin request refused")
            if not csrf_ok(session, request.headers.get(CSRF_HEADER)):
                raise HTTPException(403, "missing or wrong X-CSRF-Token")
        return session


def install(app: FastAPI, state: GatewayState, console: Console, serve: StreamServer) -> None:
    """Add the console's routes to ``app``. ``serve`` runs an authorized media stream the way
    the carrier route does (capacity and drain bookkeeping included)."""

    def enabled() -> None:
        if state.settings.admin_token is None:
            raise HTTPException(404, "admin endpoints are off (set GATEWAY_ADMIN_TOKEN)")

    def session_of(conn: HTTPConnection) -> Session | None:
        return console.session_of(conn, state.wall_clock())

    def require_session(request: Request) -> Session:
        enabled()
        return console.authorize(request, state)

    require_change = require_session  # POSTs: authorize() checks CSRF and Origin too

    @app.get(PREFIX)
    async def console_page(request: Request) -> Response:
        enabled()
        page = "app.html" if session_of(request) is not None else "login.html"
        return _page(console.pages[page])

    @app.get(PREFIX + "/")
    async def console_slash() -> Response:
        enabled()
        return RedirectResponse(PREFIX, status_code=303)

    @app.get(PREFIX + "/static/{name}")
    async def console_static(name: str) -> Response:
        enabled()
        path = console.static.get(name)
        if path is None or name.endswith(".html"):
            raise HTTPException(404, "no such console file")
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    @app.post(PREFIX + "/login")
    async def console_login(request: Request) -> Response:
        enabled()
        token = state.settings.admin_token
        assert token is not None
        if not _same_origin(request, state):
            raise HTTPException(403, "cross-origin request refused")
        wait = console.throttle.retry_after(state.wall_clock())
        if wait is not None:
            raise HTTPException(
                429,
                "too many wrong tokens; try again shortly",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        form = await request.form()
        given = form.get("token")
        given_text = given if isinstance(given, str) else ""
        if not secrets.compare_digest(given_text.encode(), token.get_secret_value().encode()):
            console.throttle.failed(state.wall_clock())
            log.warning(
                "console login refused: wrong token from %s", _origin(request, state).client
            )
            page = console.pages["login.html"]
            page = page.replace("<!--error-->", "<p class=error role=alert>Wrong token.</p>")
            return _page(page, status_code=401)
        session = console.sessions.login(state.wall_clock())
        resp = RedirectResponse(PREFIX, status_code=303)
        resp.set_cookie(
            COOKIE,
            session.session_id,
            max_age=int(console.sessions.ttl_s),
            path="/",
            httponly=True,
            samesite="strict",
            secure=_origin(request, state).scheme == "https",
        )
        return resp

    @app.post(PREFIX + "/logout")
    async def console_logout(request: Request) -> Response:
        session = require_change(request)
        console.sessions.logout(session.session_id)
        resp = Response(status_code=204)
        resp.delete_cookie(
            COOKIE,
            path="/",
            httponly=True,
            samesite="strict",
            secure=_origin(request, state).scheme == "https",
        )
        return resp

    @app.get(PREFIX + "/api/session")
    async def console_session(request: Request) -> Response:
        session = require_session(request)
        profiles = state.profiles.current
        numbers = [{"number": n, "profile": p.name} for n, p in sorted(profiles.numbers.items())]
        return _json({"csrf_token": session.csrf_token, "numbers": numbers})

    @app.get(PREFIX + "/api/calls")
    async def console_calls(request: Request) -> Response:
        require_session(request)
        return _json(
            {
                "calls": [call_view(r) for r in state.calls.values()],
                "recent": list(state.recent),
            }
        )

    def call_view(runner: CallRunner) -> dict[str, Any]:
        view = runner.summary()
        view["turn_latency_ms"] = [round(ms, 1) for ms in runner.core.stats.answer_ms]
        view["called"] = runner.core.called
        return view

    @app.get(PREFIX + "/api/events")
    async def console_events(request: Request) -> Response:
        require_session(request)
        return StreamingResponse(
            _events(state, console.bus, call_view),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.post(PREFIX + "/api/calls/{call_sid}/hangup")
    async def console_hang_up(request: Request, call_sid: str) -> Response:
        require_change(request)
        runner = state.calls.get(call_sid)
        if runner is None:
            raise HTTPException(404, f"no live call {call_sid}")
        await runner.hang_up("hung up by the operator (console)")
        return _json({"hung_up": call_sid}, status_code=202)

    @app.post(PREFIX + "/api/phone")
    async def console_phone(request: Request) -> Response:
        require_change(request)
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(422, "expected a JSON body") from None
        number = body.get("number") if isinstance(body, dict) else None
        if number is not None and not isinstance(number, str):
            raise HTTPException(422, "number must be a string")
        if number and number not in state.profiles.current.numbers:
            raise HTTPException(422, f"{number} has no profile")
        call_sid = "CA" + secrets.token_hex(16)
        try:
            admission = state.admissions.admit(
                call_sid, number or None, "browser", state.wall_clock()
            )
        except CapacityError as exc:
            raise HTTPException(503, str(exc)) from None
        except Forbidden as exc:  # a fresh random SID cannot be a replay; still, say so
            raise HTTPException(409, str(exc)) from None
        state.metrics.webhooks.labels("admitted").inc()
        origin = _origin(request, state)
        scheme = "wss" if origin.scheme == "https" else "ws"
        parameters = {CALL_TOKEN_PARAM: admission.token}
        if number:
            parameters[PROFILE_PARAM] = number
        return _json(
            {
                "call_sid": call_sid,
                "account_sid": PHONE_ACCOUNT_SID,
                "stream_url": f"{scheme}://{origin.host}{PHONE_MEDIA_PATH}",
                "parameters": parameters,
            }
        )

    @app.get(PREFIX + "/api/health")
    async def console_health(request: Request) -> Response:
        require_session(request)
        now = state.wall_clock()
        loop = asyncio.get_running_loop()
        asked = loop.time()
        await asyncio.sleep(0)  # how long a ready task waits for its turn on the loop now
        lag_ms = (loop.time() - asked) * 1000
        registry = state.metrics.registry
        return _json(
            {
                "live_calls": state.admissions.live,
                "load": state.admissions.load(now),
                "capacity": state.settings.max_calls,
                "draining": state.admissions.draining,
                "added_latency_p99_ms": health.added_latency_p99_ms(registry),
                "event_loop_lag_ms": round(lag_ms, 3),
                "upstream_errors": health.upstream_errors(registry),
            }
        )

    @app.get(PREFIX + "/api/profiles")
    async def console_profiles(request: Request) -> Response:
        require_session(request)
        store = state.profiles
        current = store.current
        problem = None
        if store.path is not None:
            try:
                await asyncio.to_thread(load_profiles, store.path)
            except ConfigError as exc:
                problem = str(exc)
        return _json(
            {
                "file": None if store.path is None else str(store.path),
                "file_error": problem,
                "default": health.profile_view(current.default),
                "numbers": {n: health.profile_view(p) for n, p in sorted(current.numbers.items())},
            }
        )

    @app.get(PREFIX + "/api/records/{call_sid}/recording")
    async def console_recording(request: Request, call_sid: str) -> Response:
        require_session(request)
        if state.records is None:
            raise HTTPException(404, "call records are off (GATEWAY_RECORDS_URL=off)")
        try:
            found = await state.records.get(call_sid)
        except RecordStoreError as exc:
            raise HTTPException(503, str(exc)) from None
        if found is None or not found.recording_path:
            raise HTTPException(404, f"no recording for {call_sid}")
        path = await asyncio.to_thread(
            _recording_file, found.recording_path, state.settings.recordings_dir
        )
        if path is None:
            raise HTTPException(404, f"the recording of {call_sid} is not in the recordings folder")
        return FileResponse(path, media_type="audio/wav", headers={"Cache-Control": "no-store"})

    @app.websocket(PHONE_MEDIA_PATH)
    async def console_phone_media(ws: WebSocket) -> None:
        if (
            state.settings.admin_token is None
            or session_of(ws) is None
            or not _same_origin(ws, state, required=True)
        ):
            await ws.close(code=1008)  # before accept: the upgrade is answered 403
            return
        await serve(ws)


async def _events(
    state: GatewayState, bus: CallBus, view: Callable[[CallRunner], dict[str, Any]]
) -> AsyncIterator[str]:
    """The push stream: every live call and its transcript first, then what changes."""
    sent_lines: dict[str, int] = {}
    last: dict[str, str] = {}
    with bus.watch() as watcher:
        yield "retry: 2000\n\n"
        dirty = set(state.calls)
        while True:
            for sid in sorted(dirty):
                runner = state.calls.get(sid)
                if runner is not None:
                    summary = view(runner)
                    lines = summary.pop("transcript")
                    for line in lines[sent_lines.get(sid, 0) :]:
                        yield _sse("line", {"call_sid": sid, **line})
                    sent_lines[sid] = len(lines)
                    key = json.dumps({k: v for k, v in summary.items() if k not in _VOLATILE})
                    if last.get(sid) != key:
                        last[sid] = key
                        yield _sse("call", summary)
                elif sid in last:
                    ended = next((s for s in state.recent if s.get("call_sid") == sid), None)
                    yield _sse("ended", ended or {"call_sid": sid})
                    last.pop(sid)
                    sent_lines.pop(sid, None)
            if state.admissions.draining or not state.ready:
                return
            await asyncio.sleep(MIN_PUSH_INTERVAL_S)
            dirty = await watcher.wait(HEARTBEAT_S)
            if not dirty:
                yield ": ping\n\n"


# Change every frame; the page counts duration itself.
_VOLATILE = frozenset({"age_s", "frames_in", "frames_out"})


def _recording_file(recorded: str, recordings_dir: Path) -> Path | None:
    """The recording's file when it lies inside the recordings folder (a record from another
    deployment, or a tampered database, cannot make the console serve any other file)."""
    path = Path(recorded).resolve()
    if not path.is_relative_to(recordings_dir.resolve()) or not path.is_file():
        return None
    return path


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _page(html: str, status_code: int = 200) -> Response:
    return HTMLResponse(html, status_code=status_code, headers=_SECURITY_HEADERS)


def _json(body: dict[str, Any], status_code: int = 200) -> Response:
    return JSONResponse(body, status_code=status_code, headers={"Cache-Control": "no-store"})


def _origin(conn: HTTPConnection, state: GatewayState) -> proxies.Origin:
    return proxies.resolve(
        peer=conn.client.host if conn.client else None,
        scheme=conn.url.scheme,
        host=conn.headers.get("host") or conn.url.netloc,
        headers=conn.headers.items(),
        trusted=state.trusted_proxies,
    )


def _same_origin(conn: HTTPConnection, state: GatewayState, *, required: bool = False) -> bool:
    """Whether the request's ``Origin`` header names this console (absent: ``not required``;
    browsers always send it on websockets and cross-origin POSTs)."""
    sent = conn.headers.get("origin")
    if sent is None:
        return not required
    origin = _origin(conn, state)
    scheme = {"ws": "http", "wss": "https"}.get(origin.scheme, origin.scheme)
    return sent.rstrip("/").lower() == f"{scheme}://{origin.host}".lower()
