"""The emulator's per-call runner: an aiortc answerer wired to one :class:`Engine`.

This is the only emulator module that touches aiortc. :class:`EmulatorCall` owns the peer
connection, the ``oai-events`` data channel, the inbound audio reader and the outbound
:class:`AssistantTrack`, and moves data between them and the sans-I/O engine:

* data-channel messages -> :meth:`Engine.receive_event`;
* inbound RTP audio (Opus decodes to 48 kHz stereo, PCMU to 8 kHz) -> 24 kHz mono frames ->
  :meth:`Engine.receive_audio`;
* every 20 ms the outbound track asks :meth:`Engine.next_output_frame` for the assistant's audio
  (the engine's clock tick rides on that call), so what the engine says was played is what
  went out on RTP;
* replies are encoded once, in the worker thread that renders them, and the track hands aiortc
  ready packets (Opus: a constant 3-byte packet for silence; PCMU/PCMA: 160 bytes of the
  law's silence): aiortc then skips its per-frame encoder hop to a thread and its pure-Python
  audio-level loop, which were most of a session's cost.
* with PCMU/PCMA negotiated, caller audio comes from the receive buffer's tap as the RTP
  payload and is decoded here by table (aiortc's decoder thread stays idle).
* after each of those, the engine's events go out on the data channel and its actions run:
  :class:`Render` in a worker thread (speech synthesis is CPU work), :class:`Close` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Final, Literal

import av
import numpy as np
import numpy.typing as npt
import soxr
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import SessionDescription, candidate_from_sdp
from av import AudioFrame

from gateway.audio.format import CARRIER_FRAME_SAMPLES, CARRIER_RATE, FRAME_MS
from gateway.audio.g711 import (
    ALAW_SILENCE,
    ULAW_SILENCE,
    alaw_to_array,
    array_to_ulaw,
    ulaw_to_alaw,
    ulaw_to_array,
)
from gateway.audio.resample import StreamResampler
from gateway.emulator.config import EngineConfig, Faults
from gateway.emulator.engine import FRAME_SAMPLES, Close, Engine, Render
from gateway.emulator.event_log import EventLog
from gateway.emulator.voice import SAMPLE_RATE, VoiceRenderer
from gateway.realtime.receiver import install_receive_buffer
from gateway.realtime.tracks import RemoteAudioReader

__all__ = [
    "AssistantTrack",
    "EmulatorCall",
    "PacingStats",
    "PacketCache",
    "g711_packets",
    "opus_packets",
]

log = logging.getLogger("gateway.emulator")

_FRAME_S: Final = FRAME_SAMPLES / SAMPLE_RATE
_TIME_BASE: Final = fractions.Fraction(1, SAMPLE_RATE)
_SILENCE: Final = np.zeros(FRAME_SAMPLES, dtype=np.int16)
_MAX_LATENESS_S: Final = 0.1  # beyond this the pacer re-anchors instead of bursting
_CLOSE_TIMEOUT_S: Final = 5.0
_OPUS_RATE: Final = 48000  # the RTP clock of Opus, whatever the coded bandwidth
_OPUS_TIME_BASE: Final = fractions.Fraction(1, _OPUS_RATE)
_OPUS_TICKS: Final = _OPUS_RATE // 50
_OPUS_BITRATE: Final = 40_000
_KEEP_PACKETS: Final = 4
_G711_TIME_BASE: Final = fractions.Fraction(1, CARRIER_RATE)
_G711: Final = ("audio/pcmu", "audio/pcma")
_DEFAULT_DEPTH: Final = 4  # G.711 receive tap without a configured buffer: aiortc's 80 ms

Pcm = npt.NDArray[np.int16]
OutFrame = Pcm | bytes | None
"""What the track's source returns: PCM to encode, a ready Opus packet, or None (silence)."""


def _opus_encoder() -> Any:
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate = SAMPLE_RATE
    ctx.layout = "mono"
    ctx.format = "s16"
    ctx.bit_rate = _OPUS_BITRATE
    ctx.options = {"application": "audio"}
    return ctx


def opus_packets(pcm: Pcm) -> list[bytes]:
    """``pcm`` (24 kHz mono) as one Opus packet per 20 ms frame, in order (CPU work).

    The encoder's 6.5 ms look-ahead shifts the audio by that much; the flushed tail packet
    is dropped so packet ``i`` always belongs to frame ``i``.
    """
    ctx = _opus_encoder()
    frames = -(-pcm.size // FRAME_SAMPLES)
    out: list[bytes] = []
    for i in range(frames):
        chunk = pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
        if chunk.size < FRAME_SAMPLES:
            chunk = np.concatenate((chunk, np.zeros(FRAME_SAMPLES - chunk.size, np.int16)))
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = i * FRAME_SAMPLES
        out.extend(bytes(p) for p in ctx.encode(frame))
    out.extend(bytes(p) for p in ctx.encode(None))
    silence = opus_silence()
    return out[:frames] + [silence] * (frames - len(out))


def g711_packets(pcm: Pcm, codec: str) -> list[bytes]:
    """``pcm`` (24 kHz mono) as one 160-byte G.711 packet per 20 ms (``audio/pcmu`` or
    ``audio/pcma``), the last padded with the law's silence (CPU work)."""
    pcm8k = soxr.resample(pcm, SAMPLE_RATE, CARRIER_RATE).astype(np.int16)  # a whole phrase
    ulaw = array_to_ulaw(pcm8k)
    frames = -(-pcm.size // FRAME_SAMPLES)
    ulaw = ulaw[: frames * CARRIER_FRAME_SAMPLES].ljust(
        frames * CARRIER_FRAME_SAMPLES, bytes([ULAW_SILENCE])
    )
    if codec == "audio/pcma":
        ulaw = ulaw_to_alaw(ulaw)
    n = CARRIER_FRAME_SAMPLES
    return [ulaw[i : i + n] for i in range(0, len(ulaw), n)]


class PacketCache:
    """Encoded packets of audio pieces by content key and codec (LRU, thread-safe); unkeyed
    audio is encoded every time. One per emulator process."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._cache: OrderedDict[Hashable, list[bytes]] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def packets(self, key: Hashable | None, pcm: Pcm, codec: str = "audio/opus") -> list[bytes]:
        encode = opus_packets if codec == "audio/opus" else lambda p: g711_packets(p, codec)
        if key is None:
            return encode(pcm)
        full = (codec, key)
        with self._lock:
            found = self._cache.get(full)
            if found is not None:
                self._cache.move_to_end(full)
                return found
        packets = encode(pcm)
        with self._lock:
            self._cache[full] = packets
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return packets


_SILENCE_PACKET: bytes | None = None


def opus_silence() -> bytes:
    """The Opus packet of 20 ms of digital silence (a few bytes; decodes to exact zeros)."""
    global _SILENCE_PACKET
    if _SILENCE_PACKET is None:
        ctx = _opus_encoder()
        packets: list[bytes] = []
        for i in range(10):  # past the encoder's start-up, silence packets are constant
            frame = AudioFrame.from_ndarray(
                np.zeros((1, FRAME_SAMPLES), np.int16), format="s16", layout="mono"
            )
            frame.sample_rate = SAMPLE_RATE
            frame.pts = i * FRAME_SAMPLES
            packets.extend(bytes(p) for p in ctx.encode(frame))
        _SILENCE_PACKET = packets[-1]
    return _SILENCE_PACKET


@dataclass(slots=True)
class PacingStats:
    """How punctually the outbound track produced its frames (for the capacity benchmark)."""

    frames: int = 0
    audio_frames: int = 0
    resyncs: int = 0
    lateness_ms: list[float] | None = None  # per frame, when recording is on

    def record(self, lateness_s: float) -> None:
        if self.lateness_ms is not None:
            self.lateness_ms.append(lateness_s * 1000.0)


class AssistantTrack(MediaStreamTrack):
    """The assistant's voice: one 20 ms 24 kHz mono frame per 20 ms of monotonic time.

    aiortc's sender pulls it; each pull asks ``source(now)`` for the frame (None = silence).
    aiortc's Opus encoder resamples to 48 kHz itself; feeding it 24 kHz keeps the sender's
    per-sample Python audio-level computation at half the cost of 48 kHz.
    """

    kind = "audio"

    def __init__(
        self, source: Callable[[float], OutFrame], *, record_lateness: bool = False
    ) -> None:
        super().__init__()
        self._source = source
        self._due: float | None = None
        self._pts = -FRAME_SAMPLES
        self._packet_time_base = _OPUS_TIME_BASE
        self._packet_ticks = _OPUS_TICKS
        self._packet_pts = -_OPUS_TICKS
        self.stats = PacingStats(lateness_ms=[] if record_lateness else None)

    def use_g711_packets(self) -> None:
        """Ready packets are G.711 (8 kHz clock, 160 samples each) rather than Opus."""
        self._packet_time_base = _G711_TIME_BASE
        self._packet_ticks = CARRIER_FRAME_SAMPLES
        self._packet_pts = -CARRIER_FRAME_SAMPLES

    async def recv(self) -> AudioFrame | av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._due is None:
            self._due = now
        elif self._due > now:
            await asyncio.sleep(self._due - now)
            if self.readyState != "live":
                raise MediaStreamError
            now = time.monotonic()
        if now - self._due > _MAX_LATENESS_S:
            self.stats.resyncs += 1
            self._due = now
        self.stats.record(now - self._due)
        self._due += _FRAME_S
        samples = self._source(now)
        self.stats.frames += 1
        if isinstance(samples, bytes):
            # pre-encoded: aiortc packs it as is (no encoding, no audio-level scan)
            packet = av.Packet(samples)
            self._packet_pts += self._packet_ticks
            packet.pts = self._packet_pts
            packet.time_base = self._packet_time_base
            return packet
        if samples is None:
            samples = _SILENCE
        else:
            self.stats.audio_frames += 1
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        self._pts += FRAME_SAMPLES
        frame.pts = self._pts
        frame.time_base = _TIME_BASE
        return frame


class EmulatorCall:
    """One WebRTC call of the emulator. :meth:`answer` the offer, later :meth:`close`."""

    def __init__(
        self,
        call_id: str,
        session: dict[str, Any],
        *,
        config: EngineConfig,
        faults: Faults,
        renderer: VoiceRenderer,
        packet_cache: PacketCache | None = None,
        event_log: EventLog | None = None,
        record_lateness: bool = False,
        on_closed: Callable[[EmulatorCall], None] | None = None,
    ) -> None:
        self.call_id = call_id
        self.session_id = str(session.get("id"))
        self.created_at = time.time()
        self.ended_at: float | None = None
        self.state: Literal["connecting", "active", "ended"] = "connecting"
        self.close_reason: str | None = None
        self.engine = Engine(session, config=config, now=time.monotonic())
        self.faults = faults
        self._renderer = renderer
        self._packet_cache = packet_cache or PacketCache()
        self._log = event_log
        self._on_closed = on_closed
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = AssistantTrack(self._next_frame, record_lateness=record_lateness)
        self.channel: RTCDataChannel | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: list[asyncio.TimerHandle] = []
        self._close_task: asyncio.Task[None] | None = None
        self.frames_received = 0  # caller frames (20 ms, after decoding)
        self.codec: str | None = None  # the answer's audio codec, lower case (audio/opus)
        self.opus = False  # the answer chose Opus: send pre-encoded packets
        self._packets: dict[str, list[bytes]] = {}  # response id -> its Opus packets
        self._abrupt = False  # close the peer without closing the channel first
        self._g711_in: _G711Input | None = None
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)

    # ------------------------------------------------------------------ setup

    async def answer(self, offer_sdp: str, *, blackhole: tuple[str, int] | None = None) -> str:
        """Apply the client's offer and return the answer SDP (``a=setup:active``).

        With the ``ice_delay_s`` / ``ice_fail`` faults, ICE is held back at the transport:
        the answer advertises ``blackhole`` (a UDP port nobody answers on) instead of our
        candidates, and our agent learns the client's candidates only when the delay is over
        (never, for ``ice_fail``), so no connectivity check can succeed before then.
        Raises :class:`ValueError` (or aiortc's errors) for an offer aiortc cannot use; the
        caller turns that into HTTP 400 and closes the call.
        """
        hold: float | None = None
        if self.faults.ice_fail:
            hold = math.inf
        elif self.faults.ice_delay_s is not None:
            hold = self.faults.ice_delay_s
        held: tuple[str | None, list[str]] = (None, [])
        if hold is not None and blackhole is not None:
            offer_sdp, held = _strip_candidates(offer_sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        if not any(t.kind == "audio" for t in self.pc.getTransceivers()):
            raise ValueError("the offer has no audio section")
        self.pc.addTrack(self.track)  # takes the offer's audio transceiver
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        answer = str(self.pc.localDescription.sdp)
        self.codec = _first_audio_codec(answer)
        self.engine.media_codec = self.codec
        self.opus = self.codec == "audio/opus"
        buffer_ms = self.engine.config.receive_buffer_ms
        depth = None if buffer_ms is None else round(buffer_ms / FRAME_MS)
        audio = next(t for t in self.pc.getTransceivers() if t.kind == "audio")
        if self.codec in _G711:
            self.track.use_g711_packets()
            self._g711_in = _G711Input(self.codec, echo=self.engine.config.reply == "echo")
            tap = self._on_g711_payload
            install_receive_buffer(audio.receiver, _DEFAULT_DEPTH if depth is None else depth, tap)
        elif depth is not None:
            install_receive_buffer(audio.receiver, depth)
        if hold is not None and blackhole is not None:
            answer = _redirect_candidates(answer, blackhole)
            if math.isfinite(hold):
                loop = asyncio.get_running_loop()
                self._timers.append(
                    loop.call_later(hold, lambda: self._spawn(self._release_ice(*held)))
                )
        return answer

    async def _release_ice(self, mid: str | None, candidates: list[str]) -> None:
        log.info("call %s: fault injection releases ICE", self.call_id)
        for line in candidates:
            candidate = candidate_from_sdp(line)
            candidate.sdpMid = mid
            candidate.sdpMLineIndex = 0
            await self.pc.addIceCandidate(candidate)
        await self.pc.addIceCandidate(None)

    def summary(self) -> dict[str, Any]:
        """The ``GET /emulator/sessions`` entry of this call."""
        stats = self.engine.stats
        return {
            "id": self.call_id,
            "session_id": self.session_id,
            "state": self.state,
            "session": self.engine.session,
            "created_at": self.created_at,
            "ended_at": self.ended_at,
            "close_reason": self.close_reason,
            "turns": stats.turns,
            "responses": stats.responses,
            "cancelled_responses": stats.cancelled_responses,
            "events_received": dict(stats.events_received),
            "events_sent": stats.events_sent,
            "errors_sent": stats.errors_sent,
            "held_audio_s": round(self.engine.held_audio_s, 2),
            "frames_received": self.frames_received,
            "frames_sent": self.track.stats.frames,
            "audio_frames_sent": self.track.stats.audio_frames,
        }

    # ------------------------------------------------------------------ aiortc callbacks

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and self.state == "connecting":
            self.state = "active"
            loop = asyncio.get_running_loop()
            if self.faults.close_peer_after_s is not None:
                self._timers.append(
                    loop.call_later(self.faults.close_peer_after_s, self._fault_close_peer)
                )
        elif state in ("failed", "closed"):
            self.close(f"peer connection {state}")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if self.channel is not None:
            log.warning("call %s: ignoring extra data channel %r", self.call_id, channel.label)
            return
        if channel.label != "oai-events":
            log.warning(
                "call %s: data channel is %r, not 'oai-events'", self.call_id, channel.label
            )
        self.channel = channel
        channel.on("message", self._on_message)
        channel.on("close", lambda: self.close("data channel closed by the client"))
        now = time.monotonic()
        self.engine.start(now)
        self._flush()
        loop = asyncio.get_running_loop()
        faults = self.faults
        if faults.close_channel_after_s is not None:
            self._timers.append(
                loop.call_later(faults.close_channel_after_s, self._fault_close_channel)
            )
        if faults.server_error_after_s is not None:
            self._timers.append(
                loop.call_later(faults.server_error_after_s, self._fault_server_error)
            )

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self.codec not in _G711:  # G.711 comes from the tap
            self._spawn(self._listen(track))

    def _on_g711_payload(self, payload: bytes, timestamp: int) -> None:
        if self._g711_in is None or self._close_task is not None:
            return
        now = time.monotonic()
        for frame in self._g711_in.frames(payload):
            self._heard(frame, now)

    def _on_message(self, message: str | bytes) -> None:
        if self._log is not None:
            self._log.write(self.call_id, "client", message)
        self.engine.receive_event(message, time.monotonic())
        self._flush()

    async def _listen(self, track: MediaStreamTrack) -> None:
        if self.engine.config.reply == "echo":
            # the caller's audio is played back: convert it with the quality resampler
            async for frame, received_at in RemoteAudioReader(track):
                self._heard(frame, received_at)
            return
        # Otherwise only its energy matters (turn detection): a cheap conversion will do.
        convert = _EnergyFrames(track)
        while True:
            try:
                decoded = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            if isinstance(decoded, AudioFrame):
                for frame in convert(decoded):
                    self._heard(frame, now)

    def _heard(self, frame: Pcm, received_at: float) -> None:
        self.frames_received += 1
        self.engine.receive_audio(frame, received_at)
        self._flush()

    def _next_frame(self, now: float) -> OutFrame:
        self.engine.tick(now)
        samples = self.engine.next_output_frame(now)
        position = self.engine.last_output
        self._flush()
        if not self.opus and self.codec not in _G711:
            return samples
        if samples is None or position is None:
            return opus_silence() if self.opus else _G711_SILENCE[self.codec or ""]
        self.track.stats.audio_frames += 1
        packets = self._packets.get(position[0])
        if packets is not None and position[1] < len(packets):
            return packets[position[1]]
        return samples  # audio without packets (not expected): aiortc encodes it

    # ------------------------------------------------------------------ engine outputs

    def _flush(self) -> None:
        events = self.engine.events_to_send()
        channel = self.channel
        if events and channel is not None and channel.readyState == "open":
            for event in events:
                text = json.dumps(event, separators=(",", ":"))
                channel.send(text)
                if self._log is not None:
                    self._log.write(self.call_id, "server", event)
        for action in self.engine.actions():
            if isinstance(action, Render):
                self._spawn(self._render(action))
            elif isinstance(action, Close):
                self.close(action.reason)

    async def _render(self, action: Render) -> None:
        audio, packets = await asyncio.to_thread(self._render_sync, action)
        if packets is not None:
            self._packets[action.response_id] = packets
            while len(self._packets) > _KEEP_PACKETS:  # only the playing answers need them
                del self._packets[next(iter(self._packets))]
        self.engine.reply_rendered(action.response_id, audio, time.monotonic())
        self._flush()

    def _render_sync(self, action: Render) -> tuple[Pcm, list[bytes] | None]:
        """Worker thread: the reply's audio and its packets in the call's codec (cached per
        phrase, like the phrase audio itself)."""
        parts = self._renderer.render_parts(action.request)
        audio = parts[0][1] if len(parts) == 1 else np.concatenate([p for _, p in parts])
        codec = self.codec
        if codec is None or (codec != "audio/opus" and codec not in _G711):
            return audio, None
        packets: list[bytes] = []
        for key, pcm in parts:
            packets.extend(self._packet_cache.packets(key, pcm, codec))
        return audio, packets

    def _fault_close_channel(self) -> None:
        if self.channel is not None:
            log.info("call %s: fault injection closes the data channel", self.call_id)
            self.channel.close()

    def _fault_close_peer(self) -> None:
        log.info("call %s: fault injection closes the peer connection", self.call_id)
        self._abrupt = True
        self.close("fault: peer connection closed")

    def _fault_server_error(self) -> None:
        self.engine.inject_error()
        self._flush()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call %s: task failed", self.call_id, exc_info=task.exception())

    # ------------------------------------------------------------------ end

    def close(self, reason: str) -> asyncio.Task[None]:
        """Close the call (idempotent); await the returned task to wait for the teardown."""
        if self._close_task is None:
            self.close_reason = reason
            self._close_task = asyncio.ensure_future(self._teardown())
        return self._close_task

    async def _teardown(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._flush()  # last events (session_expired) go out before the channel closes
        self.engine.close(self.close_reason or "closed")
        self.track.stop()
        if self.channel is not None and not self._abrupt:
            self.channel.close()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self.pc.close()
        except TimeoutError:
            log.error("call %s: peer connection did not close in time", self.call_id)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        for task in list(self._tasks):
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self.state = "ended"
        self.ended_at = time.time()
        log.info("call %s ended: %s", self.call_id, self.close_reason)
        if self._on_closed is not None:
            self._on_closed(self)


def _strip_candidates(sdp: str) -> tuple[str, tuple[str | None, list[str]]]:
    """The offer without its ICE candidates (and without end-of-candidates, so our agent waits
    for them), plus the first media section's mid and candidates to add later."""
    lines = sdp.splitlines()
    kept: list[str] = []
    candidates: list[str] = []
    mid: str | None = None
    section = -1
    for line in lines:
        if line.startswith("m="):
            section += 1
        if section == 0 and line.startswith("a=mid:") and mid is None:
            mid = line[len("a=mid:") :].strip()
        if line.startswith("a=candidate:"):
            if section == 0:
                candidates.append(line[len("a=candidate:") :])
            continue
        if line.startswith("a=end-of-candidates"):
            continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n", (mid, candidates)


def _redirect_candidates(sdp: str, address: tuple[str, int]) -> str:
    """The answer with one host candidate per section, pointing at ``address``."""
    out: list[str] = []
    seen_in_section = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            seen_in_section = False
        if line.startswith("a=candidate:"):
            if seen_in_section:
                continue
            seen_in_section = True
            bits = line.split()
            bits[4], bits[5] = address[0], str(address[1])
            bits[7:] = ["host"]
            line = " ".join(bits)
        out.append(line)
    return "\r\n".join(out) + "\r\n"


def _first_audio_codec(sdp: str) -> str | None:
    for media in SessionDescription.parse(sdp).media:
        if media.kind == "audio" and media.rtp.codecs:
            return str(media.rtp.codecs[0].mimeType).lower()
    return None


_G711_SILENCE: Final = {
    "audio/pcmu": bytes([ULAW_SILENCE]) * CARRIER_FRAME_SAMPLES,
    "audio/pcma": bytes([ALAW_SILENCE]) * CARRIER_FRAME_SAMPLES,
}


class _G711Input:
    """Caller G.711 payloads -> 480-sample 24 kHz frames: through the quality resampler when
    the reply echoes them, else each sample held three times (energy only, as
    :class:`_EnergyFrames`)."""

    def __init__(self, codec: str, *, echo: bool) -> None:
        self._alaw = codec == "audio/pcma"
        self._up = StreamResampler(CARRIER_RATE, SAMPLE_RATE) if echo else None
        self._pending = np.zeros(0, dtype=np.int16)

    def frames(self, payload: bytes) -> list[Pcm]:
        pcm8k = alaw_to_array(payload) if self._alaw else ulaw_to_array(payload)
        pcm = np.repeat(pcm8k, 3) if self._up is None else self._up.process(pcm8k)
        if self._pending.size:
            pcm = np.concatenate((self._pending, pcm))
        n = pcm.size // FRAME_SAMPLES
        self._pending = pcm[n * FRAME_SAMPLES :].copy()
        return [pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES] for i in range(n)]


class _EnergyFrames:
    """Decoded RTP audio -> 480-sample 24 kHz mono frames, cheaply, for turn detection only.

    Opus (48 kHz stereo) keeps every other sample of the left channel and PCMU (8 kHz) holds
    each sample three times: no anti-alias filtering, so the result is fit for measuring
    energy, not for listening. Other formats go through the quality resampler.
    """

    def __init__(self, track: MediaStreamTrack) -> None:
        self._track = track
        self._fallback: RemoteAudioReader | None = None

    def __call__(self, frame: AudioFrame) -> list[Pcm]:
        rate, channels = int(frame.sample_rate), len(frame.layout.channels)
        pcm = frame.to_ndarray().reshape(-1)
        if (rate, channels) == (48000, 2) and pcm.size == 4 * FRAME_SAMPLES:
            return [np.ascontiguousarray(pcm[::4])]
        if (rate, channels) == (8000, 1) and pcm.size * 3 == FRAME_SAMPLES:
            return [np.repeat(pcm, 3)]
        if self._fallback is None:
            self._fallback = RemoteAudioReader(self._track)  # used for its converter only
        return self._fallback.convert(frame)
