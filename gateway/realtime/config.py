"""What the Realtime client needs to know, as values: :class:`RealtimeConfig` per process,
with its :class:`SetupTimeouts` and :class:`IceServer` entries.

Built once at start-up (the gateway maps its settings onto it in :mod:`gateway.upstream`) and
shared by every call; the per-call session body is passed to
:class:`~gateway.realtime.session.RealtimeSession` itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import httpx

__all__ = ["MAX_RECEIVE_DEPTH", "IceServer", "RealtimeConfig", "SetupTimeouts"]

MAX_RECEIVE_DEPTH = 8
"""The longest reorder tolerance of the short receive buffer, in 20 ms packets; beyond it
aiortc's own buffer (which smooths, not only reorders) is the better tool."""


@dataclass(frozen=True, slots=True)
class IceServer:
    """One STUN/TURN server for the peer connection (``urls`` like ``stun:host:3478``)."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class SetupTimeouts:
    """Seconds each setup phase may take before :class:`~gateway.errors.UpstreamTimeout`
    names it.

    ``sdp_exchange`` also bounds the ephemeral ``client_secret`` request. The sum is the worst
    case of :meth:`~gateway.realtime.session.RealtimeSession.open`; a caller with an overall
    budget should cancel ``open()`` at its own deadline (cancellation cleans up too).
    """

    sdp_exchange: float = 10.0
    ice_dtls: float = 10.0
    data_channel: float = 5.0
    session_created: float = 5.0
    session_updated: float = 5.0


@dataclass(frozen=True, slots=True)
class RealtimeConfig:
    """How to reach the Realtime API; one value shared by every call of a process.

    ``auth="unified"`` posts the offer and the session together with the server key (the
    default, server to server); ``"ephemeral"`` first mints an ``ek_...`` key. ``ice_servers``
    empty means host candidates only (loopback, the emulator). ``audio_codecs`` restricts and
    orders what the offer proposes, e.g. ``("audio/opus",)`` or ``("audio/PCMU",)``; empty keeps
    aiortc's list (Opus first). ``http_client`` (shared, pooled; not closed by the session) or
    ``transport`` (wrapped in a per-request client) replace the default HTTP stack.
    The ``caller_*`` values bound the caller-audio queue (see
    :class:`~gateway.realtime.tracks.CallerAudioTrack`); ``caller_catch_up=1`` never sends
    faster than real time, at the price of keeping a setup backlog as added latency.
    """

    base_url: str
    api_key: str = field(repr=False)
    auth: Literal["unified", "ephemeral"] = "unified"
    ice_servers: tuple[IceServer, ...] = ()
    timeouts: SetupTimeouts = field(default_factory=SetupTimeouts)
    audio_codecs: tuple[str, ...] = ()
    client_secret_ttl_s: int = 600
    safety_identifier: str | None = None
    caller_max_frames: int = 50
    caller_target_frames: int = 2
    caller_catch_up: float = 2.0
    receive_buffer_packets: int | None = None
    """Reorder tolerance of the model-audio receiver, in 20 ms packets
    (:class:`~gateway.realtime.receiver.ShortJitterBuffer`: in-sequence audio is never held);
    None keeps aiortc's own buffer, which holds every frame for four more (80 ms)."""
    http_client: httpx.AsyncClient | None = field(default=None, compare=False, repr=False)
    transport: httpx.AsyncBaseTransport | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.auth not in ("unified", "ephemeral"):
            raise ValueError(f"auth must be 'unified' or 'ephemeral', got {self.auth!r}")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        depth = self.receive_buffer_packets
        if depth is not None and not 0 <= depth <= MAX_RECEIVE_DEPTH:
            raise ValueError(
                f"receive_buffer_packets must be within 0..{MAX_RECEIVE_DEPTH} or None"
            )
        if not 10 <= self.client_secret_ttl_s <= 7200:
            raise ValueError("client_secret_ttl_s must be within 10..7200 seconds")
