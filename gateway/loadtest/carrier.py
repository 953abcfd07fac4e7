"""The simulated carrier's pure parts: a Twilio-like playout buffer and the caller-side stream.

Sans-I/O, clock passed in. :mod:`gateway.loadtest.flow` drives these for each call;
tests drive them directly with made-up times.

:class:`PlayoutBuffer` behaves as Twilio's does for a bidirectional stream (PROTOCOLS.md B4):
media payloads queue and play in real time (8 bytes = 1 ms); a mark echoes once the audio
queued before it has played, at once if nothing is queued; ``clear`` drops the queue and echoes
pending marks at once. It works on a sample-exact media clock: every byte has a play position
(samples since ``epoch``), so what it reports does not depend on how often it is polled.

:class:`CallerStream` is the caller's side of one stream: it numbers messages the way Twilio
does (``sequenceNumber`` from 1 across all messages, ``chunk`` from 1 per track, ``timestamp``
in ms of media since the stream started) and renders them with a carrier-side codec
(:class:`~gateway.telephony.twilio.TwilioCarrierCodec` unless told otherwise: the other
dialects are in :mod:`gateway.loadtest.dialects`).
"""

from __future__ import annotations

import base64
import bisect
import math
import warnings
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from gateway.audio.format import CARRIER_FRAME_SAMPLES, CARRIER_RATE, FRAME_MS
from gateway.telephony.messages import (
    Connected,
    Dtmf,
    Ignored,
    InboundMessage,
    Mark,
    Media,
    OutboundMessage,
    Stop,
)
from gateway.telephony.twilio import TwilioCarrierCodec, start_message

with warnings.catch_warnings():
    # 3.11/3.12 warn that audioop goes away in 3.13, where audioop-lts provides the same module.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "AUDIBLE_PEAK",
    "FRAME_BYTES",
    "FRAME_MS",
    "RATE",
    "SILENCE_FRAME",
    "AudioPlayed",
    "CallerStream",
    "CarrierSideCodec",
    "Histogram",
    "MarkEchoed",
    "PlayoutBuffer",
    "PlayoutCleared",
    "PlayoutDrained",
    "PlayoutEvent",
    "PlayoutStarted",
    "Underrun",
    "audible",
    "audible_table",
]

RATE: Final = CARRIER_RATE
FRAME_BYTES: Final = CARRIER_FRAME_SAMPLES  # one byte a μ-law sample
SILENCE_FRAME: Final = b"\xff" * FRAME_BYTES
AUDIBLE_PEAK: Final = 300
"""PCM16 peak above which μ-law audio counts as audible (about -40 dBFS): above dither and
comfort noise, below any spoken syllable."""


def audible_table(peak: int = AUDIBLE_PEAK) -> bytes:
    """A ``bytes.translate`` table mapping each μ-law byte to 1 if louder than ``peak``, else 0."""
    decoded = audioop.ulaw2lin(bytes(range(256)), 2)
    levels = [
        abs(int.from_bytes(decoded[2 * i : 2 * i + 2], "little", signed=True)) for i in range(256)
    ]
    return bytes(1 if level > peak else 0 for level in levels)


_AUDIBLE: Final = audible_table()


def audible(payload: bytes, table: bytes = _AUDIBLE) -> bool:
    """Whether any sample of μ-law ``payload`` is louder than the table's threshold."""
    return 1 in payload.translate(table)


# --- playout events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AudioPlayed:
    """``payload`` played from ``at`` (sample ``sample`` of the media clock) on, without a gap."""

    at: float
    sample: int
    payload: bytes

    @property
    def end(self) -> float:
        return self.at + len(self.payload) / RATE


@dataclass(frozen=True, slots=True)
class MarkEchoed:
    """Echo ``name`` to the gateway now. ``played`` is false for marks flushed by a clear."""

    name: str
    at: float
    played: bool


@dataclass(frozen=True, slots=True)
class PlayoutStarted:
    """Audio began playing after the buffer was idle for ``idle_ms`` (``None`` the first time)."""

    at: float
    idle_ms: float | None


@dataclass(frozen=True, slots=True)
class PlayoutDrained:
    """The queue ran dry at ``at``: the caller hears silence from here."""

    at: float


@dataclass(frozen=True, slots=True)
class PlayoutCleared:
    """A ``clear`` arrived at ``at`` and dropped ``dropped_bytes`` of unplayed audio."""

    at: float
    dropped_bytes: int


@dataclass(frozen=True, slots=True)
class Underrun:
    """Playout starved inside assistant speech from ``start`` to ``end`` (seconds)."""

    start: float
    end: float

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000


PlayoutEvent = (
    AudioPlayed | MarkEchoed | PlayoutStarted | PlayoutDrained | PlayoutCleared | Underrun
)


class PlayoutBuffer:
    """A carrier's outbound playout queue on a sample-exact media clock starting at ``epoch``.

    Feed it what the gateway sends (:meth:`push_audio`, :meth:`push_mark`, :meth:`clear`) and
    call :meth:`advance` regularly (every 20 ms is plenty: results do not depend on it); each
    returns the events that happened up to ``now``, in order. Echo every :class:`MarkEchoed` to
    the gateway. ``now`` must not go backwards; an earlier value is treated as the latest seen.

    Underruns: a dry spell longer than ``gap_ms`` that ends with more audio, while the assistant
    is speaking, is an :class:`Underrun`. The assistant stops "speaking" at a ``clear``, when the
    caller calls :meth:`end_speech` (the caller started talking: a pause before the next answer
    is no underrun), or after a dry spell longer than ``max_gap_ms``.
    """

    def __init__(
        self,
        epoch: float,
        *,
        gap_ms: float = 40.0,
        max_gap_ms: float = 2000.0,
    ) -> None:
        self.epoch = epoch
        self.gap_ms = gap_ms
        self.max_gap_ms = max_gap_ms
        # ("audio", payload, arrival sample) | ("mark", name, arrival sample), in arrival order
        self._queue: deque[tuple[bool, bytes | str, int]] = deque()
        self._cursor = 0  # next sample position the playout can use
        self._playing = False
        self._idle_since: int | None = None  # sample at which the queue last ran dry
        self._speaking = False
        self._now = epoch
        self.bytes_received = 0
        self.bytes_played = 0
        self.bytes_dropped = 0
        self.marks_echoed = 0
        self.marks_cleared = 0
        self.clears = 0

    # --- inputs -------------------------------------------------------------------------------

    def push_audio(self, payload: bytes, now: float) -> list[PlayoutEvent]:
        """Queue audio that arrived at ``now``; returns what happened up to ``now``."""
        events = self.advance(now)
        if payload:
            self.bytes_received += len(payload)
            self._queue.append((True, payload, self._sample(self._now)))
        return events

    def push_mark(self, name: str, now: float) -> list[PlayoutEvent]:
        """Queue a mark; it echoes (in the returned events) at once if nothing is queued."""
        events = self.advance(now)
        self._queue.append((False, name, self._floor_sample(self._now)))
        events.extend(self.advance(now))
        return events

    def clear(self, now: float) -> list[PlayoutEvent]:
        """Drop queued audio and echo pending marks (unplayed) as Twilio does on ``clear``."""
        events = self.advance(now)
        at = self._now
        self.clears += 1
        dropped = 0
        for is_audio, item, _ in self._queue:
            if is_audio:
                dropped += len(item)
            else:
                self.marks_cleared += 1
                events.append(MarkEchoed(str(item), at, played=False))
        self._queue.clear()
        self.bytes_dropped += dropped
        events.append(PlayoutCleared(at, dropped))
        if self._playing:
            self._playing = False
            self._idle_since = self._cursor
        self._speaking = False
        return events

    def end_speech(self) -> None:
        """The caller started talking: a pause from here on is a turn boundary, not an underrun."""
        self._speaking = False

    # --- the clock ----------------------------------------------------------------------------

    def advance(self, now: float) -> list[PlayoutEvent]:
        """Play everything due by ``now``; returns the events in play order."""
        if now > self._now:
            self._now = now
        limit = self._floor_sample(self._now)
        events: list[PlayoutEvent] = []
        queue = self._queue
        while queue:
            is_audio, item, arrival = queue[0]
            if not is_audio:
                # A mark echoes once everything queued before it has played.
                at = max(self._cursor, arrival) if not self._playing else self._cursor
                if at > limit:
                    break
                queue.popleft()
                self.marks_echoed += 1
                events.append(MarkEchoed(str(item), self._time(at), played=True))
                continue
            if self._playing and arrival > self._cursor:
                self._drain(events)  # it arrived after the queue had run dry
            if not self._playing:
                start = max(self._cursor, arrival)
                if start > limit:
                    break
                self._begin(start, events)
            room = limit - self._cursor
            if room <= 0:
                break
            assert isinstance(item, bytes)
            if len(item) <= room:
                queue.popleft()
                piece = item
            else:
                piece = item[:room]
                queue[0] = (True, item[room:], arrival)
            events.append(AudioPlayed(self._time(self._cursor), self._cursor, piece))
            self._cursor += len(piece)
            self.bytes_played += len(piece)
        if self._playing and not queue and limit > self._cursor:
            # Played out and time has moved past the last sample: the caller hears silence.
            self._drain(events)
        return events

    def _drain(self, events: list[PlayoutEvent]) -> None:
        self._playing = False
        self._idle_since = self._cursor
        events.append(PlayoutDrained(self._time(self._cursor)))

    def _begin(self, start: int, events: list[PlayoutEvent]) -> None:
        idle_ms: float | None = None
        if self._idle_since is not None:
            idle_ms = (start - self._idle_since) * 1000 / RATE
            if self._speaking and idle_ms > self.max_gap_ms:
                self._speaking = False
            if self._speaking and idle_ms > self.gap_ms:
                events.append(Underrun(self._time(self._idle_since), self._time(start)))
        self._cursor = start
        self._playing = True
        self._speaking = True
        events.append(PlayoutStarted(self._time(start), idle_ms))

    # --- state --------------------------------------------------------------------------------

    @property
    def playing(self) -> bool:
        """Whether audio is playing (or queued to play without a gap) as of the last call."""
        return self._playing

    @property
    def queued_ms(self) -> float:
        """Audio queued and not yet played, as of the last call."""
        return sum(len(item) for is_audio, item, _ in self._queue if is_audio) * 1000 / RATE

    def _sample(self, t: float) -> int:
        """The first sample at or after ``t``: audio cannot play before it arrives."""
        return max(0, math.ceil((t - self.epoch) * RATE - 1e-6))

    def _floor_sample(self, t: float) -> int:
        """The last sample boundary at or before ``t``: what has surely elapsed."""
        return max(0, math.floor((t - self.epoch) * RATE + 1e-6))

    def _time(self, sample: int) -> float:
        return self.epoch + sample / RATE


# --- the caller's side of the stream -------------------------------------------------------------


class CarrierSideCodec(Protocol):
    """A carrier's end of a media stream (``TwilioCarrierCodec``, ``TelnyxCarrierCodec``,
    ``PlivoCarrierCodec``): renders what the carrier sends, parses what the gateway sends."""

    def encode(self, msg: InboundMessage) -> str: ...

    def encode_media(
        self,
        sequence_number: int,
        chunk: int,
        timestamp_ms: int,
        payload_b64: str,
        track: str = "inbound",
    ) -> str: ...

    def parse(self, frame: str | bytes) -> OutboundMessage | Ignored: ...


class CallerStream:
    """Numbers and renders the messages a carrier sends on one stream, as Twilio does.

    Call :meth:`connected` and :meth:`start` once, then :meth:`media` every 20 ms (media
    timestamps follow the media clock, so a late frame still carries its own time),
    :meth:`mark` for every :class:`MarkEchoed`, :meth:`dtmf` when the caller presses a key and
    :meth:`stop` last. :meth:`parse` reads the gateway's frames.
    """

    def __init__(
        self,
        *,
        stream_sid: str,
        call_sid: str,
        account_sid: str,
        custom_parameters: Mapping[str, str] | None = None,
        codec: CarrierSideCodec | None = None,
        connected: Connected | None = None,
    ) -> None:
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.account_sid = account_sid
        self.custom_parameters = dict(custom_parameters or {})
        self.codec: CarrierSideCodec = codec or TwilioCarrierCodec(stream_sid)
        self._connected = connected or Connected("Call", "1.0.0")
        self.sequence_number = 0
        self.chunk = 0

    def _next(self) -> int:
        self.sequence_number += 1
        return self.sequence_number

    def connected(self) -> str:
        return self.codec.encode(self._connected)

    def start(self) -> str:
        return self.codec.encode(
            start_message(
                stream_sid=self.stream_sid,
                call_sid=self.call_sid,
                account_sid=self.account_sid,
                custom_parameters=self.custom_parameters,
                sequence_number=self._next(),
            )
        )

    def media(self, payload_b64: str) -> str:
        """The next ``media`` frame; ``payload_b64`` is one base64 20 ms frame."""
        self.chunk += 1
        return self.codec.encode_media(
            self._next(), self.chunk, (self.chunk - 1) * FRAME_MS, payload_b64
        )

    def media_bytes(self, payload: bytes) -> str:
        return self.media(base64.b64encode(payload).decode("ascii"))

    def mark(self, name: str) -> str:
        return self.codec.encode(Mark(self.stream_sid, self._next(), name))

    def dtmf(self, digit: str) -> str:
        return self.codec.encode(Dtmf(self.stream_sid, self._next(), digit))

    def stop(self) -> str:
        return self.codec.encode(
            Stop(self.stream_sid, self._next(), self.call_sid, self.account_sid)
        )

    def parse(self, frame: str | bytes) -> OutboundMessage | Ignored:
        """A frame from the gateway; raises :class:`~gateway.errors.CarrierError` if bad."""
        return self.codec.parse(frame)

    def media_message(self, payload: bytes) -> Media:
        """The :class:`Media` the next :meth:`media` call would render (for tests)."""
        return Media(
            self.stream_sid,
            self.sequence_number + 1,
            self.chunk + 1,
            self.chunk * FRAME_MS,
            payload,
        )


# --- statistics -----------------------------------------------------------------------------------


class Histogram:
    """Fixed-bucket histogram of milliseconds: cheap to record, mergeable across calls.

    Buckets are ``resolution_ms`` wide up to ``max_ms``; larger values land in an overflow
    bucket (their true maximum is kept). Quantiles are bucket upper bounds, so they
    overestimate by at most one bucket.
    """

    def __init__(self, *, resolution_ms: float = 0.1, max_ms: float = 1000.0) -> None:
        self.resolution_ms = resolution_ms
        self.max_ms = max_ms
        self._counts = [0] * (math.ceil(max_ms / resolution_ms) + 1)
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def record(self, ms: float) -> None:
        index = int(ms / self.resolution_ms) if ms > 0 else 0
        self._counts[min(index, len(self._counts) - 1)] += 1
        self.count += 1
        self.total += ms
        if ms > self.max:
            self.max = ms

    def extend(self, values: Iterable[float]) -> None:
        for ms in values:
            self.record(ms)

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts (same resolution and range) into this one."""
        if (other.resolution_ms, other.max_ms) != (self.resolution_ms, self.max_ms):
            raise ValueError("histograms with different buckets cannot be merged")
        for i, n in enumerate(other._counts):
            if n:
                self._counts[i] += n
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1) in ms; 0 when empty."""
        if not 0 <= q <= 1:
            raise ValueError(f"quantile {q} is not within 0..1")
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        cumulative = list(_accumulate(self._counts))
        index = bisect.bisect_left(cumulative, rank)
        if index >= len(self._counts) - 1:
            return self.max
        return min((index + 1) * self.resolution_ms, self.max)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


def _accumulate(counts: list[int]) -> Iterable[int]:
    total = 0
    for n in counts:
        total += n
        yield total
