"""The call's sans-I/O core: every decision of one call, none of its I/O.

Like websockets' ``Protocol``: inputs go in as method calls, each with the time ``now`` (the
call's monotonic clock, passed in — nothing here reads a clock), and each returns the
:data:`Effect` list the runner (:mod:`gateway.bridge.call`) must execute, in order. No await,
no sockets, no aiortc, no starlette.

Inputs::

    carrier_message(msg, now)        a parsed carrier message (connected/start/media/mark/dtmf/stop)
    carrier_error(exc, now)          a carrier frame the codec refused
    bound(config, start, ..., now)   the runner bound the stream to its admitted call
    session_ready(call_id, now)      an upstream session opened
    setup_failed(exc, now)           opening one failed (refused, timed out)
    upstream_event(ev, now)          a server event
    model_audio(frame, at, now)      a decoded model audio frame
    session_lost(exc, now)           the session failed mid-call; session_closed(now): it ended
    carrier_action_done(a, err, now) a hang-up / transfer request through the carrier's API ended
    tick(now)                        time passes (DTMF, wrap-up and maximum-duration deadlines)
    shutdown(reason, now) / carrier_gone(now) / failed(exc, now) / close(now)

Effects: :class:`ToCarrier`, :class:`ToUpstream`, :class:`PushAudio`, :class:`Bind`,
:class:`RetrySetup`, :class:`ReplaceSession`, :class:`CarrierAction`, :class:`WriteRecording`,
:class:`EndCall`.

Its parts stay pure and separate: the :class:`~gateway.bridge.machine.TurnMachine` (turns and
the one barge-in policy), :class:`~gateway.bridge.control.CallControl` (tools, budget,
wrap-up), the :class:`~gateway.telephony.ledger.MarkLedger` (what the caller heard), the
transcoder, the DTMF collector, the recording timeline. The core owns what sits between them:
the call's lifecycle (:data:`LIFECYCLE`, one table in the style of h11's ``_state.py``), and
"playback finished" — the only place that decides the carrier has played the assistant out.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from gateway.audio.format import CARRIER_FRAME_SAMPLES, MODEL_RATE, LegFrame, UpstreamCodec
from gateway.audio.g711 import g711_peak, ulaw_to_array
from gateway.audio.recording import RecordingTimeline
from gateway.audio.transcoder import CallTranscoder
from gateway.audio.vad import LocalVad, VadEvent
from gateway.bridge import answering as ans
from gateway.bridge import control as cc
from gateway.bridge import machine as m
from gateway.bridge.stats import CallStats
from gateway.errors import (
    CarrierApiError,
    CarrierError,
    CarrierProtocolError,
    CloseCode,
    Forbidden,
    GatewayError,
    InternalError,
    StartTimeout,
    UpstreamError,
    UpstreamRefused,
    close_code_for,
)
from gateway.numbers import TransferTarget
from gateway.observability import CallLogger, Metrics, mask_number
from gateway.realtime import events as rt
from gateway.records.model import CallRecord
from gateway.records.pricing import PriceTable, Usage
from gateway.telephony import messages as tm
from gateway.telephony.dtmf import DtmfCollector
from gateway.telephony.ledger import MarkLedger
from gateway.tracing import CallTrace

__all__ = [
    "LIFECYCLE",
    "Bind",
    "CallConfig",
    "CallCore",
    "CarrierAction",
    "Effect",
    "EndCall",
    "Phase",
    "PushAudio",
    "ReplaceSession",
    "RetrySetup",
    "ToCarrier",
    "ToUpstream",
    "WriteRecording",
    "backoff_s",
    "keypad_text",
]

# One mark per 100 ms of audio: enough to know what was heard, a fifth of the message rate.
MARK_EVERY_MS: Final = 100
# A frame whose peak is below this is silence: not worth forwarding while nobody speaks.
SILENCE_PEAK: Final = 8
# A caller frame whose peak reaches this (about -40 dBFS) is speech for answer_ms: the end of the
# caller's words as a listener hears it, not the faint tail of their last syllable.
SPEECH_PEAK: Final = 300
# Setup retries: at most this many sessions per call, spaced by jittered exponential backoff.
MAX_SETUP_ATTEMPTS: Final = 3
BACKOFF_BASE_S: Final = 0.25
BACKOFF_CAP_S: Final = 2.0
# A lost upstream is replaced this many times per call, carrying at most this many transcript
# lines over; beyond that the call ends and the TwiML fallback plays.
MAX_RECONNECTS: Final = 1
RESTORE_MAX_LINES: Final = 40
# After this many consecutive unusable carrier frames the stream is beyond saving.
MAX_CONSECUTIVE_CARRIER_ERRORS: Final = 50
HARD_STOP_GRACE_S: Final = 5.0
"""After the maximum duration's wrap-up deadline, the stream is closed this much later at most."""
# Caller audio kept before the first voiced frame of the setup buffer (the VAD's prefix padding).
SETUP_PREFIX_FRAMES: Final = 15
# Recorded audio is handed to the writer this often (caller frames): bounded memory, few hops.
RECORDING_TAKE_EVERY: Final = 25
# A recording never runs ahead of the call's real duration by more than this (carrier jitter).
RECORDING_AHEAD_MAX_MS: Final = 2000.0
GOOD_OUTCOMES: Final = frozenset({"completed", "transferred"})
VOICEMAIL_LEFT: Final = "voicemail left"
"""The end reason (and hang-up action reason) of an outbound call that left its message."""


# --- effects --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToCarrier:
    """Encode ``msg`` with the stream's codec and write it to the carrier, in order."""

    msg: tm.OutboundMessage


@dataclass(frozen=True, slots=True)
class ToUpstream:
    """Send a client event on the current session."""

    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PushAudio:
    """Hand one frame of caller audio to the current session: 24 kHz PCM on an Opus leg, the
    leg's G.711 bytes on a G.711 leg."""

    frame: LegFrame
    received_at: float


@dataclass(frozen=True, slots=True)
class Bind:
    """The stream named its call: check the binding (token, admission), then call
    :meth:`CallCore.bound` with the profile's :class:`CallConfig`."""

    start: tm.Start


@dataclass(frozen=True, slots=True)
class RetrySetup:
    """Close the failed session, wait ``delay_s``, and open a fresh one."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class ReplaceSession:
    """Stop reading the current session, close it, and open a fresh one (``rotating``: it is
    healthy and old; otherwise it was lost)."""

    rotating: bool


@dataclass(frozen=True, slots=True)
class CarrierAction:
    """Hang up or transfer through the carrier's API, then report with
    :meth:`CallCore.carrier_action_done`."""

    action: cc.HangUp | cc.Transfer


@dataclass(frozen=True, slots=True)
class WriteRecording:
    """Hand final stereo samples to the call's recording writer."""

    samples: npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class EndCall:
    """The call is over: stop every task and clean up (:attr:`CallCore.end` says why)."""


Effect = (
    ToCarrier
    | ToUpstream
    | PushAudio
    | Bind
    | RetrySetup
    | ReplaceSession
    | CarrierAction
    | WriteRecording
    | EndCall
)
_NONE: Final[list[Effect]] = []  # never mutated: returned when an input does nothing


# --- lifecycle ------------------------------------------------------------------------------


class Phase(Enum):
    """Where the call is. ``LIVE`` is the only phase in which audio reaches the model."""

    AWAITING_START = "awaiting_start"  # the websocket is open; no `start` yet
    BINDING = "binding"  # `start` read; the runner checks its token and admission
    SETTING_UP = "setting_up"  # bound to a call; the first upstream session is opening
    LIVE = "live"  # the conversation runs
    REPLACING = "replacing"  # the session was lost or is rotated; a fresh one is opening
    ENDING = "ending"  # an end is decided; the runner is cleaning up
    ENDED = "ended"


P = Phase
LIFECYCLE: Final[dict[Phase, frozenset[Phase]]] = {
    P.AWAITING_START: frozenset({P.BINDING, P.ENDING}),
    P.BINDING: frozenset({P.SETTING_UP, P.ENDING}),
    P.SETTING_UP: frozenset({P.LIVE, P.ENDING}),
    P.LIVE: frozenset({P.REPLACING, P.ENDING}),
    P.REPLACING: frozenset({P.LIVE, P.ENDING}),
    P.ENDING: frozenset({P.ENDED}),
    P.ENDED: frozenset(),
}
"""Every legal move of a call's lifecycle. A move not listed is our own bug
(:class:`~gateway.errors.InternalError`): the carrier's and the upstream's misbehaviour is
refused before it reaches the table, as a :class:`~gateway.errors.CarrierError` or an
:class:`~gateway.errors.UpstreamError` that ends the call."""


class CallEnd(NamedTuple):
    """How the call ended: the record's outcome, the operator's reason, the close code."""

    outcome: str
    reason: str
    close_code: CloseCode


@dataclass(frozen=True, slots=True)
class CallConfig:
    """The values one call runs with, mapped from its profile and the process settings."""

    profile: str = "default"
    model: str = ""
    greeting: str | None = None
    truncate_to_heard: bool = False
    local_barge_in: bool = False
    dtmf_timeout_ms: int = 1500
    end_call_tool: bool = False
    transfer_targets: Mapping[str, TransferTarget] = field(default_factory=dict)
    max_cost_usd: float | None = None
    max_call_seconds: float = 3600.0
    setup_timeout_s: float = 10.0
    setup_buffer_frames: int = 100
    session_max_age_s: float = 3300.0
    record: bool = False
    """Keep a recording timeline; the runner owns the file writer."""
    upstream_codec: UpstreamCodec = "opus"
    """The Realtime leg's codec: ``pcmu``/``pcma`` carry G.711 bytes through, no resampling."""


def backoff_s(attempt: int, rng: random.Random) -> float:
    """Delay before setup attempt ``attempt + 1``: "full jitter" exponential backoff.

    Uniform in ``[0, min(cap, base * 2**(attempt-1))]`` so that many calls refused at the same
    moment (an upstream 429 burst) do not retry in lockstep.
    """
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    return rng.uniform(0.0, ceiling)


_KEY_NAMES: Final = {"#": "pound (#)", "*": "star (*)"}


def keypad_text(entry: str) -> str:
    """How a keypad entry reads to the model: ``"4711#"`` → the keys one by one, named."""
    keys = ", ".join(_KEY_NAMES.get(k, k) for k in entry)
    return f"[The caller pressed on the phone keypad: {keys}]"


class CallCore:
    """One call's decisions. Create it when the websocket is accepted; feed it every input
    with the call's clock; execute the returned effects in order, one batch after another.

    ``metrics``, ``log`` and ``trace`` are synchronous observers (counters, log lines, spans);
    they are the only side effects the core performs itself.
    """

    def __init__(
        self,
        *,
        metrics: Metrics,
        log: CallLogger,
        now: float,
        wall_now: float,
        prices: PriceTable | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.metrics = metrics
        self._outbound_latency = metrics.added_latency.labels("outbound")  # hot: once per frame
        self.log = log
        self.trace = CallTrace()
        self.prices = prices or PriceTable.default()
        self.rng = rng or random.Random()
        self.phase = Phase.AWAITING_START
        self.config = CallConfig()
        self.stats = CallStats(started_at=now)
        self.started_wall = wall_now
        self.start: tm.Start | None = None
        self.called: str | None = None
        self.caller: str | None = None
        self.upstream_call_id: str | None = None
        self.end: CallEnd | None = None
        self.usage = Usage()
        self.cost_usd: float | None = 0.0
        self.transcoder = CallTranscoder()
        self.ledger = MarkLedger(mark_every_ms=MARK_EVERY_MS)
        self.machine = m.TurnMachine()
        self.control = cc.CallControl()
        self.dtmf = DtmfCollector()
        self.vad: LocalVad | None = None
        self.recording: RecordingTimeline | None = None
        self._rec_t0: float | None = None
        self._rec_frames = 0
        self.recording_failed = False
        self._setup_buffer: deque[tuple[LegFrame, float]] = deque(maxlen=1)
        self._setup_t0 = now
        self._setup_deadline = now
        self._attempt = 0
        self._session_opened_at = now
        self._max_duration_at: float | None = None
        self._hard_stop_at: float | None = None
        self._consecutive_errors = 0
        self._dtmf_backlog: list[str] = []
        self._keypad_response: str | None = None  # "requested" until created, then its id
        self._keypad_waiting = 0  # entries given to the model since that response was asked
        self._speech_at: float | None = None
        self._speech_stopped_at: float | None = None
        self._caller_voiced_at: float | None = None
        self._caller_stopped_at: float | None = None
        self._end_requested = False  # a hang-up/transfer/hard stop was decided: keep its reason
        self._pending_end_reason = "call control"
        self._transferred = False
        self._voicemail: str | None = None  # an outbound call's message, said once then hang up
        self.answer: ans.Decision | None = None  # an outbound call's: who answered, what then
        self._answer_delay_ms: float | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def _goto(self, phase: Phase) -> None:
        if phase not in LIFECYCLE[self.phase]:
            raise InternalError(f"call lifecycle: {self.phase.value} -> {phase.value} is illegal")
        self.phase = phase

    @property
    def ready(self) -> bool:
        """A session is open and takes caller audio."""
        return self.phase is Phase.LIVE

    def _end(self, outcome: str, reason: str, code: CloseCode) -> list[Effect]:
        """Decide the end once; later causes (the socket closing because we closed it) do not
        overwrite the first."""
        if self.end is None:
            self.end = CallEnd(outcome, reason, code)
        if self.phase not in (Phase.ENDING, Phase.ENDED):
            self._goto(Phase.ENDING)
        return [EndCall()]

    # --- carrier --------------------------------------------------------------------------------

    def carrier_message(self, msg: tm.InboundMessage | tm.Ignored, now: float) -> list[Effect]:
        """One parsed carrier message."""
        if isinstance(msg, tm.Media):
            out = self._on_media(msg, now) if self.phase is not Phase.AWAITING_START else None
            if out is None:
                return self._unexpected(msg, now)
        elif self.phase in (Phase.AWAITING_START, Phase.BINDING):
            return self._handshake(msg, now)
        elif isinstance(msg, tm.Mark):
            self.ledger.on_mark(msg.name)
            out = self._playback_check(now) if self.ledger.buffered_ms <= 0 else []
        elif isinstance(msg, tm.Stop):
            return self._end_completed("carrier sent stop")
        elif isinstance(msg, tm.Dtmf):
            out = self._on_dtmf(msg.digit, now)
        elif isinstance(msg, tm.Ignored):
            self.metrics.carrier_rejects.labels("ignored").inc()
            out = []
        else:  # a second connected/start
            return self.carrier_error(CarrierProtocolError("duplicate connected/start"), now)
        self._consecutive_errors = 0
        return out + self.tick(now) if self._deadline_due(now) else out

    def _handshake(self, msg: tm.InboundMessage | tm.Ignored, now: float) -> list[Effect]:
        if self.phase is Phase.BINDING:
            return self._unexpected(msg, now)
        if isinstance(msg, tm.Connected | tm.Ignored):
            return _NONE
        if not isinstance(msg, tm.Start):
            return self._unexpected(msg, now)
        self.start = msg
        self._goto(Phase.BINDING)
        return [Bind(msg)]

    def _unexpected(self, msg: object, now: float) -> list[Effect]:
        return self.failed(CarrierProtocolError(f"expected 'start', got {type(msg).__name__}"), now)

    def start_timed_out(self, timeout_s: float, now: float) -> list[Effect]:
        """No ``start`` within ``timeout_s`` of the upgrade: the remote side's fault."""
        return self.failed(StartTimeout(f"the stream sent no 'start' within {timeout_s:g} s"), now)

    def carrier_error(self, exc: CarrierError, now: float) -> list[Effect]:
        """A frame the codec refused: counted; the call ends only when the stream is hopeless."""
        if isinstance(exc, Forbidden):
            return self.failed(exc, now)
        self.stats.carrier_errors += 1
        self._consecutive_errors += 1
        self.metrics.carrier_rejects.labels(type(exc).__name__).inc()
        if self.stats.carrier_errors <= 5:
            self.log.warning("carrier message rejected: %s", exc)
        if self._consecutive_errors >= MAX_CONSECUTIVE_CARRIER_ERRORS:
            return self.failed(exc, now)
        return _NONE

    def bound(
        self,
        config: CallConfig,
        *,
        called: str | None,
        caller: str | None,
        log: CallLogger,
        trace: CallTrace,
        now: float,
    ) -> list[Effect]:
        """The stream is bound to its admitted call: configure the parts for its profile.

        The runner then opens the first session and reports with :meth:`session_ready` or
        :meth:`setup_failed`.
        """
        self._goto(Phase.SETTING_UP)
        self.config, self.called, self.caller, self.log, self.trace = (
            config,
            called,
            caller,
            log,
            trace,
        )
        self.machine = m.TurnMachine(truncate_to_heard=config.truncate_to_heard)
        self.dtmf = DtmfCollector(inter_digit_timeout_ms=config.dtmf_timeout_ms)
        self.control = cc.CallControl(
            end_call=config.end_call_tool, transfer=dict(config.transfer_targets)
        )
        # 100 ms onset: shorter onsets fire on line noise and would cut greetings off.
        self.vad = LocalVad(onset_ms=100) if config.local_barge_in else None
        self.recording = RecordingTimeline() if config.record else None
        self._setup_buffer = deque(maxlen=max(1, config.setup_buffer_frames))
        self._begin_setup(now)
        self.log.info("stream started (profile %s)", config.profile)
        return _NONE

    def _on_media(self, msg: tm.Media, now: float) -> list[Effect]:
        self.stats.frames_in += 1
        pcm8k = ulaw_to_array(msg.payload)  # the one μ-law decode of this caller frame
        out: list[Effect] = []
        if self.recording is not None:
            self._record_caller(msg.payload, msg.timestamp_ms, now)
            if (samples := self._recording_due()) is not None:
                out.append(WriteRecording(samples))
        voiced = pcm8k.size > 0 and int(np.abs(pcm8k).max()) >= SPEECH_PEAK
        if voiced:
            self._caller_voiced_at = now
        if self.vad is not None and self.ready and pcm8k.size == CARRIER_FRAME_SAMPLES:
            if self.vad.process(pcm8k.tobytes()) is VadEvent.SPEECH_STARTED:
                out += self._speech(m.SpeechStarted("local"), now)
        codec = self.config.upstream_codec
        frames: Sequence[LegFrame] = (
            self.transcoder.from_caller_pcm(pcm8k)
            if codec == "opus"
            else self.transcoder.from_caller_g711(msg.payload, codec)
        )
        if self.ready:
            for frame in frames:
                out.append(PushAudio(frame, now))
            return out
        for frame in frames:
            if len(self._setup_buffer) == self._setup_buffer.maxlen:
                self.stats.dropped_setup_frames += 1
                self.metrics.dropped_frames.labels("inbound", "setup_buffer_full").inc()
            self._setup_buffer.append((frame, now))
        return out

    # --- keypad ---------------------------------------------------------------------------------

    def _on_dtmf(self, digit: str, now: float) -> list[Effect]:
        try:
            entry = self.dtmf.press(digit, now)
        except ValueError as exc:
            return self.carrier_error(CarrierProtocolError(str(exc)), now)
        self.stats.dtmf += digit
        return self._keypad_entry(entry, now) if entry is not None else []

    def _keypad_entry(self, entry: str, now: float) -> list[Effect]:
        """Hand one keypad entry to the model as a caller message, and let it answer.

        Typing over the assistant interrupts it, as speech does (IVR callers press keys
        without waiting for the menu to end). Entries typed while the answer to an earlier
        one is still being produced join that answer: each entry costs an item, never a
        response of its own, so a caller hammering a key cannot multiply the call's cost.
        """
        if not self.ready:
            self._dtmf_backlog.append(entry)
            return []
        self.log.info("caller typed %d key(s) on the keypad", len(entry))
        item = ToUpstream(rt.conversation_item_create_user_text(keypad_text(entry)))
        if self._keypad_response is not None:
            self.stats.keypad_coalesced += 1
            self._keypad_waiting += 1
            return [item]
        out = self._speech(m.SpeechStarted("dtmf"), now)
        self._keypad_response = "requested"
        self._keypad_waiting = 0
        return [*out, item, ToUpstream(rt.response_create())]

    def _keypad_response_event(self, ev: rt.ServerEvent) -> list[Effect]:
        """Follow the response a keypad entry asked for; when it is over, one more answers
        every entry typed meanwhile."""
        if self._keypad_response is None or ev.response_id is None:
            return []
        if ev.type == "response.created" and self._keypad_response == "requested":
            self._keypad_response = ev.response_id
        elif ev.type == "response.done" and ev.response_id == self._keypad_response:
            waiting, self._keypad_waiting = self._keypad_waiting, 0
            if not waiting:
                self._keypad_response = None
                return []
            self._keypad_response = "requested"
            return [ToUpstream(rt.response_create())]
        return []

    # --- time -----------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`tick` has something to do, or None."""
        times = [
            t
            for t in (
                self.dtmf.deadline,
                self.control.deadline,
                self._max_duration_at,
                self._hard_stop_at,
            )
            if t is not None
        ]
        return min(times) if times else None

    def _deadline_due(self, now: float) -> bool:
        deadline = self.next_deadline()
        return deadline is not None and now >= deadline

    def tick(self, now: float) -> list[Effect]:
        """Fire whatever deadline has passed."""
        out: list[Effect] = []
        if self._hard_stop_at is not None and now >= self._hard_stop_at:
            self._end_requested = True
            return self._end("completed", self._hard_stop_reason(), CloseCode.NORMAL)
        if self._max_duration_at is not None and now >= self._max_duration_at:
            self._max_duration_at = None
            self._hard_stop_at = now + self.control.wrap_up_s + HARD_STOP_GRACE_S
            out += self._control(
                cc.WrapUp(
                    self._hard_stop_reason(),
                    "The call has reached its time limit. Tell the caller so in one short "
                    "sentence and say goodbye.",
                ),
                now,
            )
        if self.control.deadline is not None and now >= self.control.deadline:
            out += self._control(cc.Tick(), now)
        if self.dtmf.deadline is not None and now >= self.dtmf.deadline:
            while (entry := self.dtmf.due(now)) is not None:
                out += self._keypad_entry(entry, now)
        return out

    def _hard_stop_reason(self) -> str:
        return f"maximum call duration ({self.config.max_call_seconds:g} s) reached"

    # --- session setup --------------------------------------------------------------------------

    def _begin_setup(self, now: float) -> None:
        self._attempt = 0
        self._setup_t0 = now
        self._setup_deadline = now + self.config.setup_timeout_s

    @property
    def setup_deadline(self) -> float:
        """When the session being opened must be ready; past it the runner reports
        :meth:`setup_failed` with an :class:`~gateway.errors.UpstreamTimeout`."""
        return self._setup_deadline

    def session_opening(self) -> None:
        """The runner starts one more attempt."""
        self._attempt += 1
        self.stats.setup_attempts = self._attempt

    def session_phases(
        self,
        spans: tuple[tuple[str, float, float], ...],
        call_id: str | None,
        error: UpstreamError | None,
    ) -> None:
        """What one attempt's setup phases took (for the trace), whatever its result."""
        code = None if error is None else setup_error_code(error)
        self.trace.setup_phases(spans, upstream_call_id=call_id, error=code)
        if call_id:
            self.log = self.log.bind(upstream_call_id=call_id)

    def setup_failed(self, exc: UpstreamError, now: float) -> list[Effect]:
        """One attempt failed. A refusal worth retrying (429, 5xx) or a timed-out phase is
        retried after a jittered backoff while the attempt can still finish in time; past that
        the caller would sit in silence, so the call ends and the TwiML fallback plays."""
        self.metrics.upstream_errors.labels(setup_error_code(exc)).inc()
        retryable = exc.retryable
        delay = backoff_s(self._attempt, self.rng)
        if (
            not retryable
            or self._attempt >= MAX_SETUP_ATTEMPTS
            or now + delay >= self._setup_deadline
        ):
            return self.failed(exc, now)
        self.log.warning(
            "upstream setup attempt %d failed (%s); retrying in %.0f ms",
            self._attempt,
            exc,
            delay * 1000,
        )
        return [RetrySetup(delay)]

    def session_ready(self, call_id: str | None, now: float) -> list[Effect]:
        """A session is open: replay the caller audio buffered meanwhile, greet (first session)
        or restore the conversation (a replacement), deliver keypad entries typed meanwhile."""
        resume = self.phase is Phase.REPLACING
        self._goto(Phase.LIVE)
        self.upstream_call_id = call_id
        ready_ms = (now - self._setup_t0) * 1000
        if not resume:
            self.stats.setup_ms = ready_ms
            self.metrics.setup_seconds.observe(ready_ms / 1000)
            self._max_duration_at = now + self.config.max_call_seconds
        self.log.info("upstream ready in %.0f ms (call id %s)", ready_ms, call_id)
        self._session_opened_at = now
        out: list[Effect] = self._restore_conversation() if resume else []
        out += [
            PushAudio(f, at)
            for f, at in _without_leading_silence(self._setup_buffer, self.config.upstream_codec)
        ]
        self._setup_buffer.clear()
        if self._voicemail is not None and not resume:
            out += self._control(cc.WrapUp(VOICEMAIL_LEFT, _voicemail_text(self._voicemail)), now)
        elif self.config.greeting and not resume:
            out.append(ToUpstream(rt.response_create(instructions=self.config.greeting)))
        backlog, self._dtmf_backlog = self._dtmf_backlog, []
        for entry in backlog:
            out += self._keypad_entry(entry, now)
        return out

    def _restore_conversation(self) -> list[Effect]:
        """Replay the transcript into a fresh session as items, then ask it not to greet."""
        out: list[Effect] = []
        for line in self.stats.transcript[-RESTORE_MAX_LINES:]:
            if line["speaker"] == "caller":
                out.append(ToUpstream(rt.conversation_item_create_user_text(line["text"])))
            else:
                item = {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": line["text"]}],
                }
                out.append(ToUpstream(rt.conversation_item_create(item)))
        out.append(
            ToUpstream(
                rt.conversation_item_create_system_text(
                    "The phone call continues after a short technical interruption on our side. "
                    "Do not greet the caller again; carry on from where the conversation was."
                )
            )
        )
        return out

    def session_lost(self, exc: UpstreamError, now: float) -> list[Effect]:
        """The session failed mid-call (data channel or peer closed, ``server_error``,
        ``session_expired``). It is replaced once by a fresh one that carries the conversation
        so far, so the caller hears a short pause instead of the fallback; a second loss ends
        the call."""
        if self.phase is not Phase.LIVE:
            return self.failed(exc, now)
        if self.stats.reconnects >= MAX_RECONNECTS:
            return self.failed(exc, now)
        self.stats.reconnects += 1
        self.metrics.upstream_errors.labels("reconnect").inc()
        self.log.warning("upstream lost (%s): reconnecting with a fresh session", exc)
        self.trace.event("reconnect", at=now, reason=str(exc))
        return self._replace(now, rotating=False)

    def answer_decided(
        self, decision: ans.Decision, delay_ms: float | None, now: float
    ) -> list[Effect]:
        """An outbound call learned who answered (:mod:`gateway.bridge.answering`); the runner
        holds the first session until then, and opens it now unless the call ends here.

        A human gets the conversation (the greeting only if the profile speaks first; the
        callee's buffered "hello" is replayed either way). A machine's greeting is not replayed:
        the assistant would answer it. The setup deadline starts again: it measures the
        session, not the wait for the verdict.
        """
        kind = decision.kind
        self.answer, self._answer_delay_ms = decision, delay_ms
        self.stats.actions.append(
            {
                "kind": "answered_by",
                "answered_by": decision.answered_by,
                "decision": kind,
                "delay_ms": delay_ms,
                "at_ms": round((now - self.stats.started_at) * 1000),
            }
        )
        self.trace.event("answered_by", at=now, value=decision.answered_by, decision=kind)
        self.log.info("answered by %s: %s", decision.answered_by, kind)
        if isinstance(decision, ans.HangUp):
            self._setup_buffer.clear()
            reason = f"answered by {decision.answered_by}: hung up"
            return self._end(decision.outcome, reason, CloseCode.NORMAL)
        if isinstance(decision, ans.LeaveVoicemail):
            self._setup_buffer.clear()
            self._voicemail = decision.message
        elif not decision.speak_first:
            self.config = replace(self.config, greeting=None)
        self._begin_setup(now)
        return _NONE

    def session_closed(self, now: float) -> list[Effect]:
        """The session's events ended without an error (it was closed under us)."""
        return self._end_completed(None)

    def _replace(self, now: float, *, rotating: bool) -> list[Effect]:
        """Caller audio goes to the setup buffer until the fresh session is ready. A lost
        session's audio stops: the carrier drops what it holds. A rotated one has finished
        speaking: what the carrier still buffers is left to play."""
        self._goto(Phase.REPLACING)
        out: list[Effect] = []
        if self.machine.assistant_audible and not rotating:
            out += self._clear_carrier(now)
        self.transcoder.reset_to_caller()
        self.machine = m.TurnMachine(truncate_to_heard=self.config.truncate_to_heard)
        self._keypad_response, self._keypad_waiting = None, 0
        self._begin_setup(now)
        out.append(ReplaceSession(rotating))
        return out

    # --- upstream events ------------------------------------------------------------------------

    def upstream_event(self, ev: rt.ServerEvent, now: float) -> list[Effect]:
        """One server event of the current session."""
        if self.phase is not Phase.LIVE:
            return _NONE  # a replaced session's last words
        kind = ev.type
        if kind == "input_audio_buffer.speech_started":
            return self._speech(m.SpeechStarted("server"), now)
        if kind == "input_audio_buffer.speech_stopped":
            self._speech_stopped_at = now
            self._caller_stopped_at = self._caller_voiced_at
            return _NONE
        if kind == "response.created" and ev.response_id:
            self.trace.turn_started(ev.response_id, now)
            out = self._control(cc.ResponseStarted(ev.response_id), now)
            out += self._keypad_response_event(ev)
            return out + self._turn(m.ResponseCreated(ev.response_id), now)
        if kind == "response.output_item.done" and ev.item_type == "function_call":
            if ev.response_id and ev.call_id and ev.name:
                tool = cc.ToolCalled(ev.response_id, ev.call_id, ev.name, ev.arguments or "")
                return self._control(tool, now)
            return _NONE
        if kind == "response.output_item.added" and ev.response_id and ev.item_id:
            if ev.item_role == "assistant":
                return self._turn(m.AssistantItem(ev.response_id, ev.item_id), now)
            return _NONE
        if kind == "output_audio_buffer.started":
            return self._turn(m.AudioStarted(ev.response_id), now)
        if kind == "output_audio_buffer.stopped":
            out = self._audio_stopped(ev.response_id, now)
            if now - self._session_opened_at >= self.config.session_max_age_s:
                # Between turns: the answer has been sent in full.
                self.stats.rotations += 1
                self.metrics.upstream_errors.labels("rotation").inc()
                self.log.info(
                    "upstream session is %.0f s old: rotating", now - self._session_opened_at
                )
                out += self._replace(now, rotating=True)
            return out
        if kind == "output_audio_buffer.cleared":
            return self._turn(m.AudioCleared(ev.response_id), now)
        if kind == "response.done" and ev.response_id:
            self.stats.turns += 1
            out = self._on_usage(ev.usage, now)
            self.trace.turn_done(ev.response_id, ev.status or "completed", ev.usage, now)
            out += self._control(cc.ResponseFinished(ev.response_id), now)
            out += self._keypad_response_event(ev)
            return out + self._turn(m.ResponseDone(ev.response_id, ev.status or "completed"), now)
        if kind == "response.output_audio_transcript.done" and ev.transcript:
            self._transcribed("assistant", ev.transcript, now)
        elif kind == "conversation.item.input_audio_transcription.completed" and ev.transcript:
            self._transcribed("caller", ev.transcript, now)
        elif kind == "error":
            return self._on_upstream_error(ev, now)
        return _NONE

    def _on_usage(self, raw: dict[str, Any] | None, now: float) -> list[Effect]:
        """Add one response's usage; past the profile's budget, ask for a polite wrap-up."""
        if raw is None:
            return []
        usage = Usage.from_realtime(raw)
        self.usage += usage
        for kind, n in usage.as_dict().items():
            if n:
                self.metrics.upstream_tokens.labels(kind).inc(n)
        added = self.prices.cost_usd(self.config.model, usage)
        if added is None:
            self.cost_usd = None  # no price for the profile's model: never a guess
        elif self.cost_usd is not None:
            self.cost_usd += added
            self.metrics.upstream_cost.inc(added)
        budget = self.config.max_cost_usd
        if budget is None or self.cost_usd is None or self.cost_usd < budget:
            return []
        reason = f"cost budget reached (${self.cost_usd:.4f} of ${budget:.4f})"
        return self._control(
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

    def _on_upstream_error(self, ev: rt.ServerEvent, now: float) -> list[Effect]:
        code = ev.error_code or "unknown"
        self.stats.upstream_errors[code] = self.stats.upstream_errors.get(code, 0) + 1
        self.metrics.upstream_errors.labels(code).inc()
        if code in rt.RECOVERABLE_ERROR_CODES:
            self.log.debug("upstream error %s (recoverable)", code)
            return _NONE
        self.log.warning("upstream error %s: %s", code, (ev.error or {}).get("message"))
        if code in rt.FATAL_ERROR_CODES or (ev.error or {}).get("type") == "server_error":
            return self.session_lost(
                UpstreamError(f"Realtime session failed: {code}", code=code), now
            )
        return _NONE

    # --- turns and barge-in ---------------------------------------------------------------------

    def _speech(self, event: m.SpeechStarted, now: float) -> list[Effect]:
        """The one entry for caller speech, whoever detected it; the machine's policy decides."""
        if not self.machine.interrupts(event.source):
            return []
        self._speech_at = now
        return self._turn(event, now)

    def _turn(self, event: m.Input, now: float) -> list[Effect]:
        """Feed the turn machine; translate its actions; let a wrap-up see a quiet line."""
        out: list[Effect] = []
        for action in self.machine.handle(event):
            if isinstance(action, m.ClearCarrier):
                out += self._clear_carrier(now)
            elif isinstance(action, m.DropOutboundAudio):
                self.transcoder.reset_to_caller()
            elif isinstance(action, m.CancelResponse):
                out.append(ToUpstream(rt.response_cancel(action.response_id)))
            elif isinstance(action, m.ClearUpstreamAudio):
                out.append(ToUpstream(rt.output_audio_buffer_clear()))
            elif isinstance(action, m.TruncateToHeard):
                heard = self.ledger.played_ms_for(action.response_id)
                if heard > 0:
                    out.append(ToUpstream(rt.conversation_item_truncate(action.item_id, 0, heard)))
            elif isinstance(action, m.BargeIn):
                self.stats.barge_ins += 1
                self.metrics.barge_ins.labels(action.source).inc()
                self.trace.event("barge_in", at=now, source=action.source)
        if self.control.phase is cc.Phase.WRAPPING_UP and self.machine.assistant_quiet:
            out += self._control(cc.AssistantQuiet(), now)
        return out

    def _clear_carrier(self, now: float) -> list[Effect]:
        self.ledger.on_clear()
        if self.recording is not None:
            self._record(self.recording.cleared, self._rec_at_ms(now))
        if self._speech_at is not None:
            self.metrics.barge_in_seconds.observe(now - self._speech_at)
            self._speech_at = None
        return [ToCarrier(tm.ClearAudio())]

    # --- playback: model audio to the caller ----------------------------------------------------

    def model_audio(
        self,
        frame: npt.NDArray[np.int16],
        received_at: float,
        now: float,
        rate: int = MODEL_RATE,
        channels: int = 1,
    ) -> list[Effect]:
        """One decoded model frame (any rate the transcoder takes, in one hop to 8 kHz): to the
        carrier as μ-law, with marks to learn it played."""
        if self.phase is not Phase.LIVE:
            return _NONE
        machine = self.machine
        if not machine.forwards_audio():
            self.stats.muted_frames += 1
            self.metrics.dropped_frames.labels("outbound", "muted_after_barge_in").inc()
            return _NONE
        if not machine.forwards_silence and _is_silent(frame):
            return _NONE
        out: list[Effect] = []
        for chunk in self.transcoder.to_caller_decoded(frame, rate, channels):
            self._play(chunk, machine.audible_response, received_at, now, out)
        return out

    def model_payload(
        self, payload: bytes, codec: UpstreamCodec, received_at: float, now: float
    ) -> list[Effect]:
        """Model audio from a G.711 leg as it came in RTP: to the carrier as μ-law with no
        decoding or resampling (A-law translated by table), with marks as on the Opus path."""
        if self.phase is not Phase.LIVE:
            return _NONE
        machine = self.machine
        if not machine.forwards_audio():
            self.stats.muted_frames += 1
            self.metrics.dropped_frames.labels("outbound", "muted_after_barge_in").inc()
            return _NONE
        if not machine.forwards_silence and _is_silent(payload, codec):
            return _NONE
        out: list[Effect] = []
        for chunk in self.transcoder.to_caller_g711(payload, codec):
            self._play(chunk, machine.audible_response, received_at, now, out)
        return out

    def _play(
        self,
        ulaw: bytes,
        response_id: str | None,
        received_at: float,
        now: float,
        out: list[Effect],
    ) -> None:
        out.append(ToCarrier(tm.PlayAudio(ulaw)))
        self.stats.frames_out += 1
        added = now - received_at
        self._outbound_latency.observe(added)
        self.stats.observe_outbound_added(added)
        if self._speech_stopped_at is not None:
            self.stats.response_ms.append(round((now - self._speech_stopped_at) * 1000, 1))
            self._speech_stopped_at = None
            if self._caller_stopped_at is not None:
                self.stats.answer_ms.append(round((now - self._caller_stopped_at) * 1000, 1))
                self._caller_stopped_at = None
        if self.recording is not None:
            self._record(self.recording.assistant, ulaw, self._rec_at_ms(now))
        mark = self.ledger.sent(len(ulaw), response_id)
        if mark is None and self.machine.state is m.State.DRAINING:
            # Late frames after upstream said it stopped (RTP trails the data channel): mark
            # them at once, or the carrier could never be confirmed drained.
            mark = self.ledger.flush()
        if mark is not None:
            out.append(ToCarrier(tm.PlayMark(mark)))

    def _audio_stopped(self, response_id: str | None, now: float) -> list[Effect]:
        """Upstream finished sending: send the resampler's tail and a mark covering it."""
        out: list[Effect] = []
        tail = self.transcoder.flush_to_caller()
        if tail is not None and self.machine.forwards_audio():
            self._play(tail, response_id, now, now, out)
        mark = self.ledger.flush()
        if mark is not None:
            out.append(ToCarrier(tm.PlayMark(mark)))
        out += self._turn(m.AudioStopped(response_id), now)
        return out + self._playback_check(now)

    def _playback_check(self, now: float) -> list[Effect]:
        """The one place that decides the carrier has played the assistant out."""
        if self.machine.state is m.State.DRAINING and self.ledger.buffered_ms <= 0:
            return self._turn(m.CarrierDrained(), now)
        return []

    # --- call control ---------------------------------------------------------------------------

    def _control(self, event: cc.Input, now: float) -> list[Effect]:
        """Feed call control; translate its actions (upstream sends, the carrier's API)."""
        out: list[Effect] = []
        for action in self.control.handle(event, now):
            if isinstance(action, cc.Note):
                entry = {**action.entry, "at_ms": round((now - self.stats.started_at) * 1000)}
                self.stats.actions.append(entry)
                self.trace.event(f"call_control.{entry['kind']}", at=now, ok=entry.get("ok"))
                self.log.info("call control: %s", entry)
            elif isinstance(action, cc.HangUp | cc.Transfer):
                self._end_requested = True
                self._pending_end_reason = action.reason
                out.append(CarrierAction(action))
            elif isinstance(action, cc.SendToolOutput):
                output = json.dumps(action.output, separators=(",", ":"))
                out.append(
                    ToUpstream(rt.conversation_item_create_function_output(action.call_id, output))
                )
            elif isinstance(action, cc.AddSystemNote):
                out.append(ToUpstream(rt.conversation_item_create_system_text(action.text)))
            elif isinstance(action, cc.RequestResponse):
                out.append(ToUpstream(rt.response_create(instructions=action.instructions)))
        return out

    def carrier_action_done(
        self,
        action: cc.HangUp | cc.Transfer,
        error: BaseException | None,
        now: float,
    ) -> list[Effect]:
        """The carrier's API answered a hang-up or transfer (or was not configured: a hang-up
        then just closes the stream, and the carrier runs the profile's fallback)."""
        kind = "hang_up" if isinstance(action, cc.HangUp) else "transfer"
        message: str | None = None
        if isinstance(error, CarrierApiError):  # its message says what to check
            if not (error.call_gone and isinstance(action, cc.HangUp)):
                message = str(error)
        elif error is not None:
            message = str(error) or type(error).__name__
        at_ms = round((now - self.stats.started_at) * 1000)
        self.stats.actions.append(
            {"kind": f"{kind}_request", "ok": message is None, "error": message, "at_ms": at_ms}
        )
        self.metrics.call_actions.labels(kind, "ok" if message is None else "failed").inc()
        if message is not None:
            self.log.error("carrier API %s failed: %s", kind.replace("_", " "), message)
            if isinstance(action, cc.Transfer) and self.phase is Phase.LIVE:
                self._end_requested = False
                return self._control(cc.TransferFailed(action.destination, message), now)
        elif isinstance(action, cc.Transfer):
            self._transferred = True
            if self.end is not None and self.end.outcome == "completed":
                # The carrier acted on the transfer before its API answered us: the stream
                # ended first, and the call was transferred all the same.
                self.end = CallEnd("transferred", self.end.reason, self.end.close_code)
        outcome = "transferred" if self._transferred else "completed"
        return self._end(outcome, action.reason, CloseCode.NORMAL)

    # --- the end --------------------------------------------------------------------------------

    def _end_completed(self, reason: str | None) -> list[Effect]:
        if self._end_requested:
            reason = self._pending_end_reason
        outcome = "transferred" if self._transferred else "completed"
        return self._end(outcome, reason or "carrier hung up", CloseCode.NORMAL)

    def carrier_gone(self, now: float) -> list[Effect]:
        """The carrier closed the websocket (or it dropped)."""
        return self._end_completed("carrier websocket closed")

    def shutdown(self, reason: str, now: float) -> list[Effect]:
        """The gateway asks the call to end (draining, maximum duration)."""
        return self._end("completed", reason, CloseCode.GOING_AWAY)

    def failed(self, exc: BaseException, now: float) -> list[Effect]:
        """The call cannot go on: a gateway error says whose fault; anything else is ours."""
        if isinstance(exc, GatewayError) and not isinstance(exc, InternalError):
            code, _ = close_code_for(exc)
            outcome = _outcome_for(exc)
            if self.end is None:
                if isinstance(exc, StartTimeout):
                    self.log.warning("media stream closed: %s", exc)
                else:
                    self.log.warning("call ends: %s", exc)
            return self._end(outcome, str(exc), code)
        if self.end is None:
            self.log.error("call failed with an internal error: %r", exc, exc_info=exc)
        return self._end("internal_error", "internal error", CloseCode.INTERNAL_ERROR)

    def close(self, now: float) -> list[Effect]:
        """The runner is cleaning up: the last recorded audio, then the lifecycle ends (the
        outcome counted, the trace ended, one log line)."""
        if self.end is None:
            self._end_completed(None)
        self.machine.handle(m.Close())
        out: list[Effect] = []
        rec = self.recording
        if rec is not None and self._rec_t0 is not None:
            try:
                tail = rec.take() if self.recording_failed else rec.finish(self._rec_at_ms(now))
                out.append(WriteRecording(tail))
            except (ValueError, RuntimeError):
                pass
        self.recording = None
        if self.phase is not Phase.ENDED:
            self._goto(Phase.ENDED)
            end = self.end
            assert end is not None
            self.metrics.calls.labels(end.outcome).inc()
            self.trace.end(end.outcome, end.reason, error=end.outcome not in GOOD_OUTCOMES)
            if self.start is not None:
                self.log.info(
                    "call ended (%s): %s; %d barge-ins, %d responses",
                    end.outcome,
                    end.reason,
                    self.stats.barge_ins,
                    self.stats.turns,
                )
        return out

    @property
    def outcome(self) -> str:
        return self.end.outcome if self.end is not None else "completed"

    # --- recording ------------------------------------------------------------------------------

    def _rec_at_ms(self, now: float) -> float:
        return 0.0 if self._rec_t0 is None else max(0.0, (now - self._rec_t0) * 1000)

    def _record_caller(self, ulaw: bytes, timestamp_ms: int, now: float) -> None:
        """The caller by media timestamp (the carrier's clock); the origin is the first frame,
        so that media timestamps and the gateway's send times land on one axis."""
        rec = self.recording
        assert rec is not None
        if self._rec_t0 is None:
            self._rec_t0 = now - timestamp_ms / 1000
        if self.recording_failed:
            return  # stopped where it was; what it has is still saved
        ahead_ms = timestamp_ms - self._rec_at_ms(now)
        if ahead_ms > RECORDING_AHEAD_MAX_MS:
            # A stream whose timestamps run ahead of the call's real time would make the file
            # as long as the timestamps say (minutes of silence per frame): bounded by the call.
            self._stop_recording(
                f"the carrier's media timestamps run {ahead_ms / 1000:.1f} s "
                "ahead of the call's real time"
            )
            return
        self._record(rec.caller, ulaw, timestamp_ms)
        self._rec_frames += 1

    def _recording_due(self) -> npt.NDArray[np.int16] | None:
        """Final samples to hand to the writer now and then (bounded memory, few hops)."""
        rec = self.recording
        if rec is None or self.recording_failed or self._rec_frames < RECORDING_TAKE_EVERY:
            return None
        self._rec_frames = 0
        return rec.take()

    def _record(self, step: Any, *args: Any) -> None:
        """Apply one recording step. A recording that cannot go on stops where it is (what it
        has is still saved); the call goes on."""
        if self.recording_failed:
            return
        try:
            step(*args)
        except ValueError as exc:  # a carrier timestamp far off the stream's clock
            self._stop_recording(str(exc))

    def _stop_recording(self, reason: str) -> None:
        self.log.warning("call recording stopped: %s", reason)
        self.recording_failed = True
        self.metrics.recordings.labels("failed").inc()

    # --- reports --------------------------------------------------------------------------------

    def summary(self, now: float) -> dict[str, Any]:
        """A JSON-able view for the admin API (no secrets)."""
        start = self.start
        return {
            "call_sid": start.call_sid if start else None,
            "stream_sid": start.stream_sid if start else None,
            "profile": self.config.profile if self.phase is not Phase.AWAITING_START else None,
            "codec": (
                self.config.upstream_codec if self.phase is not Phase.AWAITING_START else None
            ),
            "upstream_call_id": self.upstream_call_id,
            "phase": self.phase.value,
            "state": self.machine.state.value,
            "age_s": round(now - self.stats.started_at, 1),
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
            "outcome": self.end.outcome if self.end and self.phase is Phase.ENDED else None,
            "end_reason": self.end.reason if self.end and self.phase is Phase.ENDED else None,
        }

    def record(self, wall_now: float, recording_path: str | None) -> CallRecord:
        """The call record: what the operator sees in the database after the call."""
        assert self.start is not None
        started = datetime.fromtimestamp(self.started_wall, UTC)
        ended = datetime.fromtimestamp(wall_now, UTC)
        end = self.end or CallEnd("completed", "", CloseCode.NORMAL)
        return CallRecord(
            call_sid=self.start.call_sid,
            started_at=started,
            ended_at=ended,
            stream_sid=self.start.stream_sid,
            account_sid=self.start.account_sid,
            number=self.called or "default",
            profile=self.config.profile,
            caller=mask_number(self.caller),
            upstream_call_id=self.upstream_call_id or "",
            model=self.config.model,
            duration_s=round(max(0.0, (ended - started).total_seconds()), 3),
            outcome=end.outcome,
            end_reason=end.reason,
            turns=self.stats.turns,
            barge_ins=self.stats.barge_ins,
            setup_ms=None if self.stats.setup_ms is None else round(self.stats.setup_ms, 1),
            latency=self.stats.latency_summary(),
            usage=self.usage,
            cost_usd=self.cost_usd,
            actions=list(self.stats.actions),
            errors=dict(self.stats.upstream_errors),
            recording_path=recording_path,
            dtmf=self.stats.dtmf,
            direction="inbound" if self.answer is None else "outbound",
            answered_by=None if self.answer is None else self.answer.answered_by,
            answered_by_ms=self._answer_delay_ms,
            voicemail_left=self._voicemail_left(),
        )

    def _voicemail_left(self) -> bool | None:
        """Whether the voicemail message was said and the call then hung up as planned (not
        forced by the wrap-up deadline); None when no message was due."""
        if self._voicemail is None:
            return None
        return any(
            a.get("kind") == "hang_up"
            and a.get("reason") == VOICEMAIL_LEFT
            and "forced_after_s" not in a
            for a in self.stats.actions
        )


def _voicemail_text(message: str) -> str:
    return (
        "You reached an answering machine and its beep has passed. Leave this message now, "
        f"once, word for word, then stop talking: {message}"
    )


def setup_error_code(exc: UpstreamError) -> str:
    if isinstance(exc, UpstreamRefused):
        return f"http_{exc.status}"
    return exc.code or type(exc).__name__


_OUTCOMES: Final[tuple[tuple[type[GatewayError], str], ...]] = (
    (Forbidden, "forbidden"),
    (StartTimeout, "no_start"),
    (CarrierError, "carrier_error"),
    (UpstreamError, "upstream_error"),
)
"""The record's outcome for the error that ended a call: the first class that matches."""


def _outcome_for(exc: GatewayError) -> str:
    return next((outcome for kind, outcome in _OUTCOMES if isinstance(exc, kind)), "error")


def _is_silent(frame: LegFrame, codec: UpstreamCodec = "opus") -> bool:
    if isinstance(frame, bytes):  # A-law has no zero: its quietest code decodes to 8
        return g711_peak(frame, alaw=codec == "pcma") <= SILENCE_PEAK
    return frame.size == 0 or int(np.abs(frame).max()) < SILENCE_PEAK


def _without_leading_silence(
    frames: deque[tuple[LegFrame, float]], codec: UpstreamCodec
) -> list[tuple[LegFrame, float]]:
    """The setup buffer from shortly before the caller first spoke (all of it if they did).

    Silence buffered while the session opened carries nothing, but replaying it would make
    every later frame wait behind it; speech is kept whole, with a short lead-in.
    """
    items = list(frames)
    first_voiced = next(
        (i for i, (f, _) in enumerate(items) if not _is_silent(f, codec)), len(items)
    )
    return items[max(0, first_voiced - SETUP_PREFIX_FRAMES) :] if first_voiced < len(items) else []
