"""Adapters between the call runner and the world around it: starlette's websocket as the
carrier socket, a profile and the settings as a call's configuration, the process-wide
services a call uses. The composition root (:mod:`gateway.app`) wires them in."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from gateway.audio.format import FRAME_MS
from gateway.bridge.core import CallConfig
from gateway.bridge.ports import CarrierApi, CarrierGone
from gateway.numbers import Profile
from gateway.observability import CallLogger
from gateway.recordings import RecordingWriter, recording_path
from gateway.records.model import CallRecord
from gateway.records.pricing import PriceTable
from gateway.settings import Settings
from gateway.telephony.messages import Start
from gateway.tracing import TRACEPARENT_PARAM, CallTrace, Tracing

__all__ = ["CallServices", "CallWiring", "StarletteCarrierSocket", "call_config", "prepare_call"]


@dataclass(frozen=True, slots=True)
class CallServices:
    """Process-wide services a call uses besides its upstream; each is optional."""

    carrier_api: CarrierApi | None = None
    """The carrier's REST API: call control (tools, polite hang-ups). None: not configured."""
    prices: PriceTable = field(default_factory=PriceTable.default)
    save_record: Callable[[CallRecord], None] | None = None
    """Hands the finished call's record to the writer; must not block (the record writer's
    ``submit``)."""
    tracing: Tracing = field(default_factory=Tracing.disabled)
    recordings_dir: Path | None = None
    """Where calls of profiles with ``record: true`` are recorded; None: recording is off."""
    on_change: Callable[[str], None] | None = None
    """Told a call SID whenever that call's summary may have changed (the console's push
    stream); must be cheap and must not block."""


class StarletteCarrierSocket:
    """:class:`~gateway.bridge.ports.CarrierSocket` over starlette's websocket."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def accept(self) -> None:
        await self.ws.accept()

    async def receive(self) -> str | bytes:
        msg = await self.ws.receive()
        if msg["type"] == "websocket.disconnect":
            raise CarrierGone(msg.get("code"))
        text = msg.get("text")
        if text is not None:
            return str(text)
        data = msg.get("bytes")
        return bytes(data) if data is not None else b""

    async def send(self, frame: str | bytes) -> None:
        try:
            if isinstance(frame, str):
                await self.ws.send_text(frame)
            else:
                await self.ws.send_bytes(frame)
        except WebSocketDisconnect as exc:
            raise CarrierGone(exc.code) from None

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, reason=reason)

    @property
    def open(self) -> bool:
        return self.ws.application_state is WebSocketState.CONNECTED


def call_config(profile: Profile, settings: Settings, *, tools: bool, record: bool) -> CallConfig:
    """The values one call runs with: its profile's, the process's, what is configured."""
    return CallConfig(
        profile=profile.name,
        model=profile.model,
        greeting=profile.greeting,
        truncate_to_heard=profile.truncate_to_heard,
        local_barge_in=profile.local_barge_in,
        dtmf_timeout_ms=profile.dtmf_timeout_ms,
        end_call_tool=tools and profile.tools.end_call,
        transfer_targets=dict(profile.tools.transfer_call) if tools else {},
        max_cost_usd=profile.max_cost_usd,
        max_call_seconds=profile.max_call_seconds,
        setup_timeout_s=settings.setup_timeout_s,
        setup_buffer_frames=max(1, settings.setup_buffer_ms // FRAME_MS),
        session_max_age_s=settings.session_max_age_s,
        record=record,
        upstream_codec=profile.codec(settings.upstream_codec),
    )


@dataclass(frozen=True, slots=True)
class CallWiring:
    """What a bound call runs with besides its core: its configuration, its log and trace
    carrying the call's identifiers, and its recording file when the profile records."""

    config: CallConfig
    log: CallLogger
    trace: CallTrace
    recording: RecordingWriter | None


def prepare_call(
    start: Start,
    profile: Profile,
    called: str | None,
    *,
    settings: Settings,
    services: CallServices,
    started_wall: float,
    clock: Callable[[], float],
    log: logging.Logger,
) -> CallWiring:
    """Map a stream bound to its admitted call onto what the call needs from the process."""
    recording = None
    if profile.record and services.recordings_dir is not None:
        started = datetime.fromtimestamp(started_wall, UTC)
        path = recording_path(services.recordings_dir, start.call_sid, started)
        recording = RecordingWriter(path, log=log)
    trace = services.tracing.call(
        start.call_sid,
        start.stream_sid,
        called,
        start.custom_parameters.get(TRACEPARENT_PARAM),
        clock=clock,
    )
    call_log = CallLogger(
        log,
        call_sid=start.call_sid,
        stream_sid=start.stream_sid,
        number=profile.name,
        trace_id=trace.trace_id,
    )
    tools = services.carrier_api is not None
    config = call_config(profile, settings, tools=tools, record=recording is not None)
    return CallWiring(config, call_log, trace, recording)
