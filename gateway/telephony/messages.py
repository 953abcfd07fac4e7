"""Carrier-neutral media-stream messages, and the codec interface every carrier dialect implements.

Inbound messages (carrier -> gateway) are what a carrier codec's ``parse()`` returns; outbound
messages (gateway -> carrier) are what its ``encode()`` accepts. All are frozen, slotted value
objects with audio already decoded to raw 8 kHz μ-law bytes, so the bridge never sees a
carrier's JSON shape, base64 or field spelling. A dialect (Twilio and SignalWire, Telnyx,
Plivo; see :mod:`gateway.telephony.carriers`) is a class satisfying :class:`CarrierCodec` that
maps its wire format onto these types.

::

    InboundMessage = Connected | Start | Media | Mark | Dtmf | Stop
    Ignored                      an unknown-but-harmless event: count it, carry on
    OutboundMessage = PlayAudio | PlayMark | ClearAudio
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Protocol

__all__ = [
    "MULAW_8K_MONO",
    "CarrierCodec",
    "ClearAudio",
    "Connected",
    "Dtmf",
    "Ignored",
    "InboundMessage",
    "Mark",
    "Media",
    "MediaFormat",
    "OutboundMessage",
    "PlayAudio",
    "PlayMark",
    "Start",
    "Stop",
    "frozen_mapping",
]

_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})


def frozen_mapping(items: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """A read-only copy of ``items``, for :attr:`Start.custom_parameters`."""
    return MappingProxyType(dict(items)) if items else _EMPTY


@dataclass(frozen=True, slots=True)
class MediaFormat:
    """The audio format a stream announces in its ``start`` message."""

    encoding: str
    sample_rate: int
    channels: int

    def __str__(self) -> str:
        return f"{self.encoding} {self.sample_rate} Hz, {self.channels} channel(s)"


MULAW_8K_MONO: Final = MediaFormat("audio/x-mulaw", 8000, 1)
"""The only format the gateway transcodes: G.711 μ-law, 8 kHz, mono."""


# --- inbound: carrier -> gateway -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """First message of a stream; carries no call data. Wait for :class:`Start`."""

    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    """The stream's metadata. Bind the stream to its call with ``call_sid`` and
    ``custom_parameters`` (the TwiML ``<Parameter>`` pairs), before trusting any media."""

    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    custom_parameters: Mapping[str, str] = field(default_factory=frozen_mapping)
    media_format: MediaFormat = MULAW_8K_MONO
    sequence_number: int = 1


@dataclass(frozen=True, slots=True)
class Media:
    """One chunk of caller audio: ``payload`` is raw μ-law (8000 bytes per second)."""

    stream_sid: str
    sequence_number: int
    chunk: int
    timestamp_ms: int
    payload: bytes
    track: str = "inbound"


@dataclass(frozen=True, slots=True)
class Mark:
    """A mark we sent has come back: the audio queued before it has played, or was cleared."""

    stream_sid: str
    sequence_number: int
    name: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    """The caller pressed a key (``0-9``, ``*``, ``#``, ``A-D``)."""

    stream_sid: str
    sequence_number: int
    digit: str
    track: str = "inbound_track"


@dataclass(frozen=True, slots=True)
class Stop:
    """The stream has ended (caller hung up or the call left the ``<Connect>``)."""

    stream_sid: str
    sequence_number: int
    call_sid: str
    account_sid: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A well-formed message of an event type we do not act on; count it and carry on."""

    event: str
    reason: str


InboundMessage = Connected | Start | Media | Mark | Dtmf | Stop


# --- outbound: gateway -> carrier ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlayAudio:
    """Queue raw μ-law audio for playout. The carrier buffers it; follow with a
    :class:`PlayMark` to learn when it has been played."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PlayMark:
    """Ask the carrier to echo ``name`` once everything queued before it has played."""

    name: str


@dataclass(frozen=True, slots=True)
class ClearAudio:
    """Drop everything the carrier has queued; pending marks echo at once, unplayed."""


OutboundMessage = PlayAudio | PlayMark | ClearAudio


class CarrierCodec(Protocol):
    """One media stream's codec for one carrier dialect (sans-I/O: no sockets, no clock).

    Create one per stream. Feed every received websocket frame to :meth:`parse` and act on
    the message it returns, then on every message :meth:`drain` returns (a dialect whose frames
    may arrive out of order holds early ones back and releases them there, in order); send
    whatever :meth:`encode` returns as one frame. ``parse`` raises
    :class:`gateway.errors.CarrierError` subclasses for bad input and never anything else.
    """

    @property
    def stream_sid(self) -> str | None:
        """The stream id learnt from ``start``; ``None`` until then."""
        ...

    def parse(self, frame: str | bytes) -> InboundMessage | Ignored: ...

    def drain(self) -> tuple[InboundMessage, ...]:
        """Messages released after the one :meth:`parse` returned (empty for in-order dialects)."""
        ...

    def encode(self, msg: OutboundMessage) -> str | bytes: ...
