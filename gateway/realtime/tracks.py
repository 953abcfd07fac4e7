"""Audio at the aiortc edge: a paced track for the caller's audio and a remote-track reader.

The gateway's canonical audio is 24 kHz PCM16 mono in 20 ms frames (480 samples); on a G.711
Realtime leg it is the carrier's own bytes, 160 per 20 ms frame, which the track hands aiortc as
ready packets (aiortc then packs them into RTP as they are: no encoder, no hop to a thread, no
per-sample audio-level loop). aiortc pulls
the audio it sends from a track (``await track.recv()``), so the track sets the pace;
:class:`CallerAudioTrack` paces itself on a monotonic clock by frame timestamps, as aiortc's
``AudioStreamTrack`` does, and plays silence — never stale audio — when the carrier stalls.
:class:`RemoteAudioReader` turns the remote track's decoded frames (Opus: 48 kHz stereo; PCMU:
8 kHz mono) back into 480-sample 24 kHz mono frames with one resampler per call.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, CodecContext, Packet

from gateway.audio.format import (
    CARRIER_FRAME_SAMPLES,
    CARRIER_RATE,
    FRAME_MS,
    MODEL_FRAME_SAMPLES,
    MODEL_RATE,
    WEBRTC_RATE,
    LegFrame,
    UpstreamCodec,
)
from gateway.audio.g711 import ALAW_SILENCE, ULAW_SILENCE, alaw_to_array, g711_peak, ulaw_to_array
from gateway.audio.resample import StreamResampler
from gateway.errors import AudioFormatError

__all__ = [
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "CallerAudioStats",
    "CallerAudioTrack",
    "DecodedAudio",
    "EncodedAudio",
    "RemoteAudioReader",
    "RemoteAudioStats",
    "RtpDecoder",
    "RtpTimeline",
]

SAMPLE_RATE: Final = MODEL_RATE
FRAME_SAMPLES: Final = MODEL_FRAME_SAMPLES  # 480
_EPS: Final = 1e-6  # float slack when comparing sums of frame intervals with the clock
_FRAME_S: Final = FRAME_MS / 1000
_TIME_BASE: Final = fractions.Fraction(1, SAMPLE_RATE)
_SILENCE: Final = np.zeros(FRAME_SAMPLES, dtype=np.int16)
_SILENCE.setflags(write=False)
_G711_TIME_BASE: Final = fractions.Fraction(1, CARRIER_RATE)
OPUS_BITRATE: Final = 40_000
"""Bits per second of the caller's audio when the track encodes Opus: mono, and the carrier
narrowed it to 3.4 kHz already, so 40 kbit/s is transparent for it."""
_OPUS_TIME_BASE: Final = fractions.Fraction(1, 48000)  # Opus's RTP clock, whatever the rate
_OPUS_TICKS: Final = 960
_OPUS_SILENCE: Final = bytes([0xF8, 0xFF, 0xFE])  # a 20 ms Opus frame of silence (RFC 6716)
_G711_SILENCE: Final = {
    "pcmu": bytes([ULAW_SILENCE]) * CARRIER_FRAME_SAMPLES,
    "pcma": bytes([ALAW_SILENCE]) * CARRIER_FRAME_SAMPLES,
}


class _Cancellable(Protocol):
    def cancel(self) -> None: ...


@dataclass(slots=True)
class CallerAudioStats:
    """Counters of one caller-audio track (read them; do not write)."""

    frames_sent: int = 0  # every frame handed to aiortc, audio or silence
    audio_frames: int = 0  # frames that carried pushed audio
    silence_frames: int = 0  # frames filled with silence because the queue was empty
    dropped: int = 0  # oldest frames discarded because the queue was full
    cleared: int = 0  # frames discarded by clear()
    late_resyncs: int = 0  # times the pacer gave up catching up after a stall
    catch_up_frames: int = 0  # frames sent early to drain a backlog
    quiet_skipped: int = 0  # quiet frames left out to win back time given to inserted silence


class CallerAudioTrack(MediaStreamTrack):
    """The caller's audio to the model: 24 kHz mono PCM16 frames in, paced 20 ms frames out.

    Push frames with :meth:`push` as the carrier delivers them; aiortc's sender pulls them with
    :meth:`recv`, one per 20 ms of monotonic time. The queue is bounded: beyond ``max_frames``
    the oldest frame is dropped (and counted), so queued audio can never add more than
    ``max_frames`` × 20 ms of latency. While more than ``target_frames`` are queued (a backlog
    from call setup, or a burst after a carrier stall) frames go out ``catch_up`` times faster
    than real time until the queue is back at the target; ``catch_up=1`` disables that.

    A pushed frame goes out as soon as it is no more than ``lead`` (one frame) ahead of the
    track's clock, so caller audio does not sit waiting for the next 20 ms tick: with the carrier
    and the track ticking at the same rate but an arbitrary phase, that wait would add 0-20 ms
    (10 ms on average) to every frame. Timestamps stay contiguous, so the receiver's jitter
    buffer sees at most one frame of jitter.

    When nothing has arrived ``grace`` after a frame's due time the track sends silence, so the
    RTP stream never stalls and nothing stale is replayed. That silence takes a 20 ms slot the
    carrier's late frame would have had: from then on the track's clock runs a frame ahead of
    the carrier and every frame would wait for it, for the rest of the call (measured: 80 % of
    frames > 10 ms after one hiccup). So the track counts the slots it filled with silence
    right after audio (a hiccup, up to ``max_debt``; silence while the carrier has not started
    or has gone quiet for longer costs nothing to win back), and while a frame waits because
    the clock is ahead and such a debt is open, a *quiet* frame at the head of the queue (peak
    below ``quiet_peak``: the caller is not speaking) is left out instead, which wins the slot
    back without cutting speech. Audio pushed ahead of time with no debt is never altered.

    A stall of the event loop longer than ``max_lateness`` re-anchors the clock instead of
    bursting out the missed frames. ``clock`` must be monotonic (seconds) and
    ``call_later(delay, callback)`` must schedule on the same clock (tests pass a fake pair; the
    default is the event loop's).
    ``on_drop()`` is called for each frame dropped because the queue was full.
    ``on_handoff(seconds)`` is called with each audio frame's time from :meth:`push` (or its
    ``received_at``) to the moment aiortc takes it — the gateway-added caller -> model latency.

    ``codec`` is the Realtime leg's: ``opus`` takes 24 kHz PCM frames and hands aiortc
    ``AudioFrame``s to encode; ``pcmu``/``pcma`` take 160-byte frames already in that law and
    hand aiortc ``av.Packet``s on an 8 kHz clock, which its sender packs into RTP unchanged.
    Once the leg is known to be Opus, :meth:`encode_opus` makes the track encode each frame
    itself (24 kHz mono, :data:`OPUS_BITRATE`) and hand aiortc the packet: aiortc's own path
    resamples to 48 kHz stereo, encodes at 96 kbit/s in a thread-pool hop per frame and scans
    every sample in Python for the RTP audio level, which together cost more than the encoding.
    """

    kind = "audio"

    def __init__(
        self,
        *,
        max_frames: int = 50,
        target_frames: int = 2,
        catch_up: float = 2.0,
        max_lateness: float = 0.06,
        lead: float = _FRAME_S,
        grace: float = _FRAME_S,
        quiet_peak: int = 200,
        max_debt: int = 5,
        clock: Callable[[], float] = time.monotonic,
        call_later: Callable[[float, Callable[[], None]], _Cancellable] | None = None,
        on_handoff: Callable[[float], None] | None = None,
        on_drop: Callable[[], None] | None = None,
        codec: UpstreamCodec = "opus",
    ) -> None:
        super().__init__()
        if codec not in ("opus", "pcmu", "pcma"):
            raise ValueError(f"codec must be opus, pcmu or pcma, got {codec!r}")
        self.codec: Final[UpstreamCodec] = codec
        self._g711 = codec != "opus"
        self._silence: LegFrame = _SILENCE if codec == "opus" else _G711_SILENCE[codec]
        self._frame_ticks = FRAME_SAMPLES if codec == "opus" else CARRIER_FRAME_SAMPLES
        if max_frames < 1 or not 0 <= target_frames <= max_frames:
            raise ValueError(
                f"need 1 <= max_frames and 0 <= target_frames <= max_frames, "
                f"got max_frames={max_frames}, target_frames={target_frames}"
            )
        if catch_up < 1.0:
            raise ValueError(f"catch_up must be >= 1, got {catch_up}")
        self._queue: deque[tuple[LegFrame, float]] = deque()
        self._max_frames = max_frames
        self._target_frames = target_frames
        self._catch_up_interval = _FRAME_S / catch_up
        self._max_lateness = max_lateness
        self._lead = lead
        self._grace = grace
        self._quiet_peak = quiet_peak
        self._max_debt = max_debt
        self._debt = 0  # slots given to silence during a hiccup, not yet won back
        self._silence_run = max_debt  # silence frames sent since the last audio frame
        self._clock = clock
        self._call_later = call_later
        self._waiter: asyncio.Future[None] | None = None
        self._on_handoff = on_handoff
        self._on_drop = on_drop
        self._pts = -self._frame_ticks  # the first frame gets pts 0
        self._opus: Any = None  # the Opus encoder once encode_opus() was called
        self._due: float | None = None  # monotonic time the next frame is due
        self.stats = CallerAudioStats()

    def encode_opus(self) -> None:
        """Encode Opus here from now on (call before media flows, once the answer chose Opus;
        the packets' clock is Opus's 48 kHz RTP clock)."""
        if self._g711:
            raise ValueError(f"a {self.codec} track sends G.711, not Opus")
        if self._opus is None:
            ctx = CodecContext.create("libopus", "w")
            ctx.sample_rate = SAMPLE_RATE
            ctx.layout = "mono"
            ctx.format = "s16"
            ctx.bit_rate = OPUS_BITRATE
            ctx.options = {"application": "voip"}
            self._opus = ctx
            self._frame_ticks = _OPUS_TICKS
            self._pts = -_OPUS_TICKS

    @property
    def queued_frames(self) -> int:
        """Frames waiting to be sent."""
        return len(self._queue)

    def push(self, frame: LegFrame, received_at: float | None = None) -> None:
        """Queue one frame (480 int16 samples; 160 bytes on a G.711 leg); drops the oldest
        queued frame when full.

        ``received_at`` (monotonic seconds) is when the audio entered the gateway; it defaults to
        now. Raises :class:`~gateway.errors.AudioFormatError` for another type or length. Frames
        pushed after the track ended are ignored.
        """
        if self._g711:
            if not isinstance(frame, bytes) or len(frame) != CARRIER_FRAME_SAMPLES:
                raise AudioFormatError(
                    f"caller frames on a {self.codec} leg must be {CARRIER_FRAME_SAMPLES} bytes "
                    f"(20 ms of G.711), got {type(frame).__name__} of {len(frame)}"
                )
        elif (
            not isinstance(frame, np.ndarray)
            or frame.dtype != np.int16
            or frame.shape != (FRAME_SAMPLES,)
        ):
            raise AudioFormatError(
                f"caller frames must be {FRAME_SAMPLES} int16 samples (20 ms at 24 kHz), "
                f"got {_describe(frame)}"
            )
        if self.readyState != "live":
            return
        if len(self._queue) >= self._max_frames:
            self._queue.popleft()
            self.stats.dropped += 1
            if self._on_drop is not None:
                self._on_drop()
        self._queue.append((frame, self._clock() if received_at is None else received_at))
        self._wake()

    def clear(self) -> int:
        """Drop every queued frame (barge-in, end of turn); returns how many were dropped."""
        n = len(self._queue)
        self._queue.clear()
        self.stats.cleared += n
        return n

    async def recv(self) -> AudioFrame | Packet[Any]:
        """Called by aiortc's sender: wait until the next frame is due, then return it.

        Raises :class:`aiortc.mediastreams.MediaStreamError` once the track has been stopped,
        which ends aiortc's sender loop.
        """
        if self.readyState != "live":
            raise MediaStreamError
        now = self._clock()
        if self._due is None:
            self._due = now
        elif now - self._due > self._max_lateness:
            # The loop stalled: resume from now rather than bursting out the missed frames.
            self._due = now
            self.stats.late_resyncs += 1
        while True:
            if self._queue:
                if now >= self._due - self._lead - _EPS:
                    break  # the head frame may go out now
                if self._debt and self._is_quiet(self._queue[0][0]):
                    # The clock is ahead of the carrier: win a slot back on a quiet frame.
                    self._queue.popleft()
                    self._debt -= 1
                    self.stats.quiet_skipped += 1
                    continue
                wake_at = self._due - self._lead
            elif now >= self._due + self._grace - _EPS:
                break  # nothing came: silence
            else:
                wake_at = self._due + self._grace
            await self._wait(wake_at - now)
            if self.readyState != "live":
                raise MediaStreamError
            now = self._clock()

        if self._queue:
            samples, received_at = self._queue.popleft()
            self._silence_run = 0
            self.stats.audio_frames += 1
            if self._on_handoff is not None:
                self._on_handoff(now - received_at)
        else:
            samples = self._silence
            if self._silence_run < self._max_debt:  # a hiccup right after audio
                self._debt = min(self._debt + 1, self._max_debt)
            self._silence_run += 1
            self.stats.silence_frames += 1
        # Drain a backlog faster than real time; the frame timestamps stay contiguous, so the
        # receiver's jitter buffer simply holds the early audio.
        if len(self._queue) > self._target_frames:
            self._due += self._catch_up_interval
            self.stats.catch_up_frames += 1
        else:
            self._due += _FRAME_S
        self.stats.frames_sent += 1
        self._pts += self._frame_ticks
        if isinstance(samples, bytes):
            packet = Packet(samples)  # G.711 already: aiortc packs it into RTP as it is
            packet.pts = self._pts
            packet.time_base = _G711_TIME_BASE
            return packet
        # Cheaper than AudioFrame.from_ndarray (which re-validates the array every time).
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(samples.tobytes())
        frame.sample_rate = SAMPLE_RATE
        if self._opus is None:
            frame.pts = self._pts
            frame.time_base = _TIME_BASE
            return frame
        # libopus returns one packet per 20 ms frame (its look-ahead delays the audio, not
        # the packets); the RTP timestamp is ours, on Opus's 48 kHz clock.
        frame.pts = self.stats.frames_sent * FRAME_SAMPLES
        frame.time_base = _TIME_BASE
        packets = self._opus.encode(frame)
        packet = packets[-1] if packets else Packet(_OPUS_SILENCE)
        packet.pts = self._pts
        packet.time_base = _OPUS_TIME_BASE
        return packet

    def stop(self) -> None:
        """End the track: aiortc's sender stops pulling and queued audio is discarded."""
        self._queue.clear()
        super().stop()
        self._wake()

    def _is_quiet(self, samples: LegFrame) -> bool:
        if isinstance(samples, bytes):
            return g711_peak(samples, alaw=self.codec == "pcma") < self._quiet_peak
        return int(np.abs(samples).max()) < self._quiet_peak

    async def _wait(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if a frame is pushed (or the track stops)."""
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        call_later = self._call_later or loop.call_later
        handle = call_later(delay, self._wake)
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


@dataclass(frozen=True, slots=True)
class DecodedAudio:
    """One decoded frame, not resampled: by aiortc's decoder (Opus: 48 kHz interleaved stereo;
    PCMU/PCMA: 8 kHz mono) or by :class:`RtpDecoder` (Opus: 48 kHz mono).

    ``pcm`` is int16, interleaved when ``channels`` is 2. ``received_at`` is the monotonic time
    the frame was handed over.
    """

    pcm: npt.NDArray[np.int16]
    rate: int
    channels: int
    received_at: float


@dataclass(frozen=True, slots=True)
class EncodedAudio:
    """Model audio on a G.711 leg, as it came in RTP: ``payload`` in ``codec`` (``pcmu`` or
    ``pcma``, 8 kHz, one byte a sample), never decoded. ``received_at`` as for
    :class:`DecodedAudio`; a lost packet arrives as silence of its length before the next."""

    payload: bytes
    codec: UpstreamCodec
    received_at: float


class RtpTimeline:
    """Where each RTP payload of one stream should start, from its timestamps: a payload that
    starts later than the previous one ended follows a loss. ``clock_rate`` is the codec's RTP
    clock (8000 for G.711, 48000 for Opus); a jump beyond ``max_fill_s`` is a discontinuity
    (a new talk spurt, a restarted sender), not a loss, and is not filled."""

    def __init__(self, clock_rate: int, *, max_fill_s: float = 0.2) -> None:
        self.clock_rate = clock_rate
        self._max_fill = round(clock_rate * max_fill_s)
        self._next: int | None = None
        self.lost_ticks = 0

    def lost_before(self, timestamp: int, duration: int) -> int:
        """Ticks missing before this payload (0 when in sequence); then it is the last one."""
        lost = 0
        if self._next is not None:
            gap = (timestamp - self._next) & 0xFFFFFFFF
            if 0 < gap <= self._max_fill:
                lost = gap
        self._next = (timestamp + duration) & 0xFFFFFFFF
        self.lost_ticks += lost
        return lost


class RtpDecoder:
    """Tapped RTP payloads of one codec as mono PCM16 at the codec's own rate, on the caller's
    thread: Opus by libopus at 48 kHz mono (ffmpeg's wrapper renders 48 kHz whatever rate is
    asked; mono halves aiortc's stereo output), G.711 by table at 8 kHz. A lost packet comes
    back as silence of its length before the next payload, so the model's timing is kept.
    """

    def __init__(self, codec: UpstreamCodec) -> None:
        self.codec = codec
        self._opus: Any = None
        if codec == "opus":
            ctx = CodecContext.create("libopus", "r")
            ctx.sample_rate = WEBRTC_RATE
            ctx.layout = "mono"
            ctx.format = "s16"
            self._opus = ctx
            self.rate = WEBRTC_RATE
        elif codec in ("pcmu", "pcma"):
            self.rate = CARRIER_RATE
        else:
            raise AudioFormatError(f"cannot decode {codec!r} audio")
        self.timeline = RtpTimeline(self.rate)  # both clocks run at the decoded rate

    def decode(self, payload: bytes, timestamp: int) -> npt.NDArray[np.int16]:
        """The payload's samples, preceded by silence for any packets lost just before it."""
        if self._opus is not None:
            packet = Packet(payload)
            packet.pts = timestamp
            packet.time_base = _OPUS_TIME_BASE
            parts = [f.to_ndarray().reshape(-1) for f in self._opus.decode(packet)]
            pcm = parts[0] if len(parts) == 1 else np.concatenate(parts or [_EMPTY])
        else:
            pcm = ulaw_to_array(payload) if self.codec == "pcmu" else alaw_to_array(payload)
        lost = self.timeline.lost_before(timestamp, pcm.size)
        if lost:
            pcm = np.concatenate((np.zeros(lost, np.int16), pcm))
        return pcm.astype(np.int16, copy=False)


_EMPTY: Final = np.zeros(0, dtype=np.int16)


def _describe(frame: object) -> str:
    if isinstance(frame, np.ndarray):
        return f"dtype {frame.dtype} shape {frame.shape}"
    return type(frame).__name__


@dataclass(slots=True)
class RemoteAudioStats:
    """Counters of one remote-track reader."""

    frames_decoded: int = 0  # frames aiortc handed us (any rate and layout)
    frames_out: int = 0  # 480-sample 24 kHz frames yielded
    format_changes: int = 0  # times the decoded rate/layout changed (codec renegotiated)


class RemoteAudioReader:
    """Iterate the remote track as 480-sample 24 kHz mono int16 frames: ``(frame, received_at)``.

    ``received_at`` is the monotonic time aiortc handed over the decoded frame that completed
    this one. Opus arrives as 48 kHz interleaved stereo, PCMU/PCMA as 8 kHz mono; each is
    resampled by a :class:`~gateway.audio.resample.StreamResampler` kept for the whole call.
    Iteration ends when the remote track ends (the peer connection closed). Use one reader per
    track; it is not safe to iterate it from two tasks. Named for the track, not a direction:
    the gateway reads the model's audio with it, the emulator the caller's.
    """

    def __init__(
        self, track: MediaStreamTrack, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if track.kind != "audio":
            raise ValueError(f"expected an audio track, got {track.kind!r}")
        self._track = track
        self._clock = clock
        self._resampler: StreamResampler | None = None
        self._format: tuple[int, int] | None = None  # (rate, channels)
        self._resampled_from: tuple[int, int] | None = None  # what the resampler was made for
        self._pending = np.zeros(0, dtype=np.int16)
        self.stats = RemoteAudioStats()

    @property
    def decoded_format(self) -> tuple[int, int] | None:
        """``(rate, channels)`` of the last decoded frame: (48000, 2) for Opus, (8000, 1) PCMU."""
        return self._format

    def __aiter__(self) -> AsyncIterator[tuple[npt.NDArray[np.int16], float]]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[tuple[npt.NDArray[np.int16], float]]:
        async for audio in self.decoded():
            for out in self._to_model_rate(audio.pcm, audio.rate, audio.channels):
                yield out, audio.received_at

    async def decoded(self) -> AsyncIterator[DecodedAudio]:
        """The remote track's frames as decoded, each with its rate and layout: for a consumer
        that goes to its own rate in one hop (the gateway: 48 kHz straight to 8 kHz)."""
        while True:
            try:
                frame = await self._track.recv()
            except MediaStreamError:
                return
            received_at = self._clock()
            if not isinstance(frame, AudioFrame):
                raise AudioFormatError(f"remote audio track produced {type(frame).__name__}")
            pcm, rate, channels = self._unpack(frame)
            yield DecodedAudio(pcm, rate, channels, received_at)

    def _unpack(self, frame: AudioFrame) -> tuple[npt.NDArray[np.int16], int, int]:
        self.stats.frames_decoded += 1
        if frame.format.name != "s16":
            raise AudioFormatError(f"decoded audio is {frame.format.name}, expected s16 (packed)")
        fmt = (int(frame.sample_rate), len(frame.layout.channels))
        if fmt != self._format:
            if self._format is not None:
                self.stats.format_changes += 1
            self._format = fmt
        # to_ndarray() sizes the array to the audio; planes[0] is padded beyond it.
        pcm: npt.NDArray[np.int16] = frame.to_ndarray().reshape(-1).astype(np.int16, copy=False)
        return pcm, fmt[0], fmt[1]

    def convert(self, frame: AudioFrame) -> list[npt.NDArray[np.int16]]:
        """Turn one decoded frame into zero or more complete 24 kHz frames (sync, CPU only).

        Raises :class:`~gateway.errors.AudioFormatError` for a sample format other than packed
        s16, which aiortc's decoders never produce.
        """
        return self._to_model_rate(*self._unpack(frame))

    def _to_model_rate(
        self, pcm: npt.NDArray[np.int16], rate: int, channels: int
    ) -> list[npt.NDArray[np.int16]]:
        if (rate, channels) != self._resampled_from:  # the first frame, or a renegotiated codec
            self._resampled_from = (rate, channels)
            self._resampler = (
                None
                if (rate, channels) == (SAMPLE_RATE, 1)
                else StreamResampler(rate, SAMPLE_RATE, channels=channels)
            )
        if self._resampler is not None:
            pcm = self._resampler.process(pcm)
        if self._pending.size:
            pcm = np.concatenate((self._pending, pcm))
        n = pcm.size // FRAME_SAMPLES
        out = [pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES] for i in range(n)]
        self._pending = pcm[n * FRAME_SAMPLES :].copy()
        self.stats.frames_out += n
        return out
