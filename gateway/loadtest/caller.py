"""One simulated carrier call: a scripted caller on a real websocket, and what it heard.

:class:`SimulatedCall` plays Twilio for one call against a gateway. Optionally it first POSTs
the incoming-call webhook (signed when given an auth token) and follows the
``<Connect><Stream url><Parameter/>`` of the TwiML it gets back; then it opens the media
websocket (signed upgrade), sends ``connected`` and ``start``, and from then on sends one
20 ms ``media`` frame per tick on absolute deadlines of a monotonic clock — speech while the
script says something, μ-law silence otherwise — plus ``dtmf``, mark echoes and finally
``stop``. What the gateway sends back goes through a Twilio-like
:class:`~gateway.loadtest.carrier.PlayoutBuffer`, so every figure is *as heard*::

    script = [WaitForAnswer(), Say.from_text("What are your hours?"), WaitForAnswer(),
              BargeIn(Say.from_text("Sorry, one more thing"), after_ms=800), WaitForAnswer()]
    result = await SimulatedCall(script, CallOptions(webhook_url=f"{gw}/twilio/voice")).run()
    result.setup_ms, result.response_latencies_ms, result.barge_in_stop_ms, result.gaps_ms

Times in a :class:`CallResult` are milliseconds on the stream's media clock: 0 is when
``start`` was sent, caller frame *k* covers ``[20k, 20k + 20)`` and assistant audio is placed
where it played. A caller turn's speech starts at the first audible sample of its first voiced
frame's slot and ends at the end of its last voiced frame's slot; a response is heard from
the first audible sample played after that end.

With ``CallOptions.twilio_api`` (a :class:`~gateway.loadtest.twilio_api.TwilioApiStandIn`) the
call also exists in a local stand-in of Twilio's REST Calls resource once it streams, so the
gateway (or a test) can hang it up or redirect it as it would through Twilio: the stream then
ends as Twilio ends it (``stop``, close) and :attr:`CallResult.ended_by` says who ended it.

Cheap by design (a load tester runs hundreds of these in one process): speech clips are
base64-encoded once per :class:`Say`, each call has one sender task (a sleep per frame) and one
receiver task, and the per-frame work is string formatting. Each call records its own pacing
lateness so a load result can be trusted or discarded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
import wave
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
import numpy as np
import numpy.typing as npt
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from gateway.audio.g711 import array_to_ulaw, ulaw_to_array
from gateway.errors import CarrierError
from gateway.loadtest.carrier import (
    AUDIBLE_PEAK,
    FRAME_BYTES,
    FRAME_MS,
    RATE,
    SILENCE_FRAME,
    AudioPlayed,
    CallerStream,
    Histogram,
    MarkEchoed,
    PlayoutBuffer,
    PlayoutCleared,
    PlayoutEvent,
    Underrun,
    audible_table,
)
from gateway.telephony.messages import ClearAudio, Ignored, PlayAudio, PlayMark
from gateway.telephony.signature import sign

if TYPE_CHECKING:
    from gateway.loadtest.twilio_api import CallUpdate, TwilioApiStandIn

__all__ = [
    "BargeIn",
    "CallOptions",
    "CallResult",
    "HangUp",
    "Pause",
    "PressDigits",
    "Say",
    "SimulatedCall",
    "Span",
    "Step",
    "TimelineEntry",
    "Turn",
    "WaitForAnswer",
    "run_call",
    "websocket_url",
]

log = logging.getLogger("gateway.loadtest.caller")

_FRAME_S = FRAME_MS / 1000
_PLACEHOLDER_ACCOUNT = "AC" + "0" * 32
_SILENCE_B64 = base64.b64encode(SILENCE_FRAME).decode("ascii")


# --- the script ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Say:
    """Say ``audio`` (8 kHz μ-law) — ``text`` is what it says, for the timeline.

    Build one per utterance and reuse it across calls: the clip is cut into 20 ms frames and
    base64-encoded once, here. Use :meth:`from_pcm16` for PCM at any rate and
    :meth:`from_text` for offline synthesized speech.
    """

    audio: bytes
    text: str = ""
    audible_peak: int = AUDIBLE_PEAK
    frames: tuple[str, ...] = field(init=False, repr=False)
    """The clip as base64 20 ms frames (the last padded with silence)."""
    voiced: tuple[int, int] | None = field(init=False, repr=False)
    """Indices of the first and last frame with audible speech, ``None`` if all silent."""

    def __post_init__(self) -> None:
        if not self.audio:
            raise ValueError("Say needs at least one sample of audio")
        table = audible_table(self.audible_peak)
        frames: list[str] = []
        loud: list[int] = []
        for i in range(0, len(self.audio), FRAME_BYTES):
            chunk = self.audio[i : i + FRAME_BYTES].ljust(FRAME_BYTES, b"\xff")
            frames.append(base64.b64encode(chunk).decode("ascii"))
            if 1 in chunk.translate(table):
                loud.append(len(frames) - 1)
        object.__setattr__(self, "frames", tuple(frames))
        object.__setattr__(self, "voiced", (loud[0], loud[-1]) if loud else None)

    @classmethod
    def from_pcm16(cls, samples: npt.NDArray[np.int16], rate: int = RATE, text: str = "") -> Say:
        """From mono int16 PCM at ``rate`` Hz (resampled to 8 kHz with soxr if needed)."""
        if rate != RATE:
            from gateway.audio.tts import resample_buffer

            samples = resample_buffer(samples, rate, RATE)
        return cls(array_to_ulaw(np.ascontiguousarray(samples, dtype=np.int16)), text)

    @classmethod
    def from_text(cls, text: str, voice: Any = None) -> Say:
        """Synthesize ``text`` offline (eSpeak NG, the caller's voice by default).

        CPU-bound (a few ms per second of speech): build scripts before the calls start.
        """
        from gateway.audio.tts import CALLER_VOICE, synthesizer

        pcm = synthesizer().synthesize(text, voice or CALLER_VOICE, RATE)
        return cls.from_pcm16(pcm, RATE, text)

    @property
    def duration_ms(self) -> float:
        return len(self.frames) * FRAME_MS


@dataclass(frozen=True, slots=True)
class WaitForAnswer:
    """Wait until the assistant has answered: audible audio played after the last caller turn
    (or, before any turn, the greeting), then ``quiet_ms`` without audible audio.

    Fails the call (``no_answer``) if no answer starts within ``timeout_ms``.
    """

    timeout_ms: float = 15_000
    quiet_ms: float = 700


@dataclass(frozen=True, slots=True)
class Pause:
    """Stay silent (silence frames keep flowing) for ``ms``."""

    ms: float


@dataclass(frozen=True, slots=True)
class BargeIn:
    """Start saying ``say`` ``after_ms`` after the assistant's answer started being heard.

    Fails the call (``no_answer``) if no answer starts within ``timeout_ms``.
    """

    say: Say
    after_ms: float = 800
    timeout_ms: float = 15_000


@dataclass(frozen=True, slots=True)
class PressDigits:
    """Send a ``dtmf`` message per digit, ``gap_ms`` apart."""

    digits: str
    gap_ms: float = 200


@dataclass(frozen=True, slots=True)
class HangUp:
    """Send ``stop`` and close the websocket (also what happens after the last step)."""


Step = Say | WaitForAnswer | Pause | BargeIn | PressDigits | HangUp


# --- configuration and results ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Where to call and how. Give ``webhook_url`` (POST first, follow the TwiML) or
    ``media_url`` (open the media websocket directly, ``ws://host/twilio/media``)."""

    webhook_url: str | None = None
    media_url: str | None = None
    auth_token: str | None = None
    """Sign the webhook and the upgrade with ``X-Twilio-Signature`` when set."""
    from_number: str = "+15550100001"
    to_number: str = "+15550100002"
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    """Sent in ``start.customParameters`` (after the TwiML's, which they override)."""
    webhook_params: Mapping[str, str] = field(default_factory=dict)
    """Extra form fields for the webhook POST."""
    call_sid: str | None = None
    account_sid: str = _PLACEHOLDER_ACCOUNT
    """``AccountSid`` of the webhook and ``start``; with ``twilio_api``, its account is used."""
    ready_on: Literal["audio", "message"] = "audio"
    """Setup ends at the first audible assistant audio, or at the gateway's first message."""
    connect_timeout_s: float = 10.0
    max_duration_s: float = 300.0
    record_audio: bool = False
    """Keep what was said and heard (8 KB/s per side) for :meth:`CallResult.write_wav`."""
    gap_ms: float = 40.0
    """Playout starvation longer than this inside assistant speech counts as a gap."""
    merge_ms: float = 400.0
    """Audible assistant audio less than this apart is one utterance (pauses between words)."""
    audible_peak: int = AUDIBLE_PEAK
    use_env_proxy: bool = False
    """Honour HTTP(S)_PROXY for the webhook and websocket (off: targets are usually local)."""
    twilio_api: TwilioApiStandIn | None = None
    """Register the call in this stand-in of Twilio's REST API once it streams, so REST
    updates can hang it up or redirect it (the call then uses the stand-in's account SID)."""


@dataclass(slots=True)
class Turn:
    """One caller utterance and the answer heard after it (ms on the media clock)."""

    index: int
    text: str
    barge_in: bool
    onset_ms: float | None = None
    end_ms: float | None = None
    answer_ms: float | None = None
    """First audible assistant sample after ``end_ms``."""
    stop_ms: float | None = None
    """Barge-in only: when the assistant audio that was playing at the onset stopped."""
    clear_ms: float | None = None
    """Barge-in only: when the first ``clear`` after the onset arrived."""
    assistant_audible_at_onset: bool | None = None

    @property
    def response_latency_ms(self) -> float | None:
        if self.answer_ms is None or self.end_ms is None:
            return None
        return self.answer_ms - self.end_ms

    @property
    def barge_in_stop_ms(self) -> float | None:
        if self.stop_ms is None or self.onset_ms is None:
            return None
        return max(0.0, self.stop_ms - self.onset_ms)


@dataclass(slots=True)
class Span:
    """An assistant utterance as heard: audible audio from ``start_ms`` to ``end_ms``."""

    start_ms: float
    end_ms: float


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    t_ms: float
    kind: str
    """``caller_start``, ``caller_end``, ``assistant_start``, ``assistant_end``, ``clear``,
    ``dtmf``, ``gap``, ``hangup``, ``closed``, ``failed``, ``rest_hangup``, ``rest_redirect``."""
    detail: str = ""


@dataclass
class CallResult:
    """Everything one call measured. ``ok`` is true when the script ran to the end."""

    call_sid: str
    stream_sid: str
    outcome: Literal["completed", "failed"] = "failed"
    failure: str | None = "not_started"
    """Short reason key (``webhook_http_503``, ``ws_rejected_403``, ``connect_error``,
    ``closed_by_gateway``, ``no_answer``, ``gateway_protocol_error``, ``max_duration``, ...)."""
    failure_detail: str = ""
    webhook_ms: float | None = None
    connect_ms: float | None = None
    setup_ms: float | None = None
    """Websocket open -> first audible assistant audio (or first message; see ``ready_on``)."""
    duration_ms: float = 0.0
    turns: list[Turn] = field(default_factory=list)
    assistant: list[Span] = field(default_factory=list)
    gaps_ms: list[float] = field(default_factory=list)
    timeline: list[TimelineEntry] = field(default_factory=list)
    frames_sent: int = 0
    media_received: int = 0
    bytes_received: int = 0
    bytes_played: int = 0
    bytes_cleared: int = 0
    marks_received: int = 0
    marks_echoed: int = 0
    clears_received: int = 0
    ignored_received: int = 0
    dtmf_sent: int = 0
    close_code: int | None = None
    close_reason: str = ""
    pacing: Histogram = field(default_factory=lambda: Histogram(resolution_ms=0.1, max_ms=500))
    """How late each frame was sent after its deadline (ms)."""
    caller_audio: bytes = b""
    assistant_audio: bytes = b""
    """μ-law at 8 kHz on the media clock, when ``record_audio`` was set."""
    stream_parameters: dict[str, str] = field(default_factory=dict)
    ended_by: Literal["caller", "gateway", "rest_hangup", "rest_redirect"] | None = None
    """Who ended the stream: the caller (the script ended, hung up or gave up), the gateway
    (it closed the websocket), or a REST update (hang-up, or new TwiML that left the stream).
    ``None`` when no stream started."""
    redirect_twiml: str | None = None
    """The TwiML a REST redirect replaced the stream with (``None`` for a ``Url`` redirect)."""
    dialed: list[str] = field(default_factory=list)
    """Numbers the redirect's TwiML ``<Dial>``s (a transfer)."""

    @property
    def ok(self) -> bool:
        return self.outcome == "completed" and self.failure is None

    @property
    def response_latencies_ms(self) -> list[float]:
        """One per answered caller turn, as heard."""
        return [t.response_latency_ms for t in self.turns if t.response_latency_ms is not None]

    @property
    def barge_in_stop_ms(self) -> list[float]:
        """One per barge-in that found the assistant audible: onset -> assistant silent."""
        return [t.barge_in_stop_ms for t in self.turns if t.barge_in_stop_ms is not None]

    @property
    def frames_received(self) -> float:
        """Assistant audio received, in 20 ms frames."""
        return self.bytes_received / FRAME_BYTES

    @property
    def frames_played(self) -> float:
        return self.bytes_played / FRAME_BYTES

    def stereo_pcm16(self) -> npt.NDArray[np.int16]:
        """``(n, 2)`` int16 at 8 kHz: the caller left, the assistant right (needs recording)."""
        n = max(len(self.caller_audio), len(self.assistant_audio))
        caller = self.caller_audio.ljust(n, b"\xff")
        assistant = self.assistant_audio.ljust(n, b"\xff")
        return np.stack([ulaw_to_array(caller), ulaw_to_array(assistant)], axis=1)

    def write_wav(self, path: str | Path) -> None:
        """Write :meth:`stereo_pcm16` as a 16-bit 8 kHz stereo WAV file."""
        frames = self.stereo_pcm16().astype("<i2").tobytes()
        with wave.open(str(path), "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(RATE)
            out.writeframes(frames)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no audio)."""
        return {
            "ok": self.ok,
            "outcome": self.outcome,
            "failure": self.failure,
            "failure_detail": self.failure_detail,
            "call_sid": self.call_sid,
            "stream_sid": self.stream_sid,
            "webhook_ms": _r(self.webhook_ms),
            "connect_ms": _r(self.connect_ms),
            "setup_ms": _r(self.setup_ms),
            "duration_ms": _r(self.duration_ms),
            "response_latency_ms": [_r(x) for x in self.response_latencies_ms],
            "barge_in_stop_ms": [_r(x) for x in self.barge_in_stop_ms],
            "gaps_ms": [_r(x) for x in self.gaps_ms],
            "turns": [
                {
                    "index": t.index,
                    "text": t.text,
                    "barge_in": t.barge_in,
                    "start_ms": _r(t.onset_ms),
                    "end_ms": _r(t.end_ms),
                    "answer_ms": _r(t.answer_ms),
                    "response_latency_ms": _r(t.response_latency_ms),
                    "barge_in_stop_ms": _r(t.barge_in_stop_ms),
                    "clear_ms": _r(t.clear_ms),
                }
                for t in self.turns
            ],
            "assistant": [
                {"start_ms": _r(s.start_ms), "end_ms": _r(s.end_ms)} for s in self.assistant
            ],
            "frames": {
                "sent": self.frames_sent,
                "received": round(self.frames_received, 1),
                "played": round(self.frames_played, 1),
                "cleared": round(self.bytes_cleared / FRAME_BYTES, 1),
            },
            "marks": {"received": self.marks_received, "echoed": self.marks_echoed},
            "clears": self.clears_received,
            "pacing_lateness_ms": {
                "p50": _r(self.pacing.quantile(0.5)),
                "p99": _r(self.pacing.quantile(0.99)),
                "max": _r(self.pacing.max),
            },
            "close": {"code": self.close_code, "reason": self.close_reason},
            "ended_by": self.ended_by,
            "redirect_twiml": self.redirect_twiml,
            "dialed": list(self.dialed),
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class _Failed(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --- the call -----------------------------------------------------------------------------------


class SimulatedCall:
    """One scripted call. Create it, ``await run()`` once, read the :class:`CallResult`.

    ``http`` lets many calls share one connection pool for webhooks; ``on_event`` receives
    timeline entries as they happen (the demo prints them live). ``result`` is readable while
    the call runs (progress displays).
    """

    def __init__(
        self,
        script: Sequence[Step],
        options: CallOptions,
        *,
        http: httpx.AsyncClient | None = None,
        on_event: Callable[[TimelineEntry], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not options.webhook_url and not options.media_url:
            raise ValueError("CallOptions needs webhook_url or media_url")
        self._account_sid = options.account_sid
        if options.twilio_api is not None:
            api_account = options.twilio_api.account_sid
            if options.account_sid not in (_PLACEHOLDER_ACCOUNT, api_account):
                raise ValueError(
                    f"account_sid {options.account_sid} differs from the Twilio API stand-in's "
                    f"account {api_account}"
                )
            self._account_sid = api_account
        self.script = list(script)
        self.options = options
        self._http = http
        self._on_event = on_event
        self._clock = clock
        call_sid = options.call_sid or "CA" + uuid.uuid4().hex
        self.result = CallResult(call_sid=call_sid, stream_sid="MZ" + uuid.uuid4().hex)
        self._table = audible_table(options.audible_peak)
        self._merge_s = options.merge_ms / 1000
        # set when the stream starts
        self._ws: ClientConnection | None = None
        self._stream: CallerStream | None = None
        self._playout: PlayoutBuffer | None = None
        self._epoch = 0.0
        self._ws_open_at = 0.0
        # script state
        self._step = 0
        self._step_began: float | None = None
        self._speech: deque[int] = deque()
        self._say: Say | None = None
        self._turn: Turn | None = None
        self._barge_started = False
        self._digits: deque[str] = deque()
        self._next_digit_at = 0.0
        self._hangup = False
        self._script_done = False
        # REST call control (CallOptions.twilio_api)
        self._registered = False
        self._rest_update: CallUpdate | None = None
        self._stream_over = asyncio.Event()
        # what has been heard
        self._last_turn_end: float | None = None  # media-clock seconds since epoch
        self._answer_at: float | None = None
        self._last_audible_end: float | None = None
        self._caller_audio = bytearray()
        self._assistant_audio = bytearray()

    # --- public ----------------------------------------------------------------------------------

    async def run(self) -> CallResult:
        """Place the call and run the script; never raises for call failures (see ``failure``)."""
        result = self.result
        began = self._clock()
        result.failure = None
        try:
            async with asyncio.timeout(self.options.max_duration_s):
                url, parameters = await self._resolve_stream()
                await self._connect(url)
                result.stream_parameters = parameters
                await self._run_stream(parameters)
        except _Failed as failure:
            self._fail(failure.reason, failure.detail)
        except TimeoutError:
            self._fail("max_duration", f"call exceeded {self.options.max_duration_s:g} s")
        except asyncio.CancelledError:
            self._fail("cancelled", "the call was cancelled")
            raise
        except Exception as exc:  # a bug here must not take a whole load run down with it
            log.exception("simulated call %s crashed", result.call_sid)
            self._fail("internal_error", f"{type(exc).__name__}: {exc}")
        finally:
            if self._ws is not None:
                with contextlib.suppress(Exception):
                    await self._ws.close()
                if result.close_code is None and self._ws.close_code is not None:
                    result.close_code = self._ws.close_code
                    result.close_reason = self._ws.close_reason or ""
            if self._stream is not None and result.ended_by is None:
                result.ended_by = "caller"
            if self._registered and self.options.twilio_api is not None:
                # After a redirect Twilio runs the new TwiML: the call itself goes on.
                self.options.twilio_api.unregister(
                    result.call_sid, completed=result.ended_by != "rest_redirect"
                )
            self._stream_over.set()
            result.duration_ms = (self._clock() - began) * 1000
            self._finish()
        return result

    # --- webhook ---------------------------------------------------------------------------------

    async def _resolve_stream(self) -> tuple[str, dict[str, str]]:
        opts = self.options
        if not opts.webhook_url:
            assert opts.media_url is not None
            return opts.media_url, dict(opts.custom_parameters)
        form = {
            "AccountSid": self._account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": self.result.call_sid,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": opts.from_number,
            "To": opts.to_number,
            **opts.webhook_params,
        }
        headers = {}
        if opts.auth_token:
            headers["X-Twilio-Signature"] = sign(opts.auth_token, opts.webhook_url, form)
        t0 = self._clock()
        try:
            if self._http is not None:
                response = await self._post(self._http, opts.webhook_url, form, headers)
            else:
                async with httpx.AsyncClient(trust_env=opts.use_env_proxy) as client:
                    response = await self._post(client, opts.webhook_url, form, headers)
        except httpx.TimeoutException as exc:
            raise _Failed("webhook_timeout", str(exc) or type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise _Failed("webhook_error", str(exc) or type(exc).__name__) from None
        self.result.webhook_ms = (self._clock() - t0) * 1000
        if response.status_code != 200:
            raise _Failed(f"webhook_http_{response.status_code}", response.text[:200])
        url, parameters = _stream_from_twiml(response.text, opts.webhook_url)
        parameters.update(opts.custom_parameters)
        return url, parameters

    async def _post(
        self,
        client: httpx.AsyncClient,
        url: str,
        form: dict[str, str],
        headers: dict[str, str],
    ) -> httpx.Response:
        return await client.post(
            url, data=form, headers=headers, timeout=self.options.connect_timeout_s
        )

    # --- websocket -------------------------------------------------------------------------------

    async def _connect(self, url: str) -> None:
        headers = {}
        if self.options.auth_token:
            headers["X-Twilio-Signature"] = sign(self.options.auth_token, url)
        t0 = self._clock()
        try:
            self._ws = await connect(
                url,
                additional_headers=headers,
                open_timeout=self.options.connect_timeout_s,
                close_timeout=2,
                compression=None,  # Twilio does not deflate; it would cost CPU for nothing
                ping_interval=None,
                max_size=1024 * 1024,
                proxy=True if self.options.use_env_proxy else None,
                user_agent_header="gateway-loadtest",
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise _Failed(f"ws_rejected_{status}", _body(exc.response.body)) from None
        except TimeoutError:
            raise _Failed(
                "connect_timeout", f"no websocket within {self.options.connect_timeout_s:g} s"
            ) from None
        except (OSError, InvalidHandshake) as exc:
            raise _Failed("connect_error", f"{type(exc).__name__}: {exc}") from None
        self._ws_open_at = self._clock()
        self.result.connect_ms = (self._ws_open_at - t0) * 1000

    async def _run_stream(self, parameters: dict[str, str]) -> None:
        ws = self._ws
        assert ws is not None
        stream = CallerStream(
            stream_sid=self.result.stream_sid,
            call_sid=self.result.call_sid,
            account_sid=self._account_sid,
            custom_parameters=parameters,
        )
        self._stream = stream
        try:
            await ws.send(stream.connected())
            self._epoch = self._clock()
            await ws.send(stream.start())
        except ConnectionClosed as exc:
            self.result.ended_by = "gateway"
            raise _Failed("closed_by_gateway", _closed(exc)) from None
        if self.options.twilio_api is not None:
            self.options.twilio_api.register(
                self.result.call_sid,
                to=self.options.to_number,
                from_=self.options.from_number,
                on_update=self._on_rest_update,
            )
            self._registered = True
        self._playout = PlayoutBuffer(self._epoch, gap_ms=self.options.gap_ms)
        sender = asyncio.create_task(self._send_loop(), name=f"send:{self.result.call_sid}")
        receiver = asyncio.create_task(self._receive_loop(), name=f"recv:{self.result.call_sid}")
        try:
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if receiver in done:
                receiver.result()  # the gateway broke the protocol: _Failed surfaces here
            if sender in done:
                try:
                    sender.result()  # the script failed (no answer, ...)
                except _Failed:
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send(stream.stop())  # hang up, as a carrier would
                    raise
            if not self._script_done and self._rest_update is None:
                if not receiver.done():
                    await receiver  # the sender saw the close first; learn the close code
                if self.result.ended_by is None:
                    self.result.ended_by = "gateway"
                raise _Failed("closed_by_gateway", self._close_text())
            # Twilio closes right after stop; wait for the close handshake to finish.
            await ws.close()
            await receiver
            self._emit((self._clock() - self._epoch), "closed", self._close_text())
        finally:
            for task in (sender, receiver):
                if not task.done():
                    task.cancel()
            for task in (sender, receiver):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _send_loop(self) -> None:
        ws = self._ws
        stream = self._stream
        assert ws is not None and stream is not None
        clock = self._clock
        pacing = self.result.pacing
        deadline = self._epoch + _FRAME_S
        frames: list[str] = []
        try:
            while True:
                delay = deadline - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                now = clock()
                pacing.record((now - deadline) * 1000)
                frames.clear()
                self._tick(deadline, now, frames)
                for frame in frames:
                    await ws.send(frame)
                if self._hangup:
                    return
                deadline += _FRAME_S
        except ConnectionClosed:
            return  # the receiver reports why

    async def _receive_loop(self) -> None:
        ws = self._ws
        stream = self._stream
        playout = self._playout
        assert ws is not None and stream is not None and playout is not None
        result = self.result
        clock = self._clock
        replies: list[str] = []
        try:
            async for raw in ws:
                now = clock()
                if result.setup_ms is None and self.options.ready_on == "message":
                    result.setup_ms = (now - self._ws_open_at) * 1000
                try:
                    msg = stream.parse(raw)
                except CarrierError as exc:
                    raise _Failed("gateway_protocol_error", str(exc)) from None
                if type(msg) is PlayAudio:
                    result.media_received += 1
                    events = playout.push_audio(msg.payload, now)
                elif type(msg) is PlayMark:
                    result.marks_received += 1
                    events = playout.push_mark(msg.name, now)
                elif type(msg) is ClearAudio:
                    result.clears_received += 1
                    events = playout.clear(now)
                else:
                    assert isinstance(msg, Ignored)
                    result.ignored_received += 1
                    continue
                if events:
                    replies.clear()
                    self._on_playout(events, replies)
                    for reply in replies:
                        await ws.send(reply)
        except ConnectionClosed:
            pass  # a close without a proper handshake: reported from close_code
        result.close_code = ws.close_code
        result.close_reason = ws.close_reason or ""

    # --- one 20 ms tick --------------------------------------------------------------------------

    def _tick(self, deadline: float, now: float, out: list[str]) -> None:
        """Everything due at ``deadline``: playout, script, then this slot's media frame."""
        stream = self._stream
        playout = self._playout
        assert stream is not None and playout is not None
        events = playout.advance(now)
        if events:
            self._on_playout(events, out)
        t = deadline - self._epoch  # end of this frame's slot on the media clock
        if self._rest_update is None:
            self._run_script(t, out)
        else:
            self._end_by_rest(t)
        if self._hangup:
            out.append(stream.stop())
            self._emit(t, "hangup")
            return
        if self._speech:
            say = self._say
            assert say is not None
            index = self._speech.popleft()
            out.append(stream.media(say.frames[index]))
            self._on_speech_frame(say, index, t)
            if self.options.record_audio:
                self._caller_audio += base64.b64decode(say.frames[index])
        else:
            out.append(stream.media(_SILENCE_B64))
            if self.options.record_audio:
                self._caller_audio += SILENCE_FRAME
        self.result.frames_sent += 1

    def _end_by_rest(self, t: float) -> None:
        """A REST update ended the stream: this tick sends ``stop`` instead of the script."""
        update = self._rest_update
        assert update is not None
        if update.action == "hangup":
            self._emit(t, "rest_hangup")
        else:
            self._emit(t, "rest_redirect", ", ".join(self.result.dialed) or update.url or "")
        self._hangup = True

    async def _on_rest_update(self, update: CallUpdate) -> None:
        """The stand-in's REST update of this call, applied as Twilio applies it: a hang-up, or
        new TwiML replacing the ``<Connect><Stream>``, both end the stream (``stop``, then the
        websocket closes) on the next frame tick. Returns once the stream has ended."""
        if self._hangup or self._rest_update is not None or self._stream_over.is_set():
            return  # the stream is already ending
        result = self.result
        if update.action == "hangup":
            result.ended_by = "rest_hangup"
        else:
            result.ended_by = "rest_redirect"
            result.redirect_twiml = update.twiml
            result.dialed = update.dialed
        self._rest_update = update
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.options.connect_timeout_s):
                await self._stream_over.wait()

    def _on_speech_frame(self, say: Say, index: int, t: float) -> None:
        turn = self._turn
        assert turn is not None
        first, last = say.voiced or (0, len(say.frames) - 1)
        if index == first:
            turn.onset_ms = (t - _FRAME_S) * 1000
            if self._playout is not None:
                self._playout.end_speech()
            if turn.barge_in:
                turn.assistant_audible_at_onset = self._audible_near(t - _FRAME_S)
            self._emit(t - _FRAME_S, "caller_start", say.text)
        if index == last:
            turn.end_ms = t * 1000
            self._last_turn_end = t
            self._answer_at = None
            self._emit(t, "caller_end", say.text)

    def _run_script(self, t: float, out: list[str]) -> None:
        while self._step < len(self.script):
            step = self.script[self._step]
            if self._step_began is None:
                self._step_began = t
                self._enter(step, t)
            if not self._progress(step, t, self._step_began, out):
                return
            self._step += 1
            self._step_began = None
            self._barge_started = False
            if self._hangup:
                break
        self._script_done = True
        self._hangup = True

    def _enter(self, step: Step, t: float) -> None:
        if isinstance(step, Say):
            self._speak(step, barge_in=False)
        elif isinstance(step, PressDigits):
            self._digits = deque(step.digits)
            self._next_digit_at = t
        elif isinstance(step, HangUp):
            self._hangup = True

    def _progress(self, step: Step, t: float, began: float, out: list[str]) -> bool:
        """Whether ``step`` is complete at ``t``; may start speech or send DTMF."""
        if isinstance(step, Say):
            return not self._speech
        if isinstance(step, WaitForAnswer):
            if self._answer_at is None:
                if (t - began) * 1000 > step.timeout_ms:
                    raise _Failed("no_answer", self._no_answer_text(step.timeout_ms))
                return False
            last = self._last_audible_end or self._answer_at
            return (t - last) * 1000 >= step.quiet_ms
        if isinstance(step, Pause):
            return (t - began) * 1000 >= step.ms
        if isinstance(step, BargeIn):
            if not self._barge_started:
                if self._answer_at is None:
                    if (t - began) * 1000 > step.timeout_ms:
                        raise _Failed("no_answer", self._no_answer_text(step.timeout_ms))
                    return False
                if (t - self._answer_at) * 1000 < step.after_ms:
                    return False
                self._barge_started = True
                self._speak(step.say, barge_in=True)
            return not self._speech
        if isinstance(step, PressDigits):
            stream = self._stream
            assert stream is not None
            while self._digits and t >= self._next_digit_at:
                digit = self._digits.popleft()
                out.append(stream.dtmf(digit))
                self.result.dtmf_sent += 1
                self._emit(t, "dtmf", digit)
                self._next_digit_at = t + step.gap_ms / 1000
            return not self._digits
        return True  # HangUp

    def _speak(self, say: Say, *, barge_in: bool) -> None:
        self._say = say
        self._speech = deque(range(len(say.frames)))
        self._turn = Turn(index=len(self.result.turns), text=say.text, barge_in=barge_in)
        self.result.turns.append(self._turn)

    def _no_answer_text(self, timeout_ms: float) -> str:
        after = "the greeting" if self._last_turn_end is None else f"turn {len(self.result.turns)}"
        return f"no audible assistant audio within {timeout_ms:g} ms (waiting for {after})"

    # --- what the caller hears -------------------------------------------------------------------

    def _on_playout(self, events: list[PlayoutEvent], out: list[str]) -> None:
        result = self.result
        stream = self._stream
        assert stream is not None
        for event in events:
            kind = type(event)
            if kind is AudioPlayed:
                assert isinstance(event, AudioPlayed)
                self._on_played(event)
            elif kind is MarkEchoed:
                assert isinstance(event, MarkEchoed)
                out.append(stream.mark(event.name))
                result.marks_echoed += 1
            elif kind is Underrun:
                assert isinstance(event, Underrun)
                result.gaps_ms.append(event.ms)
                self._emit(event.start - self._epoch, "gap", f"{event.ms:.0f} ms")
            elif kind is PlayoutCleared:
                assert isinstance(event, PlayoutCleared)
                t = event.at - self._epoch
                turn = self._turn
                if turn is not None and turn.barge_in and turn.clear_ms is None:
                    turn.clear_ms = t * 1000
                self._emit(t, "clear", f"{event.dropped_bytes // 8} ms dropped")

    def _on_played(self, event: AudioPlayed) -> None:
        result = self.result
        result.bytes_played += len(event.payload)
        if self.options.record_audio:
            audio = self._assistant_audio
            if len(audio) < event.sample:
                audio += b"\xff" * (event.sample - len(audio))
            audio[event.sample : event.sample + len(event.payload)] = event.payload
        levels = event.payload.translate(self._table)
        first = levels.find(1)
        if first < 0:
            return
        last = levels.rfind(1)
        start = (event.sample + first) / RATE
        end = (event.sample + last + 1) / RATE
        spans = result.assistant
        if spans and start - spans[-1].end_ms / 1000 <= self._merge_s:
            spans[-1].end_ms = end * 1000
        else:
            if spans:
                self._emit(spans[-1].end_ms / 1000, "assistant_end")
            spans.append(Span(start * 1000, end * 1000))
            self._emit(start, "assistant_start")
            if self._answer_at is None and (
                self._last_turn_end is None or start >= self._last_turn_end
            ):
                self._answer_at = start
                if self._last_turn_end is not None and self.result.turns:
                    turn = self._last_answered_turn()
                    if turn is not None:
                        turn.answer_ms = start * 1000
            if result.setup_ms is None and self.options.ready_on == "audio":
                result.setup_ms = (self._epoch + start - self._ws_open_at) * 1000
        self._last_audible_end = end

    def _last_answered_turn(self) -> Turn | None:
        for turn in reversed(self.result.turns):
            if turn.end_ms is not None:
                return turn if turn.answer_ms is None else None
        return None

    def _audible_near(self, t: float) -> bool:
        """Whether the assistant was heard at ``t`` or within a between-words pause before it."""
        end = self._last_audible_end
        return end is not None and t - end <= self._merge_s

    # --- the end ---------------------------------------------------------------------------------

    def _finish(self) -> None:
        result = self.result
        playout = self._playout
        if playout is not None:
            # Whatever was still queued at hang-up was never heard; account for what was.
            self._on_playout(playout.advance(self._clock()), [])
            result.bytes_received = playout.bytes_received
            result.bytes_cleared = playout.bytes_dropped
        if result.assistant:
            self._emit(result.assistant[-1].end_ms / 1000, "assistant_end")
        for turn in result.turns:
            if turn.barge_in and turn.onset_ms is not None:
                span = _span_at(result.assistant, turn.onset_ms, self.options.merge_ms)
                if span is not None:
                    turn.stop_ms = span.end_ms
        if result.failure is None:
            result.outcome = "completed"
        else:
            result.outcome = "failed"
            self._emit(result.duration_ms / 1000, "failed", result.failure)  # _emit takes s
        result.timeline.sort(key=lambda e: e.t_ms)
        if self.options.record_audio:
            result.caller_audio = bytes(self._caller_audio)
            result.assistant_audio = bytes(self._assistant_audio)

    def _fail(self, reason: str, detail: str) -> None:
        if self.result.failure is None:
            self.result.failure = reason
            self.result.failure_detail = detail
            log.info("call %s failed: %s %s", self.result.call_sid, reason, detail)

    def _close_text(self) -> str:
        code = self.result.close_code
        reason = self.result.close_reason
        return f"websocket closed with code {code}" + (f" ({reason})" if reason else "")

    def _emit(self, t: float, kind: str, detail: str = "") -> None:
        entry = TimelineEntry(round(t * 1000, 1), kind, detail)
        self.result.timeline.append(entry)
        if self._on_event is not None:
            self._on_event(entry)


def _span_at(spans: list[Span], t_ms: float, merge_ms: float) -> Span | None:
    """The utterance being heard at ``t_ms`` (or paused between words just before it)."""
    for span in spans:
        if span.start_ms <= t_ms <= span.end_ms + merge_ms:
            return span
    return None


def _stream_from_twiml(text: str, webhook_url: str) -> tuple[str, dict[str, str]]:
    """The ``<Connect><Stream>`` URL and ``<Parameter>`` pairs of a TwiML answer."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise _Failed("webhook_bad_twiml", f"{exc}: {text[:120]!r}") from None
    stream = root.find("./Connect/Stream")
    if root.tag != "Response" or stream is None:
        said = " ".join(t.strip() for t in root.itertext() if t.strip())
        raise _Failed("webhook_refused", f"TwiML without <Connect><Stream>: {said[:160]!r}")
    url = stream.get("url", "")
    if not url:
        raise _Failed("webhook_bad_twiml", "<Stream> without a url")
    if not urlsplit(url).scheme:
        base = urlsplit(websocket_url(webhook_url))
        url = urljoin(urlunsplit((base.scheme, base.netloc, base.path, "", "")), url)
    parameters = {
        p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter") if p.get("name")
    }
    return url, parameters


def websocket_url(url: str) -> str:
    """``url`` with ``http``/``https`` turned into ``ws``/``wss`` (other schemes kept)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit(parts._replace(scheme=scheme))


def _body(body: bytes | bytearray | None) -> str:
    return bytes(body or b"").decode("utf-8", "replace")[:200]


def _closed(exc: ConnectionClosed) -> str:
    frame = exc.rcvd
    if frame is None:
        return "websocket closed without a close frame"
    return f"websocket closed with code {frame.code}" + (
        f" ({frame.reason})" if frame.reason else ""
    )


async def run_call(
    script: Sequence[Step],
    options: CallOptions,
    **kwargs: Any,
) -> CallResult:
    """``await SimulatedCall(script, options, **kwargs).run()``."""
    return await SimulatedCall(script, options, **kwargs).run()
