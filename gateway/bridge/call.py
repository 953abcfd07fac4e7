"""The only per-call async code: one :class:`CallRunner` per carrier media stream.

It runs three loops for the life of a call — carrier reader, upstream event reader, upstream
audio reader — and executes what the pure parts decide: the Twilio codec parses, the transcoder
converts, the :class:`~gateway.bridge.machine.TurnMachine` decides barge-in, the mark ledger
knows what the caller heard. Every task, the peer connection and the websocket end with the
call, whatever ends it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from gateway.admission import Admissions
from gateway.audio.g711 import ulaw_to_pcm16
from gateway.audio.recording import RecordingTimeline, RecordingWriter, recording_path
from gateway.audio.transcoder import CallTranscoder
from gateway.audio.vad import LocalVad, VadEvent
from gateway.bridge import control as cc
from gateway.bridge import machine as m
from gateway.errors import (
    CarrierError,
    CarrierProtocolError,
    CloseCode,
    Forbidden,
    GatewayError,
    UpstreamError,
    UpstreamRefused,
    UpstreamTimeout,
    close_code_for,
)
from gateway.numbers import Profile, ProfileStore
from gateway.observability import (
    LATENCY_BUCKETS,
    CallLogger,
    Metrics,
    bucket_quantile,
    mask_number,
)
from gateway.realtime import events as rt
from gateway.records.model import CallRecord
from gateway.records.pricing import PriceTable, Usage
from gateway.settings import Settings
from gateway.telephony.dtmf import DtmfCollector
from gateway.telephony.ledger import MarkLedger
from gateway.telephony.messages import (
    ClearAudio,
    Connected,
    Dtmf,
    Ignored,
    Mark,
    Media,
    OutboundMessage,
    PlayAudio,
    PlayMark,
    Start,
    Stop,
)
from gateway.telephony.rest import TwilioApiError
from gateway.telephony.twilio import TwilioCodec
from gateway.tracing import TRACEPARENT_PARAM, CallTrace, Tracing

log = logging.getLogger("gateway.call")

CALL_TOKEN_PARAM = "gateway_call_token"
PROFILE_PARAM = "gateway_number"
START_TIMEOUT_S = 10.0
FRAME_MS = 20
# One mark per 100 ms of audio: enough to know what was heard, a fifth of the message rate.
MARK_EVERY_MS = 100
# The local VAD judges whole 20 ms carrier frames (Twilio's size); other sizes are skipped.
VAD_FRAME_BYTES = 160
# A frame whose peak is below this is silence: not worth forwarding while nobody speaks.
SILENCE_PEAK = 8
# Setup retries: at most this many sessions per call, spaced by jittered exponential backoff.
MAX_SETUP_ATTEMPTS = 3
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 2.0
# A lost upstream is replaced this many times per call, carrying at most this many transcript
# lines over; beyond that the call ends and the TwiML fallback plays.
MAX_RECONNECTS = 1
RESTORE_MAX_LINES = 40
# After this many consecutive unusable carrier frames the stream is beyond saving.
MAX_CONSECUTIVE_CARRIER_ERRORS = 50
CARRIER_SEND_TIMEOUT_S = 5.0
"""A carrier that does not take a message for this long has stopped reading its socket: the
call ends instead of stalling its audio loop while decoded upstream audio piles up."""
CLOSE_TIMEOUT_S = 2.0
HARD_STOP_GRACE_S = 5.0
"""After the maximum duration's wrap-up deadline, the stream is closed this much later at most."""


class UpstreamSession(Protocol):
    """What the bridge needs from one Realtime session (see gateway.realtime.session)."""

    @property
    def call_id(self) -> str | None: ...

    async def open(self) -> None: ...

    def send(self, event: dict[str, Any]) -> None: ...

    def events(self) -> AsyncIterator[rt.ServerEvent]: ...

    def push_audio(self, frame: npt.NDArray[np.int16], received_at: float) -> None: ...

    @property
    def phase_spans(self) -> tuple[tuple[str, float, float], ...]:
        """Setup phases as ``(name, start, end)`` on the call's clock (for tracing)."""
        ...

    def audio_frames(self) -> AsyncIterator[tuple[npt.NDArray[np.int16], float]]: ...

    async def close(self) -> None: ...


UpstreamFactory = Callable[[Profile], UpstreamSession]


class CarrierApi(Protocol):
    """What call control needs from the carrier's REST API (gateway.telephony.rest)."""

    async def hang_up(self, call_sid: str) -> object: ...

    async def transfer(self, call_sid: str, number: str) -> object: ...


@dataclass(frozen=True, slots=True)
class CallServices:
    """Process-wide services a call uses besides its upstream; each is optional."""

    carrier_api: CarrierApi | None = None
    """Twilio's REST API: call control (tools, polite hang-ups). None: not configured."""
    prices: PriceTable = field(default_factory=PriceTable.default)
    save_record: Callable[[CallRecord], None] | None = None
    """Hands the finished call's record to the writer; must not block (the record writer's
    ``submit``)."""
    tracing: Tracing = field(default_factory=Tracing.disabled)
    recordings_dir: Path | None = None
    """Where calls of profiles with ``record: true`` are recorded; None: recording is off."""


@dataclass
class CallStats:
    """What the call record and the admin API report about one call."""

    started_at: float = 0.0
    setup_ms: float | None = None
    turns: int = 0
    barge_ins: int = 0
    frames_in: int = 0
    frames_out: int = 0
    setup_attempts: int = 0
    reconnects: int = 0
    rotations: int = 0
    dropped_setup_frames: int = 0
    muted_frames: int = 0
    carrier_errors: int = 0
    upstream_errors: dict[str, int] = field(default_factory=dict)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    """``{speaker, text, at_ms}`` per finished utterance, ms since the stream started."""
    actions: list[dict[str, Any]] = field(default_factory=list)
    """Call-control steps (tool calls, wrap-ups, hang-up, transfer) with ``at_ms``."""
    dtmf: str = ""
    response_ms: list[float] = field(default_factory=list)
    """Caller stopped speaking (server VAD) to the first answer frame written to the carrier."""
    outbound_added: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    """Counts of outbound gateway-added latency per /metrics bucket (cheap per frame, bounded)."""
    outcome: str | None = None
    end_reason: str | None = None

    def latency_summary(self) -> dict[str, float | None]:
        """Per-call latency percentiles as measured at the gateway (ms)."""
        resp = sorted(self.response_ms)
        return {
            "response_ms_p50": _pick(resp, 0.5),
            "response_ms_p95": _pick(resp, 0.95),
            "response_ms_max": resp[-1] if resp else None,
            "outbound_added_ms_p50": _bucketed_ms(self.outbound_added, 0.5),
            "outbound_added_ms_p99": _bucketed_ms(self.outbound_added, 0.99),
        }


def _pick(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def _bucketed_ms(counts: list[int], q: float) -> float | None:
    cumulative, total = [], 0
    for bound, n in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
        total += n
        cumulative.append((bound, float(total)))
    value = bucket_quantile(cumulative, q)
    return None if value is None else round(value * 1000, 2)


# Finished calls kept in memory for the admin API and the demo (bounded: summaries only).
RECENT_CALLS = 100


class CallRunner:
    """Runs one media stream from ``connected`` to close. Create it per websocket, then
    :meth:`run` it (or :meth:`refuse` it when the upgrade is not authorized)."""

    def __init__(
        self,
        ws: WebSocket,
        *,
        settings: Settings,
        profiles: ProfileStore,
        admissions: Admissions,
        metrics: Metrics,
        upstream: UpstreamFactory,
        registry: dict[str, CallRunner],
        recent: deque[dict[str, Any]] | None = None,
        services: CallServices | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.ws = ws
        self.settings = settings
        self.profiles = profiles
        self.admissions = admissions
        self.metrics = metrics
        self._outbound_latency = metrics.added_latency.labels("outbound")  # hot: once per frame
        self.upstream_factory = upstream
        self.registry = registry
        self.recent = recent
        self.services = services or CallServices()
        self.clock = clock
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()
        self._session_opened_at = 0.0
        self.codec = TwilioCodec(max_message_bytes=settings.max_message_bytes)
        self.transcoder = CallTranscoder()
        self.ledger = MarkLedger(mark_every_ms=MARK_EVERY_MS)
        self.machine = m.TurnMachine()
        self.vad: LocalVad | None = None
        self.stats = CallStats()
        self.log = CallLogger(log)
        self.trace: CallTrace = self.services.tracing.call(None, None, None, None)
        self.start: Start | None = None
        self.profile: Profile | None = None
        self.session: UpstreamSession | None = None
        self._ready = False
        self._setup_buffer: deque[tuple[npt.NDArray[np.int16], float]] = deque(
            maxlen=max(1, settings.setup_buffer_ms // FRAME_MS)
        )
        self._end_reason = "carrier hung up"
        self._close_code = CloseCode.NORMAL
        self._speech_at: float | None = None
        self._consecutive_errors = 0
        self._hangup = asyncio.Event()
        self._pending: list[OutboundMessage] = []
        self.control = cc.CallControl()
        self._end_task: asyncio.Task[None] | None = None
        self._ending = False  # an end action was issued: keep its reason, not the carrier's
        self._outcome: str | None = None
        self._speech_stopped_at: float | None = None
        self.dtmf = DtmfCollector()
        self._dtmf_backlog: list[str] = []  # entries typed before the session was ready
        self.usage = Usage()
        self.cost_usd: float | None = 0.0
        self._started_wall = 0.0
        self._caller: str | None = None
        self._called: str | None = None
        self.recording: _Recording | None = None
        self.recording_path: Path | None = None

    # --- public ------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """A JSON-able view for the admin API (no secrets, numbers masked by the caller)."""
        return {
            "call_sid": self.start.call_sid if self.start else None,
            "stream_sid": self.start.stream_sid if self.start else None,
            "profile": self.profile.name if self.profile else None,
            "upstream_call_id": self.session.call_id if self.session else None,
            "state": self.machine.state.value,
            "age_s": round(self.clock() - self.stats.started_at, 1),
            "setup_ms": self.stats.setup_ms,
            "turns": self.stats.turns,
            "barge_ins": self.stats.barge_ins,
            "setup_attempts": self.stats.setup_attempts,
            "reconnects": self.stats.reconnects,
            "rotations": self.stats.rotations,
            "frames_in": self.stats.frames_in,
            "frames_out": self.stats.frames_out,
            "upstream_errors": dict(self.stats.upstream_errors),
            "usage": self.usage.as_dict(),
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
            "actions": list(self.stats.actions),
            "dtmf": self.stats.dtmf,
            "latency": self.stats.latency_summary(),
            "transcript": list(self.stats.transcript),
            "outcome": self.stats.outcome,
            "end_reason": self.stats.end_reason,
        }

    def record(self) -> CallRecord:
        """The call record: what the operator sees in the database after the call."""
        assert self.start is not None
        started = datetime.fromtimestamp(self._started_wall, UTC)
        ended = datetime.fromtimestamp(self.wall_clock(), UTC)
        return CallRecord(
            call_sid=self.start.call_sid,
            started_at=started,
            ended_at=ended,
            stream_sid=self.start.stream_sid,
            account_sid=self.start.account_sid,
            number=self._called or "default",
            profile=self.profile.name if self.profile else "",
            caller=mask_number(self._caller),
            upstream_call_id=(self.session.call_id if self.session else None) or "",
            model=self.profile.model if self.profile else "",
            duration_s=round(max(0.0, (ended - started).total_seconds()), 3),
            outcome=self.stats.outcome or "",
            end_reason=self.stats.end_reason or "",
            turns=self.stats.turns,
            barge_ins=self.stats.barge_ins,
            setup_ms=None if self.stats.setup_ms is None else round(self.stats.setup_ms, 1),
            latency=self.stats.latency_summary(),
            usage=self.usage,
            cost_usd=self.cost_usd,
            actions=list(self.stats.actions),
            errors=dict(self.stats.upstream_errors),
            recording_path=None if self.recording_path is None else str(self.recording_path),
            dtmf=self.stats.dtmf,
        )

    async def refuse(self, exc: GatewayError) -> None:
        """Close an unauthorized upgrade before anything else happens."""
        code, reason = close_code_for(exc)
        self.log.warning("media stream refused: %s", exc)
        self.metrics.calls.labels("refused").inc()
        await self.ws.close(code=int(code), reason=reason)

    async def hang_up(self, reason: str) -> None:
        """Ask the call to end (shutdown, max duration); :meth:`run` does the cleanup."""
        self._end_reason = reason
        self._close_code = CloseCode.GOING_AWAY
        self._hangup.set()

    async def run(self) -> None:
        """Serve the stream until it ends; never raises (failures become close codes)."""
        self.stats.started_at = self.clock()
        self._started_wall = self.wall_clock()
        await self.ws.accept()
        tasks: list[asyncio.Task[None]] = []
        outcome = "completed"
        try:
            await self._handshake()
            assert self.start is not None and self.profile is not None
            self.registry[self.start.call_sid] = self
            self.metrics.active_calls.inc()
            carrier = asyncio.create_task(self._carrier_loop(), name="carrier")
            tasks.append(carrier)
            await self._open_upstream(carrier)
            tasks += [
                asyncio.create_task(self._upstream(carrier), name="upstream"),
                asyncio.create_task(self._hangup.wait(), name="hangup"),  # type: ignore[arg-type]
                asyncio.create_task(self._max_duration(), name="max-duration"),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        except WebSocketDisconnect:
            if not self._ending:
                self._end_reason = "carrier websocket closed"
        except GatewayError as exc:
            outcome = _outcome_for(exc)
            self._close_code, _ = close_code_for(exc)
            self._end_reason = str(exc)
            self.log.warning("call ends: %s", exc)
        except Exception:  # our bug: one bad call must not hurt the others
            outcome = "internal_error"
            self._close_code = CloseCode.INTERNAL_ERROR
            self._end_reason = "internal error"
            self.log.exception("call failed with an internal error")
        finally:
            await self._cleanup(tasks, outcome)

    # --- phases --------------------------------------------------------------------------

    async def _receive(self) -> str | bytes:
        msg = await self.ws.receive()
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000))
        text = msg.get("text")
        if text is not None:
            return str(text)
        data = msg.get("bytes")
        return bytes(data) if data is not None else b""

    async def _handshake(self) -> None:
        """Read ``connected`` and ``start``; bind the stream to the call the webhook admitted."""
        async with asyncio.timeout(START_TIMEOUT_S):
            while self.start is None:
                parsed = self.codec.parse(await self._receive())
                if isinstance(parsed, Connected | Ignored):
                    continue
                if not isinstance(parsed, Start):
                    raise CarrierProtocolError(f"expected 'start', got {type(parsed).__name__}")
                self.start = parsed
        start = self.start
        token = start.custom_parameters.get(CALL_TOKEN_PARAM, "")
        admission = self.admissions.bind(
            start.call_sid,
            token,
            self.wall_clock(),
            called=start.custom_parameters.get(PROFILE_PARAM),
        )
        called = admission.called
        self._called, self._caller = called, admission.caller
        self.profile = self.profiles.for_number(called)
        self.machine = m.TurnMachine(truncate_to_heard=self.profile.truncate_to_heard)
        self.dtmf = DtmfCollector(inter_digit_timeout_ms=self.profile.dtmf_timeout_ms)
        directory = self.services.recordings_dir
        if self.profile.record and directory is not None:
            started = datetime.fromtimestamp(self._started_wall, UTC)
            path = recording_path(directory, start.call_sid, started)
            self.recording = _Recording(RecordingTimeline(), RecordingWriter(path, log=log))
        if self.services.carrier_api is not None:
            self.control = cc.CallControl(
                end_call=self.profile.tools.end_call, transfer=self.profile.tools.transfer_call
            )
        if self.profile.local_barge_in:
            # 100 ms onset: shorter onsets fire on line noise and would cut greetings off.
            self.vad = LocalVad(onset_ms=100)
        self.trace = self.services.tracing.call(
            start.call_sid,
            start.stream_sid,
            called,
            start.custom_parameters.get(TRACEPARENT_PARAM),
            clock=self.clock,
        )
        self.log = CallLogger(
            log,
            call_sid=start.call_sid,
            stream_sid=start.stream_sid,
            number=self.profile.name,
            trace_id=self.trace.trace_id,
        )
        self.log.info("stream started (profile %s)", self.profile.name)

    async def _open_upstream(self, carrier: asyncio.Task[None], *, resume: bool = False) -> None:
        """Open the Realtime session while the carrier loop buffers caller audio.

        A refusal worth retrying (429, 5xx) or a setup phase that timed out is retried with a
        fresh session after a jittered backoff, as long as the attempt can still finish inside
        ``setup_timeout_s``; past that the caller would be sitting in silence, so the stream
        closes and the TwiML fallback plays.
        """
        assert self.profile is not None
        t0 = self.clock()
        deadline = t0 + self.settings.setup_timeout_s
        attempt = 0
        while True:
            attempt += 1
            self.session = self.upstream_factory(self.profile)
            try:
                await self._attempt_open(self.session, carrier, deadline)
                self._traced_setup(self.session, None)
                break
            except (UpstreamRefused, UpstreamTimeout) as exc:
                self._traced_setup(self.session, exc)
                retryable = not isinstance(exc, UpstreamRefused) or exc.retryable
                delay = backoff_s(attempt, self.rng)
                self.stats.setup_attempts = attempt
                self.metrics.upstream_errors.labels(_setup_error_code(exc)).inc()
                with contextlib.suppress(Exception):
                    await self.session.close()
                if (
                    not retryable
                    or attempt >= MAX_SETUP_ATTEMPTS
                    or self.clock() + delay >= deadline
                ):
                    raise
                self.log.warning(
                    "upstream setup attempt %d failed (%s); retrying in %.0f ms",
                    attempt,
                    exc,
                    delay * 1000,
                )
                await asyncio.sleep(delay)
        self.stats.setup_attempts = attempt
        ready_ms = (self.clock() - t0) * 1000
        if not resume:
            self.stats.setup_ms = ready_ms
            self.metrics.setup_seconds.observe(ready_ms / 1000)
        self.log.info("upstream ready in %.0f ms (call id %s)", ready_ms, self.session.call_id)
        self._ready = True
        self._session_opened_at = self.clock()
        if resume:
            self._restore_conversation()
        for frame, at in _without_leading_silence(self._setup_buffer):
            self.session.push_audio(frame, at)
        self._setup_buffer.clear()
        if self.profile.greeting and not resume:
            self.session.send(rt.response_create(instructions=self.profile.greeting))
        backlog, self._dtmf_backlog = self._dtmf_backlog, []
        for entry in backlog:
            await self._on_keypad_entry(entry)

    def _traced_setup(self, session: UpstreamSession, error: UpstreamError | None) -> None:
        code = None if error is None else _setup_error_code(error)
        self.trace.setup_phases(session.phase_spans, upstream_call_id=session.call_id, error=code)
        if session.call_id:
            self.log = self.log.bind(upstream_call_id=session.call_id)

    async def _attempt_open(
        self, session: UpstreamSession, carrier: asyncio.Task[None], deadline: float
    ) -> None:
        opening = asyncio.create_task(session.open(), name="upstream-open")
        done, _ = await asyncio.wait(
            {opening, carrier},
            timeout=max(0.0, deadline - self.clock()),
            return_when=asyncio.FIRST_COMPLETED,
        )
        if opening in done:
            opening.result()
            return
        opening.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await opening
        if carrier in done:
            carrier.result()  # the carrier went away during setup: re-raise why
            raise WebSocketDisconnect(1000)
        raise UpstreamTimeout(
            f"Realtime session not ready within {self.settings.setup_timeout_s:g} s"
        )

    # --- loops ---------------------------------------------------------------------------

    async def _carrier_loop(self) -> None:
        idle_s = self.settings.carrier_idle_timeout_s
        while True:
            try:
                async with asyncio.timeout(idle_s):
                    raw = await self._receive()
            except TimeoutError:
                raise CarrierProtocolError(
                    f"the carrier sent nothing for {idle_s:g} s (a live stream sends audio "
                    "every 20 ms, even silence)"
                ) from None
            now = self.clock()
            try:
                msg = self.codec.parse(raw)
            except CarrierError as exc:
                self._carrier_error(exc)
                continue
            self._consecutive_errors = 0
            if isinstance(msg, Media):
                self._on_media(msg, now)
                if self._pending:
                    await self._flush_pending()
            elif isinstance(msg, Mark):
                self.ledger.on_mark(msg.name)
                if self.ledger.buffered_ms <= 0:
                    await self._handle(m.CarrierDrained())
            elif isinstance(msg, Stop):
                if not self._ending:
                    self._end_reason = "carrier sent stop"
                return
            elif isinstance(msg, Dtmf):
                await self._on_dtmf(msg.digit, now)
            elif isinstance(msg, Ignored):
                self.metrics.carrier_rejects.labels("ignored").inc()
            elif isinstance(msg, Start | Connected):
                self._carrier_error(CarrierProtocolError("duplicate connected/start"))
            if self.control.deadline is not None and now >= self.control.deadline:
                self._control(cc.Tick(), now)
            # Timers ride on the carrier's 20 ms message clock: no task per call for them.
            deadline = self.dtmf.deadline
            if deadline is not None and now >= deadline:
                while (entry := self.dtmf.due(now)) is not None:
                    await self._on_keypad_entry(entry)

    async def _on_dtmf(self, digit: str, now: float) -> None:
        try:
            entry = self.dtmf.press(digit, now)
        except ValueError as exc:
            self._carrier_error(CarrierProtocolError(str(exc)))
            return
        self.stats.dtmf += digit
        if entry is not None:
            await self._on_keypad_entry(entry)

    async def _on_keypad_entry(self, entry: str) -> None:
        """Hand one keypad entry to the model as a caller message, and let it answer.

        Typing over the assistant interrupts it, as speech does (IVR callers press keys
        without waiting for the menu to end).
        """
        if not self._ready or self.session is None:
            self._dtmf_backlog.append(entry)
            return
        self.log.info("caller typed %d key(s) on the keypad", len(entry))
        if self.machine.state in (m.State.RESPONDING, m.State.SPEAKING, m.State.DRAINING):
            self._speech_at = self.clock()
            await self._handle(m.SpeechStarted("dtmf"))
        self.session.send(rt.conversation_item_create_user_text(keypad_text(entry)))
        self.session.send(rt.response_create())

    def _carrier_error(self, exc: CarrierError) -> None:
        if isinstance(exc, Forbidden):
            raise exc
        self.stats.carrier_errors += 1
        self._consecutive_errors += 1
        self.metrics.carrier_rejects.labels(type(exc).__name__).inc()
        if self.stats.carrier_errors <= 5:
            self.log.warning("carrier message rejected: %s", exc)
        if self._consecutive_errors >= MAX_CONSECUTIVE_CARRIER_ERRORS:
            raise exc

    def _on_media(self, msg: Media, now: float) -> None:
        self.stats.frames_in += 1
        if self.recording is not None:
            self._record(self.recording.on_caller, msg.payload, msg.timestamp_ms, now)
        if self.vad is not None and self._ready and len(msg.payload) == VAD_FRAME_BYTES:
            event = self.vad.process(ulaw_to_pcm16(msg.payload))
            if event is VadEvent.SPEECH_STARTED and self.machine.assistant_audible:
                self._speech_at = now
                self._run_actions(self.machine.handle(m.SpeechStarted("local")))
        for frame in self.transcoder.inbound(msg.payload):
            if self._ready and self.session is not None:
                self.session.push_audio(frame, now)
            else:
                if len(self._setup_buffer) == self._setup_buffer.maxlen:
                    self.stats.dropped_setup_frames += 1
                    self.metrics.dropped_frames.labels("inbound", "setup_buffer_full").inc()
                self._setup_buffer.append((frame, now))

    async def _upstream(self, carrier: asyncio.Task[None]) -> None:
        """Serve the upstream for the life of the call, replacing it once if it is lost.

        A lost session (data channel or peer closed, ``server_error``, ``session_expired``) is
        replaced by a fresh one that carries the conversation so far, so the caller hears a
        short pause instead of the fallback; a second loss ends the call.
        """
        while True:
            try:
                await self._pump_session()
                return
            except _RotateSession:
                self.stats.rotations += 1
                self.metrics.upstream_errors.labels("rotation").inc()
                self.log.info("upstream session is %.0f s old: rotating", self._session_age())
                await self._replace_session(carrier, rotating=True)
            except UpstreamError as exc:
                if self.stats.reconnects >= MAX_RECONNECTS:
                    raise
                self.stats.reconnects += 1
                self.metrics.upstream_errors.labels("reconnect").inc()
                self.log.warning("upstream lost (%s): reconnecting with a fresh session", exc)
                self.trace.event("reconnect", at=self.clock(), reason=str(exc))
                await self._replace_session(carrier)

    def _session_age(self) -> float:
        return self.clock() - self._session_opened_at

    async def _pump_session(self) -> None:
        """Run the current session's event and audio readers until its events end."""
        events = asyncio.create_task(self._upstream_events(), name="upstream-events")
        audio = asyncio.create_task(self._upstream_audio(), name="upstream-audio")
        try:
            done, _ = await asyncio.wait({events, audio}, return_when=asyncio.FIRST_COMPLETED)
            if audio in done and not audio.cancelled() and audio.exception() is not None:
                raise audio.exception()  # type: ignore[misc]
            await events  # the event stream decides: lost (raises) or closed by us
        finally:
            for t in (events, audio):
                t.cancel()
            for t in (events, audio):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def _replace_session(
        self, carrier: asyncio.Task[None], *, rotating: bool = False
    ) -> None:
        """Close the session, open a fresh one and restore the conversation into it.

        ``rotating``: the old session is healthy and the assistant has finished speaking; what
        the carrier still buffers is left to play.
        """
        assert self.session is not None and self.profile is not None
        self._ready = False  # caller audio goes to the setup buffer meanwhile
        with contextlib.suppress(Exception):
            await self.session.close()
        if self.machine.assistant_audible and not rotating:
            self._pending.append(ClearAudio())
            self.ledger.on_clear()
        self.transcoder.reset_outbound()
        self.machine = m.TurnMachine(truncate_to_heard=self.profile.truncate_to_heard)
        await self._flush_pending()
        await self._open_upstream(carrier, resume=True)

    def _restore_conversation(self) -> None:
        """Replay the transcript into a fresh session as items, then ask it not to greet."""
        assert self.session is not None
        for line in self.stats.transcript[-RESTORE_MAX_LINES:]:
            if line["speaker"] == "caller":
                self.session.send(rt.conversation_item_create_user_text(line["text"]))
            else:
                item = {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": line["text"]}],
                }
                self.session.send(rt.conversation_item_create(item))
        self.session.send(
            rt.conversation_item_create_system_text(
                "The phone call continues after a short technical interruption on our side. "
                "Do not greet the caller again; carry on from where the conversation was."
            )
        )

    async def _upstream_events(self) -> None:
        assert self.session is not None
        async for ev in self.session.events():
            now = self.clock()
            await self._on_upstream_event(ev, now)

    async def _on_upstream_event(self, ev: rt.ServerEvent, now: float) -> None:
        kind = ev.type
        if kind == "input_audio_buffer.speech_started":
            self._speech_at = now
            await self._handle(m.SpeechStarted("server"))
        elif kind == "response.created" and ev.response_id:
            self.trace.turn_started(ev.response_id, now)
            self._control(cc.ResponseStarted(ev.response_id), now)
            await self._handle(m.ResponseCreated(ev.response_id))
        elif kind == "response.output_item.done" and ev.item_type == "function_call":
            if ev.response_id and ev.call_id and ev.name:
                tool = cc.ToolCalled(ev.response_id, ev.call_id, ev.name, ev.arguments or "")
                self._control(tool, now)
        elif kind == "input_audio_buffer.speech_stopped":
            self._speech_stopped_at = now
        elif kind == "response.output_item.added" and ev.response_id and ev.item_id:
            if ev.item_role == "assistant":
                await self._handle(m.AssistantItem(ev.response_id, ev.item_id))
        elif kind == "output_audio_buffer.started":
            await self._handle(m.AudioStarted(ev.response_id))
        elif kind == "output_audio_buffer.stopped":
            await self._on_audio_stopped(ev.response_id)
            if self._session_age() >= self.settings.session_max_age_s:
                raise _RotateSession  # between turns: the answer has been sent in full
        elif kind == "output_audio_buffer.cleared":
            await self._handle(m.AudioCleared(ev.response_id))
        elif kind == "response.done" and ev.response_id:
            self.stats.turns += 1
            self._on_usage(ev.usage, now)
            self.trace.turn_done(ev.response_id, ev.status or "completed", ev.usage, now)
            self._control(cc.ResponseFinished(ev.response_id), now)
            await self._handle(m.ResponseDone(ev.response_id, ev.status or "completed"))
        elif kind == "response.output_audio_transcript.done" and ev.transcript:
            self._transcribed("assistant", ev.transcript, now)
        elif kind == "conversation.item.input_audio_transcription.completed" and ev.transcript:
            self._transcribed("caller", ev.transcript, now)
        elif kind == "error":
            self._on_upstream_error(ev)

    def _on_usage(self, raw: dict[str, Any] | None, now: float) -> None:
        """Add one response's usage; past the profile's budget, ask for a polite wrap-up."""
        if raw is None:
            return
        assert self.profile is not None
        usage = Usage.from_realtime(raw)
        self.usage += usage
        for kind, n in usage.as_dict().items():
            if n:
                self.metrics.upstream_tokens.labels(kind).inc(n)
        added = self.services.prices.cost_usd(self.profile.model, usage)
        if added is None:
            self.cost_usd = None  # no price for the profile's model: never a guess
        elif self.cost_usd is not None:
            self.cost_usd += added
            self.metrics.upstream_cost.inc(added)
        budget = self.profile.max_cost_usd
        if budget is not None and self.cost_usd is not None and self.cost_usd >= budget:
            reason = f"cost budget reached (${self.cost_usd:.4f} of ${budget:.4f})"
            self._control(
                cc.WrapUp(
                    reason,
                    "This call has reached its time and cost limit. Thank the caller, tell them "
                    "the call has to end now, and say goodbye, in one or two short sentences.",
                ),
                now,
            )

    def _transcribed(self, speaker: str, text: str, now: float) -> None:
        at_ms = round((now - self.stats.started_at) * 1000)
        self.stats.transcript.append({"speaker": speaker, "text": text, "at_ms": at_ms})
        self.log.debug("%s said: %s", speaker, text)

    def _on_upstream_error(self, ev: rt.ServerEvent) -> None:
        code = ev.error_code or "unknown"
        self.stats.upstream_errors[code] = self.stats.upstream_errors.get(code, 0) + 1
        self.metrics.upstream_errors.labels(code).inc()
        if code in rt.RECOVERABLE_ERROR_CODES:
            self.log.debug("upstream error %s (recoverable)", code)
            return
        self.log.warning("upstream error %s: %s", code, (ev.error or {}).get("message"))
        if code in rt.FATAL_ERROR_CODES or (ev.error or {}).get("type") == "server_error":
            raise UpstreamError(f"Realtime session failed: {code}", code=code)

    async def _on_audio_stopped(self, response_id: str | None) -> None:
        tail = self.transcoder.flush_outbound()
        if tail is not None and self.machine.forwards_audio():
            await self._send_audio(tail, response_id, self.clock())
        mark = self.ledger.flush()
        if mark is not None:
            await self._send(PlayMark(mark))
        await self._handle(m.AudioStopped(response_id))
        if self.machine.state is m.State.DRAINING and self.ledger.buffered_ms <= 0:
            await self._handle(m.CarrierDrained())

    async def _upstream_audio(self) -> None:
        assert self.session is not None
        async for frame, received_at in self.session.audio_frames():
            if not self.machine.forwards_audio():
                self.stats.muted_frames += 1
                self.metrics.dropped_frames.labels("outbound", "muted_after_barge_in").inc()
                continue
            if self.machine.state not in _SPEAKING_STATES and _is_silent(frame):
                # Comfort silence between answers: the carrier plays silence by itself, and
                # forwarding it would keep its buffer (and our "assistant audible") non-empty.
                continue
            for chunk in self.transcoder.outbound(frame):
                if not self.machine.forwards_audio():
                    break  # a barge-in landed while we were writing
                await self._send_audio(chunk, self.machine.audible_response, received_at)

    async def _send_audio(self, ulaw: bytes, response_id: str | None, received_at: float) -> None:
        await self._send(PlayAudio(ulaw))
        self.stats.frames_out += 1
        now = self.clock()
        added = now - received_at
        self._outbound_latency.observe(added)
        self.stats.outbound_added[bisect.bisect_left(LATENCY_BUCKETS, added)] += 1
        if self._speech_stopped_at is not None:
            self.stats.response_ms.append(round((now - self._speech_stopped_at) * 1000, 1))
            self._speech_stopped_at = None
        if self.recording is not None:
            self._record(self.recording.on_assistant, ulaw, now)
        mark = self.ledger.sent(len(ulaw), response_id)
        if mark is None and self.machine.state is m.State.DRAINING:
            # Late frames after upstream said it stopped (RTP trails the data channel): mark
            # them at once, or the carrier could never be confirmed drained.
            mark = self.ledger.flush()
        if mark is not None:
            await self._send(PlayMark(mark))

    async def _max_duration(self) -> None:
        """At the profile's limit the assistant says goodbye; a hard stop follows regardless."""
        assert self.profile is not None
        limit = self.profile.max_call_seconds
        await asyncio.sleep(limit)
        reason = f"maximum call duration ({limit} s) reached"
        self._control(
            cc.WrapUp(
                reason,
                "The call has reached its time limit. Tell the caller so in one short sentence "
                "and say goodbye.",
            ),
            self.clock(),
        )
        await asyncio.sleep(self.control.wrap_up_s + HARD_STOP_GRACE_S)
        self._ending = True
        self._end_reason = reason

    # --- actions -------------------------------------------------------------------------

    async def _handle(self, event: m.Input) -> None:
        self._run_actions(self.machine.handle(event))
        await self._flush_pending()
        if self.control.phase is cc.Phase.WRAPPING_UP and self._assistant_quiet():
            self._control(cc.AssistantQuiet(), self.clock())

    def _assistant_quiet(self) -> bool:
        """The caller hears nothing from the assistant and no response is on its way."""
        return (
            self.machine.state in (m.State.LISTENING, m.State.INTERRUPTED)
            and self.machine.active_response is None
        )

    def _control(self, event: cc.Input, now: float) -> None:
        """Feed call control; execute its actions (upstream sends now, carrier API in a task)."""
        for action in self.control.handle(event, now):
            session = self.session
            if isinstance(action, cc.Note):
                entry = {**action.entry, "at_ms": round((now - self.stats.started_at) * 1000)}
                self.stats.actions.append(entry)
                self.trace.event(f"call_control.{entry['kind']}", at=now, ok=entry.get("ok"))
                self.log.info("call control: %s", entry)
            elif isinstance(action, cc.HangUp | cc.Transfer):
                self._ending = True
                self._end_reason = action.reason
                self._end_task = asyncio.create_task(self._end_call(action), name="end-call")
            elif session is None:
                continue
            elif isinstance(action, cc.SendToolOutput):
                output = json.dumps(action.output, separators=(",", ":"))
                session.send(rt.conversation_item_create_function_output(action.call_id, output))
            elif isinstance(action, cc.AddSystemNote):
                session.send(rt.conversation_item_create_system_text(action.text))
            elif isinstance(action, cc.RequestResponse):
                session.send(rt.response_create(instructions=action.instructions))

    async def _end_call(self, action: cc.HangUp | cc.Transfer) -> None:
        """Hang up or transfer through the carrier's REST API, then end the stream.

        Without a carrier API (no REST credentials) a hang-up closes the stream, and Twilio
        runs the TwiML after ``<Connect>`` (the profile's fallback). A refused transfer puts
        the caller back with the assistant, which says so.
        """
        assert self.start is not None
        sid, api = self.start.call_sid, self.services.carrier_api
        kind = "hang_up" if isinstance(action, cc.HangUp) else "transfer"
        error: str | None = None
        if api is not None:
            try:
                if isinstance(action, cc.HangUp):
                    await api.hang_up(sid)
                else:
                    await api.transfer(sid, action.number)
            except TwilioApiError as exc:  # its message says what to check
                gone = exc.call_not_in_progress or exc.not_found
                if not (gone and isinstance(action, cc.HangUp)):
                    error = str(exc)
            except Exception as exc:
                error = str(exc) or type(exc).__name__
        at_ms = round((self.clock() - self.stats.started_at) * 1000)
        self.stats.actions.append(
            {"kind": f"{kind}_request", "ok": error is None, "error": error, "at_ms": at_ms}
        )
        self.metrics.call_actions.labels(kind, "ok" if error is None else "failed").inc()
        if error is None:
            if isinstance(action, cc.Transfer):
                self._outcome = "transferred"
        else:
            self.log.error("carrier API %s failed: %s", kind.replace("_", " "), error)
            if isinstance(action, cc.Transfer) and self.machine.state is not m.State.CLOSED:
                self._ending = False
                self._control(cc.TransferFailed(action.destination, error), self.clock())
                return
        self._hangup.set()

    def _run_actions(self, actions: list[m.Action]) -> None:
        """Execute the machine's actions; carrier writes are queued and flushed in order."""
        for action in actions:
            if isinstance(action, m.ClearCarrier):
                self._pending.append(ClearAudio())
                self.ledger.on_clear()
            elif isinstance(action, m.DropOutboundAudio):
                self.transcoder.reset_outbound()
            elif isinstance(action, m.CancelResponse) and self.session is not None:
                self.session.send(rt.response_cancel(action.response_id))
            elif isinstance(action, m.ClearUpstreamAudio) and self.session is not None:
                self.session.send(rt.output_audio_buffer_clear())
            elif isinstance(action, m.TruncateToHeard) and self.session is not None:
                heard = self.ledger.played_ms_for(action.response_id)
                if heard > 0:
                    self.session.send(rt.conversation_item_truncate(action.item_id, 0, heard))
            elif isinstance(action, m.BargeIn):
                self.stats.barge_ins += 1
                self.metrics.barge_ins.labels(action.source).inc()
                self.trace.event("barge_in", at=self.clock(), source=action.source)

    async def _flush_pending(self) -> None:
        pending, self._pending = self._pending, []
        for msg in pending:
            await self._send(msg)
            if not isinstance(msg, ClearAudio):
                continue
            if self.recording is not None:
                self._record(self.recording.on_clear, self.clock())
            if self._speech_at is not None:
                self.metrics.barge_in_seconds.observe(self.clock() - self._speech_at)
                self._speech_at = None

    async def _send(self, msg: OutboundMessage) -> None:
        try:
            async with asyncio.timeout(CARRIER_SEND_TIMEOUT_S):
                await self.ws.send_text(self.codec.encode(msg))
        except TimeoutError:
            raise CarrierProtocolError(
                f"the carrier has not read its websocket for {CARRIER_SEND_TIMEOUT_S:g} s"
            ) from None

    def _record(self, step: Callable[..., None], *args: Any) -> None:
        """Apply one recording step. A recording that cannot go on stops where it is (what it
        has is still saved); the call goes on."""
        rec = self.recording
        if rec is None or rec.failed:
            return
        try:
            step(*args)
        except ValueError as exc:  # a carrier timestamp far off the stream's clock
            self.log.warning("call recording stopped: %s", exc)
            rec.failed = True
            self.metrics.recordings.labels("failed").inc()

    async def _finish_recording(self) -> None:
        rec, self.recording = self.recording, None
        if rec is None:
            return
        if rec.started:
            with contextlib.suppress(ValueError, RuntimeError):
                tail = (
                    rec.timeline.take()
                    if rec.failed
                    else rec.timeline.finish(rec.at_ms(self.clock()))
                )
                rec.writer.write(tail)
        try:
            async with asyncio.timeout(CARRIER_SEND_TIMEOUT_S):
                saved = await rec.writer.close()
        except TimeoutError:
            saved = None
            self.log.error("call recording not finished within %g s", CARRIER_SEND_TIMEOUT_S)
        self.recording_path = saved
        if rec.failed:
            return  # counted when it failed
        self.metrics.recordings.labels("saved" if saved is not None else "failed").inc()

    # --- end -----------------------------------------------------------------------------

    async def _cleanup(self, tasks: list[asyncio.Task[None]], outcome: str) -> None:
        self.machine.handle(m.Close())
        if self._end_task is not None:
            # A hang-up or transfer request in flight is let finish (the carrier may already
            # have acted on it), within a bound.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CARRIER_SEND_TIMEOUT_S):
                    await asyncio.shield(self._end_task)
        if outcome == "completed" and self._outcome is not None:
            outcome = self._outcome
        await self._finish_recording()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.session is not None:
            with contextlib.suppress(Exception):
                await self.session.close()
        if self.start is not None:
            self.admissions.release(self.start.call_sid)
            if self.registry.get(self.start.call_sid) is self:
                del self.registry[self.start.call_sid]
                self.metrics.active_calls.dec()
        if self.ws.application_state is WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                reason = self._end_reason.encode()[:120].decode(errors="ignore")
                async with asyncio.timeout(CLOSE_TIMEOUT_S):  # a carrier that stopped reading
                    await self.ws.close(code=int(self._close_code), reason=reason)
        self.metrics.calls.labels(outcome).inc()
        self.stats.outcome, self.stats.end_reason = outcome, self._end_reason
        self.trace.end(outcome, self._end_reason, error=outcome not in _GOOD_OUTCOMES)
        if self.recent is not None and self.start is not None:
            self.recent.append(self.summary())
        if self.services.save_record is not None and self.start is not None:
            self.services.save_record(self.record())
        self.log.info(
            "call ended (%s): %s; %d barge-ins, %d responses",
            outcome,
            self._end_reason,
            self.stats.barge_ins,
            self.stats.turns,
        )


# Recorded audio is handed to the writer this often (caller frames): bounded memory, few hops.
RECORDING_TAKE_EVERY = 25


@dataclass
class _Recording:
    """A call's recording: the pure timeline, its file writer, and the stream's time origin.

    The origin is set at the first caller frame so that media timestamps (ms since the stream
    started, the carrier's clock) and the gateway's send times land on one axis.
    """

    timeline: RecordingTimeline
    writer: RecordingWriter
    t0: float | None = None
    frames: int = 0
    failed: bool = False

    @property
    def started(self) -> bool:
        return self.t0 is not None

    def at_ms(self, now: float) -> float:
        return 0.0 if self.t0 is None else max(0.0, (now - self.t0) * 1000)

    def on_caller(self, ulaw: bytes, timestamp_ms: int, now: float) -> None:
        if self.t0 is None:
            self.t0 = now - timestamp_ms / 1000
        self.timeline.caller(ulaw, timestamp_ms)
        self.frames += 1
        if self.frames % RECORDING_TAKE_EVERY == 0:
            self.writer.write(self.timeline.take())

    def on_assistant(self, ulaw: bytes, now: float) -> None:
        # At its send time, or right after the previous chunk: the carrier plays audio back to
        # back and starves when it comes late, so a late chunk leaves a gap, as heard.
        self.timeline.assistant(ulaw, self.at_ms(now))

    def on_clear(self, now: float) -> None:
        self.timeline.cleared(self.at_ms(now))


class _RotateSession(Exception):
    """The session reached ``session_max_age_s`` between turns: replace it."""


def backoff_s(attempt: int, rng: random.Random) -> float:
    """Delay before setup attempt ``attempt + 1``: "full jitter" exponential backoff.

    Uniform in ``[0, min(cap, base * 2**(attempt-1))]`` so that many calls refused at the same
    moment (an upstream 429 burst) do not retry in lockstep.
    """
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    return rng.uniform(0.0, ceiling)


def _setup_error_code(exc: UpstreamError) -> str:
    if isinstance(exc, UpstreamRefused):
        return f"http_{exc.status}"
    return exc.code or type(exc).__name__


_SPEAKING_STATES = frozenset({m.State.RESPONDING, m.State.SPEAKING})
_GOOD_OUTCOMES = frozenset({"completed", "transferred"})
# Caller audio kept before the first voiced frame of the setup buffer (the VAD's prefix padding).
SETUP_PREFIX_FRAMES = 15


def _without_leading_silence(
    frames: deque[tuple[npt.NDArray[np.int16], float]],
) -> list[tuple[npt.NDArray[np.int16], float]]:
    """The setup buffer from shortly before the caller first spoke (all of it if they did).

    Silence buffered while the session opened carries nothing, but replaying it would make
    every later frame wait behind it; speech is kept whole, with a short lead-in.
    """
    items = list(frames)
    first_voiced = next((i for i, (f, _) in enumerate(items) if not _is_silent(f)), len(items))
    return items[max(0, first_voiced - SETUP_PREFIX_FRAMES) :] if first_voiced < len(items) else []


_KEY_NAMES = {"#": "pound (#)", "*": "star (*)"}


def keypad_text(entry: str) -> str:
    """How a keypad entry reads to the model: ``"4711#"`` → the keys one by one, named."""
    keys = ", ".join(_KEY_NAMES.get(k, k) for k in entry)
    return f"[The caller pressed on the phone keypad: {keys}]"


def _is_silent(frame: npt.NDArray[np.int16]) -> bool:
    return frame.size == 0 or int(np.abs(frame).max()) < SILENCE_PEAK


def _outcome_for(exc: GatewayError) -> str:
    if isinstance(exc, Forbidden):
        return "forbidden"
    if isinstance(exc, CarrierError):
        return "carrier_error"
    if isinstance(exc, UpstreamError):
        return "upstream_error"
    return "error"


__all__ = ["CallRunner", "CallStats", "UpstreamFactory", "UpstreamSession"]
