"""The seams of a call: what the call runner needs from the world, declared once.

The call core (:mod:`gateway.bridge.core`) needs none of these: it takes values and returns
effects. The runner (:mod:`gateway.bridge.call`) is wired to one implementation of each:

- :class:`CarrierSocket` — the carrier's media-stream websocket (starlette's in the service,
  a scripted one in tests that inject faults at the transport);
- :class:`~gateway.telephony.messages.CarrierCodec` — the carrier's dialect, injected per stream:
  Twilio today; another carrier plugs in here with no change to the core or the runner;
- :class:`UpstreamSession` — one Realtime session (``gateway.realtime.session.RealtimeSession``),
  made by an :data:`UpstreamFactory` for the call's profile (the composition root maps the
  profile onto the client's own configuration);
- :class:`CarrierApi` — the carrier's REST API for call control; its failures are
  :class:`~gateway.errors.CarrierApiError`;
- :class:`CallHost` — the process a call runs in: settings, profiles, admission, metrics, the
  upstream factory, the registry of live calls (the app's ``GatewayState`` is one).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

from gateway.audio.format import LegFrame
from gateway.realtime import events as rt
from gateway.realtime.tracks import DecodedAudio, EncodedAudio
from gateway.telephony.messages import CarrierCodec

if TYPE_CHECKING:
    from gateway.admission import Admissions
    from gateway.bridge.adapters import CallServices
    from gateway.bridge.call import CallRunner
    from gateway.numbers import Profile, ProfileStore
    from gateway.observability import Metrics
    from gateway.outbound import Dialer
    from gateway.settings import Settings

__all__ = [
    "CallHost",
    "CarrierApi",
    "CarrierCodec",
    "CarrierGone",
    "CarrierSocket",
    "DecodedAudio",
    "EncodedAudio",
    "UpstreamFactory",
    "UpstreamSession",
]


class CarrierGone(Exception):
    """The carrier closed its websocket (or the connection dropped): not an error, the end."""

    def __init__(self, code: int | None = None) -> None:
        super().__init__(f"carrier websocket closed (code {code})")
        self.code = code


class CarrierSocket(Protocol):
    """The carrier's websocket, as the runner uses it.

    :meth:`receive` returns one frame and raises :class:`CarrierGone` once the carrier has
    closed; :meth:`send` writes one frame (the runner bounds how long it may take);
    :meth:`close` is called at most once, and only while :attr:`open`.
    """

    async def accept(self) -> None: ...

    async def receive(self) -> str | bytes: ...

    async def send(self, frame: str | bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...

    @property
    def open(self) -> bool: ...


class UpstreamSession(Protocol):
    """One Realtime session. :meth:`open` it, then read :meth:`events` and
    :meth:`audio_frames` until either ends, :meth:`send` client events and
    :meth:`push_audio` caller audio meanwhile, and :meth:`close` it when done with it (also
    after a failed :meth:`open`): every session the gateway opens is closed."""

    @property
    def call_id(self) -> str | None: ...

    async def open(self) -> None: ...

    def send(self, event: dict[str, Any]) -> None: ...

    def events(self) -> AsyncIterator[rt.ServerEvent]:
        """Server events in order; ends when the session is closed by us, raises
        :class:`~gateway.errors.UpstreamError` when it is lost."""
        ...

    def push_audio(self, frame: LegFrame, received_at: float) -> None:
        """Caller audio for the model: one 20 ms frame, 24 kHz PCM on an Opus leg or the
        leg's G.711 bytes."""
        ...

    @property
    def phase_spans(self) -> tuple[tuple[str, float, float], ...]:
        """Setup phases as ``(name, start, end)`` on the call's clock (for tracing)."""
        ...

    def model_audio(self) -> AsyncIterator[DecodedAudio | EncodedAudio]:
        """Model audio for the caller as decoded (any rate the core's transcoder takes: 48 kHz
        mono or stereo, 24 kHz or 8 kHz mono; the Realtime session gives 48 kHz mono for Opus)
        or, on a G.711 leg, as the RTP payload, with the time each frame was received."""
        ...

    async def close(self) -> None: ...


UpstreamFactory = Callable[["Profile"], UpstreamSession]


class CarrierApi(Protocol):
    """What call control needs from the carrier's REST API (:mod:`gateway.telephony.rest`).

    Both raise :class:`~gateway.errors.CarrierApiError` (whose text is for the operator) when
    the carrier refuses or cannot be reached.
    """

    async def hang_up(self, call_sid: str) -> object: ...

    async def transfer(self, call_sid: str, number: str) -> object: ...


class CallHost(Protocol):
    """The process a call runs in, read when the call starts (the app's ``GatewayState``)."""

    settings: Settings
    profiles: ProfileStore
    admissions: Admissions
    metrics: Metrics
    services: CallServices
    calls: dict[str, CallRunner]
    """Live calls by call SID: a call registers once bound and removes itself at its end."""
    recent: deque[dict[str, Any]]
    """Summaries of finished calls (bounded), for the admin API."""
    outbound: Dialer
    """The outbound calls this process placed (their variables, who answered)."""

    # Callables as read-only properties: a dataclass field holding a function is not a method.
    @property
    def upstream(self) -> UpstreamFactory: ...
    @property
    def clock(self) -> Callable[[], float]: ...
    @property
    def wall_clock(self) -> Callable[[], float]: ...
