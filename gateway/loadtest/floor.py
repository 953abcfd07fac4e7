"""The capacity benchmark's floor: what one bare WebRTC peer per call costs (Opus, or PCMU/PCMA).

Whatever a gateway does, each phone call it bridges needs one aiortc peer connection that
encodes 50 Opus frames a second of caller audio, decrypts, decodes and consumes 50 frames a
second of assistant audio, and keeps ICE, DTLS/SRTP and SCTP alive. :func:`run_floor` measures
exactly that and nothing else, against the same Realtime endpoint (the emulator) and in the
same way the gateway benchmark is measured, so the gateway's CPU per call can be reported as
a ratio to this floor instead of an absolute figure that depends on the machine.

Per call: ``RTCPeerConnection(RTCConfiguration(iceServers=[]))``; the ``oai-events`` data
channel (the protocol requires it; nothing is sent on it, since the default session already
has server VAD that answers); one outbound track of caller speech alternating with silence,
as 48 kHz mono s16 20 ms frames paced on a monotonic clock by their timestamps, the way
aiortc's ``AudioStreamTrack`` paces; and one task that consumes the remote track (aiortc
queues decoded frames without bound otherwise). The offer goes out through the gateway's own
:class:`~gateway.realtime.signalling.Signalling` (``POST {base_url}/realtime/calls``,
multipart ``sdp`` + ``session`` with the server key), as
:class:`~gateway.realtime.session.RealtimeSession` does in its default (unified) mode.

CPU is this process's user + system time (every thread: aiortc encodes in the default
executor and decodes in a thread per receiver) over a steady window that starts once every
call is up and settled. Run it on its own CPU, apart from the emulator::

    taskset -c 0 .venv/bin/python -m gateway emulator --port 8765 --api-key K &
    taskset -c 1 .venv/bin/python -m gateway.loadtest.floor \\
        --base-url http://127.0.0.1:8765/v1 --api-key K --calls 30 --duration 20 --json

With ``--codec pcmu`` (or ``pcma``) the offer proposes that codec only, the session declares it
as its audio format, and the caller's loop is 8 kHz frames that aiortc encodes with its G.711
encoder: what a plain aiortc application on a phone-quality leg costs.

Measured that way on the 2-core development VM (aiortc 1.16): about 2.9 % of a core per call
at 10 and at 30 calls. Of that, libopus is about 1 % (encoding 150 µs, decoding 40 µs per
20 ms frame); the rest is aiortc's Python RTP/SRTP/SCTP path and the encoder's executor hop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import httpx
import numpy as np
import numpy.typing as npt
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from gateway.audio.tts import CALLER_VOICE, resample_buffer, synthesizer
from gateway.errors import UpstreamError
from gateway.observability import percentile
from gateway.realtime.session import DATA_CHANNEL_LABEL
from gateway.realtime.signalling import Signalling

__all__ = ["FloorResult", "caller_audio", "main", "run_floor"]

RATE: Final = 48000  # what aiortc's Opus encoder works at: no resampling on our side
FRAME_SAMPLES: Final = RATE // 50  # 20 ms
_FRAME_S: Final = 0.02
_CODEC_RATE: Final[dict[str, int]] = {"opus": RATE, "pcmu": 8000, "pcma": 8000}
# A decoded frame peaking above this is assistant speech; the emulator's silence decodes to 0.
AUDIBLE_PEAK: Final = 300
DEFAULT_SENTENCE: Final = "Hi, I would like a table for two tonight."
# The smallest session the Realtime API accepts with the offer; its defaults include server
# VAD that creates a response at the end of every caller turn.
SESSION: Final[dict[str, Any]] = {"type": "realtime", "model": "gpt-realtime"}


@dataclass(slots=True)
class FloorResult:
    """What one floor run measured. Counts and CPU cover the steady window only, except
    ``answers`` and ``calls_answered`` (the whole run: proof that the endpoint heard the
    caller and answered). CPU percentages are of one core (100 = one core busy)."""

    calls_requested: int
    calls_up: int  # calls up when the window started (ICE connected + data channel open)
    failed: int  # calls that never came up or went down before the window ended
    failures: list[str]  # one reason per failed call
    window_s: float
    cpu_seconds: float
    cpu_percent: float  # the whole process
    cpu_seconds_per_call_minute: float | None
    cpu_percent_per_call: float | None
    frames_sent: int
    frames_received: int  # remote audio frames decoded (the emulator sends silence too)
    audible_frames_received: int  # of those, frames carrying assistant speech
    answers: int  # spoken answers started (output_audio_buffer.started on the data channels)
    calls_answered: int  # calls that got at least one answer
    send_lateness_ms_p50: float | None  # how late the pacer woke for a frame's deadline
    send_lateness_ms_p99: float | None
    send_lateness_ms_max: float | None
    cpu_affinity: list[int] = field(default_factory=list)
    codec: str = "opus"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


@dataclass(slots=True)
class _Meter:
    """Shared by all calls: whether the window is open, and the pacing lateness in it."""

    measuring: bool = False
    lateness_s: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _CallerAudio:
    """The caller's loop as rows of one 20 ms frame each at ``rate`` (read-only; shared by
    every call)."""

    frames: npt.NDArray[np.int16]
    rate: int = RATE


def caller_audio(
    speech: npt.NDArray[np.int16] | None = None,
    *,
    speech_rate: int = 24000,
    silence_s: float = 4.0,
    rate: int = RATE,
) -> npt.NDArray[np.int16]:
    """The loop every caller plays: ``speech`` then ``silence_s`` of silence, at ``rate``
    (48 kHz for Opus, 8 kHz for G.711).

    ``speech`` is mono int16 at ``speech_rate``; None synthesizes :data:`DEFAULT_SENTENCE`
    (about 2.4 s). The silence must outlast the server VAD's 500 ms so that every loop is a turn
    the endpoint answers. Resampled once here, so the calls spend nothing on it.
    """
    if silence_s < 0.6:
        raise ValueError("silence_s must exceed the server VAD's 500 ms silence to end a turn")
    if speech is None:
        voiced = synthesizer().synthesize(DEFAULT_SENTENCE, CALLER_VOICE, rate)
    else:
        if speech.dtype != np.int16 or speech.ndim != 1 or not speech.size:
            raise ValueError("speech must be a non-empty 1-D int16 array")
        voiced = resample_buffer(speech, speech_rate, rate)
    pcm = np.concatenate((voiced, np.zeros(round(silence_s * rate), np.int16)))
    frame = rate // 50
    n = math.ceil(pcm.size / frame)
    return np.pad(pcm, (0, n * frame - pcm.size))


class _CallerTrack(MediaStreamTrack):
    """Plays the shared loop forever, one 20 ms frame per deadline of a monotonic clock.

    Frame *k* is due at ``start + k × 20 ms`` (no re-anchoring after a stall, like aiortc's
    ``AudioStreamTrack``), so lateness here is the event loop's, and a loop that cannot keep
    up shows as growing lateness. A fresh ``AudioFrame`` per frame: aiortc encodes in an
    executor thread, so a frame object cannot be shared between calls.
    """

    kind = "audio"

    def __init__(self, audio: _CallerAudio, meter: _Meter) -> None:
        super().__init__()
        self._audio = audio
        self._meter = meter
        self._start: float | None = None
        self.sent = 0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            due = self._start + self.sent * _FRAME_S
            if due > now:
                await asyncio.sleep(due - now)
                if self.readyState != "live":
                    raise MediaStreamError
                now = time.monotonic()
            if self._meter.measuring:
                self._meter.lateness_s.append(now - due)
        rows = self._audio.frames
        k = self.sent % rows.shape[0]
        frame = AudioFrame.from_ndarray(rows[k : k + 1], format="s16", layout="mono")
        frame.sample_rate = self._audio.rate
        frame.pts = self.sent * rows.shape[1]
        frame.time_base = fractions.Fraction(1, self._audio.rate)
        self.sent += 1
        return frame


class _SetupFailed(Exception):
    """A call did not come up; the message is the reason reported."""


class _Call:
    """One bare peer: open it, let it run, close it. Counters are cumulative."""

    def __init__(self, index: int, audio: _CallerAudio, meter: _Meter, codec: str = "opus") -> None:
        self.index = index
        self.codec = codec
        self.track = _CallerTrack(audio, meter)
        self.pc: RTCPeerConnection | None = None
        self.channel: RTCDataChannel | None = None
        self.call_id: str | None = None
        self.up = False
        self.failure: str | None = None
        self.received = 0
        self.audible = 0
        self.answers = 0
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._channel_open = asyncio.Event()
        self._lost = asyncio.Event()

    async def open(self, http: httpx.AsyncClient, signalling: Signalling) -> None:
        """Offer, POST, answer, then wait for ICE connected and the data channel open.

        Raises :class:`_SetupFailed` with the endpoint's refusal or the loss; the caller
        bounds the whole of it with its own timeout.
        """
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc = pc
        pc.on("connectionstatechange", self._on_connection_state)
        pc.on("track", self._on_track)
        transceiver = pc.addTransceiver(self.track, direction="sendrecv")
        mime = "audio/opus" if self.codec == "opus" else f"audio/{self.codec.upper()}"
        transceiver.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == mime]
        )
        channel = pc.createDataChannel(DATA_CHANNEL_LABEL)
        self.channel = channel
        channel.on("open", self._channel_open.set)
        channel.on("message", self._on_message)
        await pc.setLocalDescription(await pc.createOffer())
        try:
            answer = await signalling.post_offer(
                http, pc.localDescription.sdp, session=session_for(self.codec)
            )
        except UpstreamError as exc:
            raise _SetupFailed(str(exc)) from None
        self.call_id = answer.call_id
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
        for phase, event in (
            ("ICE connected", self._connected),
            ("data channel", self._channel_open),
        ):
            lost = asyncio.ensure_future(self._lost.wait())
            ready = asyncio.ensure_future(event.wait())
            try:
                await asyncio.wait({lost, ready}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in (lost, ready):
                    waiter.cancel()
                await asyncio.gather(lost, ready, return_exceptions=True)
            if not event.is_set():
                raise _SetupFailed(f"peer connection {pc.connectionState} before {phase}")
        self.up = True

    def _on_connection_state(self) -> None:
        assert self.pc is not None
        state = self.pc.connectionState
        if state == "connected":
            self._connected.set()
        elif state in ("failed", "closed") and not self._closing:
            self._lost.set()
            if self.failure is None:
                self.failure = f"peer connection {state}" + (" after setup" if self.up else "")

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._consumer is None:
            self._consumer = asyncio.ensure_future(self._consume(track))

    def _on_message(self, message: str | bytes) -> None:
        # A substring test, not a JSON parse: the floor should not pay for event handling.
        if isinstance(message, str) and '"output_audio_buffer.started"' in message:
            self.answers += 1

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.received += 1
            if isinstance(frame, AudioFrame):
                # packed s16: plane 0 holds every channel; it may be padded past the samples
                count = frame.samples * len(frame.layout.channels)
                pcm = np.frombuffer(memoryview(frame.planes[0]), dtype=np.int16, count=count)
                if count and int(pcm.max()) > AUDIBLE_PEAK:
                    self.audible += 1

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def close(self, http: httpx.AsyncClient, signalling: Signalling) -> asyncio.Task[None]:
        """Hang up (once) and close the peer; await the task to wait for the teardown."""
        if self._close_task is None:
            self._closing = True
            self._close_task = asyncio.ensure_future(self._teardown(http, signalling))
        return self._close_task

    async def _teardown(self, http: httpx.AsyncClient, signalling: Signalling) -> None:
        if self.call_id is not None and self.up and not self.lost:
            # As the gateway does: tell the service, then drop the peer. Best effort.
            with contextlib.suppress(UpstreamError, httpx.TimeoutException, TimeoutError):
                async with asyncio.timeout(5):
                    await signalling.hangup(http, self.call_id)
        self.track.stop()
        if self.channel is not None:
            self.channel.close()
        if self.pc is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self.pc.close()
        if self._consumer is not None:
            # the remote track ends with the peer; cancel in case it did not
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)


def session_for(codec: str) -> dict[str, Any]:
    """:data:`SESSION`, with the audio formats of a G.711 leg declared."""
    if codec == "opus":
        return SESSION
    fmt = {"format": {"type": f"audio/{codec}"}}
    return {**SESSION, "audio": {"input": fmt, "output": fmt}}


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


async def run_floor(
    base_url: str,
    api_key: str,
    *,
    calls: int,
    duration_s: float,
    ramp_s: float = 5.0,
    speech: npt.NDArray[np.int16] | None = None,
    speech_rate: int = 24000,
    silence_s: float = 4.0,
    settle_s: float = 1.0,
    setup_timeout_s: float = 20.0,
    codec: str = "opus",
) -> FloorResult:
    """Open ``calls`` bare peers against the Realtime endpoint at ``base_url`` (``.../v1``),
    measure this process's CPU over ``duration_s`` of steady state, close them all.

    Call starts are spread evenly over ``ramp_s`` so they do not all negotiate at once (which
    also staggers their turns). The window opens ``settle_s`` after the last call came up (or
    gave up after ``setup_timeout_s``). ``speech`` / ``speech_rate`` / ``silence_s`` make the
    caller's loop (see :func:`caller_audio`). A call that fails is reported with its reason in
    :attr:`FloorResult.failures`, never raised; per-call figures divide by the calls up at the
    start of the window. ``codec`` is the leg's: ``opus``, ``pcmu`` or ``pcma``.
    """
    if codec not in _CODEC_RATE:
        raise ValueError(f"codec must be one of {sorted(_CODEC_RATE)}, got {codec!r}")
    if calls < 1 or duration_s <= 0 or ramp_s < 0 or settle_s < 0 or setup_timeout_s <= 0:
        raise ValueError("need calls >= 1, duration_s > 0, ramp_s/settle_s >= 0, timeout > 0")
    rate = _CODEC_RATE[codec]
    pcm = await asyncio.to_thread(
        caller_audio, speech, speech_rate=speech_rate, silence_s=silence_s, rate=rate
    )
    rows = pcm.reshape(-1, rate // 50)
    rows.setflags(write=False)
    audio = _CallerAudio(rows, rate)
    meter = _Meter()
    peers = [_Call(i, audio, meter, codec) for i in range(calls)]

    signalling = Signalling(base_url, api_key)
    async with httpx.AsyncClient(timeout=setup_timeout_s) as http:

        async def start(call: _Call) -> None:
            await asyncio.sleep(call.index * ramp_s / calls)
            try:
                async with asyncio.timeout(setup_timeout_s):
                    await call.open(http, signalling)
            except _SetupFailed as exc:
                call.failure = str(exc)
            except TimeoutError:
                call.failure = call.failure or f"not up within {setup_timeout_s:g} s"
            except Exception as exc:  # aiortc raises assorted errors for unusable answers
                call.failure = f"{type(exc).__name__}: {exc}"
            if not call.up:
                await call.close(http, signalling)

        try:
            await asyncio.gather(*(start(c) for c in peers))
            if any(c.up for c in peers):
                await asyncio.sleep(settle_s)
            live = [c for c in peers if c.up and not c.lost]
            sent0 = sum(c.track.sent for c in live)
            received0 = sum(c.received for c in live)
            audible0 = sum(c.audible for c in live)
            meter.measuring = True
            cpu0, t0 = time.process_time(), time.monotonic()
            if live:  # with nothing up there is nothing to measure
                await asyncio.sleep(duration_s)
            cpu1, t1 = time.process_time(), time.monotonic()
            meter.measuring = False
            frames_sent = sum(c.track.sent for c in live) - sent0
            frames_received = sum(c.received for c in live) - received0
            audible = sum(c.audible for c in live) - audible0
            # Failures as of the end of the window; the hang-up that follows is no failure.
            for c in peers:
                if c.up and c.failure is None and c not in live:
                    c.failure = "lost before the window"
            failures = [f"call {c.index}: {c.failure}" for c in peers if c.failure is not None]
        finally:
            meter.measuring = False
            await asyncio.gather(*(c.close(http, signalling) for c in peers))

    window_s = t1 - t0
    cpu = cpu1 - cpu0
    n = len(live)
    lateness = sorted(meter.lateness_s)
    return FloorResult(
        calls_requested=calls,
        calls_up=n,
        failed=len(failures),
        failures=failures,
        window_s=round(window_s, 3),
        cpu_seconds=round(cpu, 4),
        cpu_percent=round(100 * cpu / window_s, 2) if n else 0.0,
        cpu_seconds_per_call_minute=round(cpu / n / (window_s / 60), 4) if n else None,
        cpu_percent_per_call=round(100 * cpu / window_s / n, 3) if n else None,
        frames_sent=frames_sent,
        frames_received=frames_received,
        audible_frames_received=audible,
        answers=sum(c.answers for c in peers),
        calls_answered=sum(1 for c in peers if c.answers),
        send_lateness_ms_p50=_ms(percentile(lateness, 0.5)),
        send_lateness_ms_p99=_ms(percentile(lateness, 0.99)),
        send_lateness_ms_max=_ms(lateness[-1] if lateness else None),
        cpu_affinity=sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [],
        codec=codec,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.loadtest.floor",
        description="CPU floor of the capacity benchmark: bare aiortc Opus peers, one per "
        "call, sending and receiving real-time audio against a Realtime endpoint.",
    )
    parser.add_argument(
        "--base-url", required=True, help="Realtime base URL, e.g. http://127.0.0.1:8765/v1"
    )
    parser.add_argument("--api-key", required=True, help="server key (Bearer)")
    parser.add_argument("--calls", type=int, required=True, help="concurrent calls")
    parser.add_argument("--duration", type=float, required=True, help="measured window, seconds")
    parser.add_argument("--ramp", type=float, default=5.0, help="spread call starts over this (s)")
    parser.add_argument("--settle", type=float, default=1.0, help="wait after ramp-up (s)")
    parser.add_argument(
        "--silence", type=float, default=4.0, help="silence after each utterance (s)"
    )
    parser.add_argument(
        "--codec", choices=sorted(_CODEC_RATE), default="opus", help="the leg's audio codec"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry; returns 0 when every call came up, 1 otherwise."""
    args = _parser().parse_args(argv)
    try:
        result = asyncio.run(
            run_floor(
                args.base_url,
                args.api_key,
                calls=args.calls,
                duration_s=args.duration,
                ramp_s=args.ramp,
                settle_s=args.settle,
                silence_s=args.silence,
                codec=args.codec,
            )
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        r = result
        print(f"codec               {r.codec}")
        print(f"calls up            {r.calls_up}/{r.calls_requested} (failed {r.failed})")
        for reason in r.failures:
            print(f"  {reason}")
        print(f"window              {r.window_s:.2f} s on CPUs {r.cpu_affinity}")
        print(f"cpu                 {r.cpu_seconds:.3f} s = {r.cpu_percent:.1f}% of a core")
        print(
            f"cpu per call        {r.cpu_percent_per_call}% of a core, "
            f"{r.cpu_seconds_per_call_minute} cpu-s per call-minute"
        )
        print(
            f"frames sent/recv    {r.frames_sent} / {r.frames_received} "
            f"({r.audible_frames_received} audible)"
        )
        print(f"answers             {r.answers} on {r.calls_answered} calls")
        print(
            f"send lateness       p50 {r.send_lateness_ms_p50} ms, "
            f"p99 {r.send_lateness_ms_p99} ms, max {r.send_lateness_ms_max} ms"
        )
    return 0 if result.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
