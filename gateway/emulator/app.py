"""The Realtime emulator's HTTP side: GA endpoints, runtime fault knobs and observability.

``create_app(EmulatorConfig(...))`` returns a FastAPI app serving:

``POST /v1/realtime/client_secrets``
    server key -> ``{value: "ek_...", expires_at, session}``; the ephemeral key creates calls
    until it expires and carries the session it was minted with.
``POST /v1/realtime/calls``
    ``application/sdp`` (any valid key, usually ``ek_``) or ``multipart/form-data`` with ``sdp``
    and ``session`` parts -> ``201``, the SDP answer, ``Location: /v1/realtime/calls/rtc_...``.
    Answers CORS (preflight included) for any origin, so a browser page can call it
    (:mod:`gateway.emulator.cors`).
    Errors are ``{"error": {...}}`` JSON: 401 bad key, 400 bad SDP or session, and whatever
    status a fault injects.
``POST /v1/realtime/calls/{call_id}/hangup``
    ends the call.
``GET /emulator/sessions``
    live and recently ended calls with their effective session config and counters.
``POST /emulator/faults`` / ``GET /emulator/faults``
    replace / read the fault knobs applied to calls created from then on.
``GET /emulator/stats``
    outbound pacing of the live calls (the capacity benchmark reads it).

Each call is an :class:`~gateway.emulator.peer.EmulatorCall` (aiortc answerer) around an
:class:`~gateway.emulator.engine.Engine` (the protocol, sans-I/O).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, replace
from typing import Any, Final

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError

from gateway.emulator.config import REAL_MAX_SESSION_S, EmulatorConfig, EngineConfig, Faults
from gateway.emulator.cors import CallsCors
from gateway.emulator.event_log import EventLog
from gateway.emulator.peer import EmulatorCall, PacketCache
from gateway.emulator.schema import (
    SessionError,
    apply_session,
    check_media_format,
    default_session,
)
from gateway.emulator.voice import VoiceRenderer

__all__ = ["EmulatorState", "create_app"]

log = logging.getLogger("gateway.emulator")

_KEEP_ENDED: Final = 200
_FAULTS_BODY: Final = TypeAdapter(Faults)
_ID_CHARS: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_REFUSALS: Final[dict[int, tuple[str, str, str]]] = {
    400: ("invalid_request_error", "invalid_request", "Fault injection: the request is refused."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    403: (
        "invalid_request_error",
        "model_not_found",
        "Project does not have access to model gpt-realtime.",
    ),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again in 1s.",
    ),
    500: (
        "server_error",
        "server_error",
        "The server had an error while processing your request. Sorry about that!",
    ),
    503: ("server_error", "service_unavailable", "The engine is currently overloaded."),
}


@dataclass(slots=True)
class _ClientSecret:
    value: str
    expires_at: float  # unix seconds
    session: dict[str, Any]


class EmulatorState:
    """What one emulator process holds: config, fault knobs, keys, calls."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.faults = config.faults
        self.refused = 0
        self.renderer = VoiceRenderer()
        self.packets = PacketCache()
        self.event_log = EventLog(config.event_log) if config.event_log else None
        self.secrets: dict[str, _ClientSecret] = {}
        self.calls: dict[str, EmulatorCall] = {}
        self.ended: deque[EmulatorCall] = deque(maxlen=_KEEP_ENDED)
        self._blackhole: socket.socket | None = None

    def blackhole(self) -> tuple[str, int]:
        """A loopback UDP port that is bound but never read: ICE checks sent there vanish."""
        if self._blackhole is None:
            self._blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._blackhole.bind(("127.0.0.1", 0))
        host, port = self._blackhole.getsockname()
        return str(host), int(port)

    def engine_config(self) -> EngineConfig:
        """The configured engine, with the session limit of the faults if they set one."""
        engine = self.config.engine
        return replace(engine, max_session_s=self.faults.max_session_s or engine.max_session_s)

    def call_ended(self, call: EmulatorCall) -> None:
        if self.calls.pop(call.call_id, None) is not None:
            self.ended.append(call)

    async def aclose(self) -> None:
        await asyncio.gather(
            *(c.close("emulator shutting down") for c in list(self.calls.values()))
        )
        if self.event_log is not None:
            self.event_log.close()
        if self._blackhole is not None:
            self._blackhole.close()


def _error(
    status: int,
    message: str,
    *,
    etype: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": etype, "code": code, "param": param}}
    return JSONResponse(body, status_code=status)


def _new_id(prefix: str, n: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ID_CHARS) for _ in range(n))


def create_app(config: EmulatorConfig) -> FastAPI:
    """The emulator as an ASGI app; serve it with :func:`gateway.serving.serve_app`."""
    state = EmulatorState(config)
    if config.api_key is None:
        log.warning(
            "Realtime emulator: no API key configured (--api-key / OPENAI_API_KEY); "
            "any non-empty bearer is accepted"
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await state.aclose()

    app = FastAPI(title="OpenAI Realtime emulator", lifespan=lifespan)
    app.state.emulator = state
    app.add_middleware(CallsCors)  # a web page may post its offer, as to the real service

    def bearer(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        return token if scheme.lower() == "bearer" and token else None

    def check_server_key(token: str | None) -> JSONResponse | None:
        if token is None:
            return _error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="missing_api_key",
            )
        if token.startswith("ek_") or (config.api_key is not None and token != config.api_key):
            shown = token[:3] + "*" * 4 + token[-4:] if len(token) > 8 else "****"
            return _error(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        return None

    @app.post("/v1/realtime/client_secrets")
    async def client_secrets(request: Request) -> Response:
        refused = check_server_key(bearer(request))
        if refused is not None:
            return refused
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return _error(
                400, "We could not parse the JSON body of your request.", code="invalid_json"
            )
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.", code="invalid_json")
        for key in body:
            if key not in ("expires_after", "session"):
                return _error(
                    400, f"Unknown parameter: '{key}'.", code="unknown_parameter", param=key
                )
        seconds = 600
        expires_after = body.get("expires_after")
        if expires_after is not None:
            if (
                not isinstance(expires_after, dict)
                or expires_after.get("anchor", "created_at") != "created_at"
            ):
                return _error(
                    400,
                    "Invalid value for 'expires_after.anchor': only 'created_at' is supported.",
                    code="invalid_value",
                    param="expires_after.anchor",
                )
            seconds = expires_after.get("seconds", 600)
            if (
                not isinstance(seconds, int)
                or isinstance(seconds, bool)
                or not 10 <= seconds <= 7200
            ):
                return _error(
                    400,
                    "Invalid 'expires_after.seconds': expected an integer between 10 and 7200.",
                    code="invalid_value",
                    param="expires_after.seconds",
                )
        now = time.time()
        base = default_session(_new_id("sess_"), int(now + REAL_MAX_SESSION_S))
        try:
            session = apply_session(base, body.get("session", {"type": "realtime"}), creating=True)
        except SessionError as exc:
            return JSONResponse({"error": exc.error}, status_code=400)
        secret = _ClientSecret(_new_id("ek_", 32), now + seconds, session)
        state.secrets[secret.value] = secret
        # forget expired keys so the table cannot grow without bound
        for value in [v for v, s in state.secrets.items() if s.expires_at < now]:
            del state.secrets[value]
        return JSONResponse(
            {"value": secret.value, "expires_at": int(secret.expires_at), "session": session}
        )

    @app.post("/v1/realtime/calls")
    async def create_call(request: Request) -> Response:
        faults = state.faults
        if faults.refuse_status is not None and (
            faults.refuse_count is None or state.refused < faults.refuse_count
        ):
            state.refused += 1
            etype, code, message = _REFUSALS[faults.refuse_status]
            return _error(faults.refuse_status, message, etype=etype, code=code)
        token = bearer(request)
        base: dict[str, Any] | None = None
        if token is not None and token.startswith("ek_"):
            secret = state.secrets.get(token)
            if secret is None or secret.expires_at < time.time():
                return _error(
                    401,
                    "The ephemeral key is invalid or has expired.",
                    code="invalid_api_key",
                )
            base = secret.session
        else:
            refused = check_server_key(token)
            if refused is not None:
                return refused
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        session_body: Any = None
        if content_type == "application/sdp":
            offer = (await request.body()).decode("utf-8", "replace")
        elif content_type == "multipart/form-data":
            form = await request.form()
            sdp_part, session_part = form.get("sdp"), form.get("session")
            offer = await _text(sdp_part)
            if session_part is not None:
                try:
                    session_body = json.loads(await _text(session_part))
                except ValueError:
                    return _error(
                        400,
                        "The 'session' part is not valid JSON.",
                        code="invalid_json",
                        param="session",
                    )
        elif content_type == "application/json":
            try:
                body = json.loads(await request.body())
            except ValueError:
                return _error(
                    400, "We could not parse the JSON body of your request.", code="invalid_json"
                )
            offer = str(body.get("sdp") or "") if isinstance(body, dict) else ""
            session_body = body.get("session") if isinstance(body, dict) else None
        else:
            return _error(
                400,
                f"Unsupported Content-Type {content_type!r}: send application/sdp or "
                "multipart/form-data with 'sdp' and 'session' parts.",
                code="unsupported_content_type",
            )
        if not offer.lstrip().startswith("v=0") or "m=audio" not in offer:
            return _error(
                400,
                "Invalid SDP offer: expected an SDP with an audio section.",
                code="invalid_offer",
                param="sdp",
            )
        now = time.time()
        session = base or default_session(_new_id("sess_"), int(now + REAL_MAX_SESSION_S))
        session = {**session, "id": _new_id("sess_"), "expires_at": int(now + REAL_MAX_SESSION_S)}
        if session_body is not None:
            try:
                session = apply_session(session, session_body, creating=True)
            except SessionError as exc:
                return JSONResponse({"error": exc.error}, status_code=400)
        call_id = _new_id("rtc_", 32)
        call = EmulatorCall(
            call_id,
            session,
            config=state.engine_config(),
            faults=faults,
            renderer=state.renderer,
            packet_cache=state.packets,
            event_log=state.event_log,
            record_lateness=config.record_lateness,
            on_closed=state.call_ended,
        )
        state.calls[call_id] = call
        try:
            held = faults.ice_fail or faults.ice_delay_s is not None
            answer = await call.answer(offer, blackhole=state.blackhole() if held else None)
        except Exception as exc:  # aiortc raises assorted errors for offers it cannot use
            await call.close(f"bad offer: {exc}")
            return _error(400, f"Invalid SDP offer: {exc}", code="invalid_offer", param="sdp")
        try:
            check_media_format(session, call.codec)
        except SessionError as exc:
            await call.close(f"session format refused: {exc}")
            return JSONResponse({"error": exc.error}, status_code=400)
        return Response(
            answer,
            status_code=201,
            media_type="application/sdp",
            headers={"Location": f"/v1/realtime/calls/{call_id}"},
        )

    @app.post("/v1/realtime/calls/{call_id}/hangup")
    async def hangup(call_id: str, request: Request) -> Response:
        token = bearer(request)
        if token is None or not (token.startswith("ek_") and token in state.secrets):
            refused = check_server_key(token)
            if refused is not None:
                return refused
        call = state.calls.get(call_id)
        if call is None:
            return _error(404, f"Call '{call_id}' not found.", code="not_found", param="call_id")
        await call.close("hung up via the API")
        return Response(status_code=200)

    @app.get("/emulator/sessions")
    async def sessions() -> list[dict[str, Any]]:
        calls = list(state.ended) + list(state.calls.values())
        return [c.summary() for c in sorted(calls, key=lambda c: c.created_at)]

    @app.get("/emulator/stats")
    async def stats(reset: bool = False) -> dict[str, Any]:
        """Pacing of the outbound tracks of live calls (lateness needs ``record_lateness``);
        ``reset=true`` starts a new measurement window."""
        lateness: list[float] = []
        frames = audio_frames = resyncs = received = 0
        for c in state.calls.values():
            received += c.frames_received
            st = c.track.stats
            frames += st.frames
            audio_frames += st.audio_frames
            resyncs += st.resyncs
            if st.lateness_ms is not None:
                lateness.extend(st.lateness_ms)
                if reset:
                    st.lateness_ms.clear()
        lateness.sort()

        def pct(q: float) -> float | None:
            return lateness[min(len(lateness) - 1, int(q * len(lateness)))] if lateness else None

        return {
            "calls": len(state.calls),
            "frames_received": received,
            "frames_sent": frames,
            "audio_frames_sent": audio_frames,
            "resyncs": resyncs,
            "lateness_samples": len(lateness),
            "lateness_ms_p50": pct(0.5),
            "lateness_ms_p99": pct(0.99),
            "lateness_ms_max": lateness[-1] if lateness else None,
            "phrase_cache": {"hits": state.renderer.hits, "misses": state.renderer.misses},
        }

    @app.get("/emulator/faults")
    async def get_faults() -> dict[str, Any]:
        return {**asdict(state.faults), "refused": state.refused}

    @app.post("/emulator/faults")
    async def set_faults(request: Request) -> Response:
        try:
            state.faults = _FAULTS_BODY.validate_json(await request.body() or b"{}")
        except ValidationError as exc:
            return _error(400, f"Invalid faults: {_problems(exc)}", code="invalid_value")
        state.refused = 0
        log.info("emulator faults set: %s", state.faults)
        return JSONResponse({**asdict(state.faults), "refused": 0})

    return app


def _problems(exc: ValidationError) -> str:
    """Pydantic's errors as one line: ``where: what`` per problem."""
    return "; ".join(
        ".".join(map(str, e["loc"])) + ": " + e["msg"] if e["loc"] else e["msg"]
        for e in exc.errors(include_url=False)
    )


async def _text(part: Any) -> str:
    """A multipart field's text, whether Starlette parsed it as a field or a file."""
    if part is None:
        return ""
    if isinstance(part, str):
        return part
    data = await part.read()
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
