"""One upstream Realtime call over WebRTC: :class:`RealtimeSession`, the peer's lifecycle.

The HTTP requests are :mod:`gateway.realtime.signalling`'s, the values this takes are
:mod:`gateway.realtime.config`'s; this module owns the aiortc peer connection, the data
channel, the audio tracks, the setup phases and the close.

Setup, in order, each phase with its own timeout
(:class:`~gateway.realtime.config.SetupTimeouts`), its duration recorded in
:attr:`RealtimeSession.setup_timings` (seconds) and its start and end in
:attr:`RealtimeSession.phase_spans` (the session's clock, for tracing):

``offer``
    aiortc peer (explicit ICE servers, never aiortc's public-STUN default), the caller-audio track,
    the ``oai-events`` data channel — created *before* the offer so the SDP carries it — and
    ``setLocalDescription``, which gathers every candidate (no trickle ICE).
``client_secret`` (ephemeral auth only)
    :meth:`Signalling.client_secret <gateway.realtime.signalling.Signalling.client_secret>`
    mints an ``ek_...`` key for the session.
``sdp_exchange``
    :meth:`Signalling.post_offer <gateway.realtime.signalling.Signalling.post_offer>`: the
    offer out, the answer SDP and the ``rtc_...`` call id back. An HTTP error raises
    :class:`~gateway.errors.UpstreamRefused` with the server's code and message.
``ice_dtls``, ``data_channel``, ``session_created``
    the peer connects, the channel opens, the server says ``session.created``.
``session_updated``
    we send ``session.update`` with the session and wait for ``session.updated``; an ``error``
    in reply raises :class:`~gateway.errors.UpstreamRejected` naming the code and param.

A phase that overruns raises :class:`~gateway.errors.UpstreamTimeout` naming it; a peer that
fails meanwhile raises :class:`~gateway.errors.UpstreamLost`. Whatever fails, :meth:`open`
closes everything it started before it raises.

After :meth:`RealtimeSession.open` the bridge uses :meth:`~RealtimeSession.send`,
:meth:`~RealtimeSession.events`, :meth:`~RealtimeSession.push_audio`,
:meth:`~RealtimeSession.audio_frames` and finally :meth:`~RealtimeSession.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final, Literal, TypeVar

import httpx
import numpy as np
import numpy.typing as npt
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack

from gateway.audio.format import CARRIER_RATE, RTP_MIME, LegFrame, UpstreamCodec
from gateway.audio.g711 import ALAW_SILENCE, ULAW_SILENCE
from gateway.audio.resample import StreamResampler
from gateway.errors import (
    AudioFormatError,
    UpstreamCodecRefused,
    UpstreamError,
    UpstreamLost,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamTimeout,
)
from gateway.realtime import events as rt
from gateway.realtime.config import RealtimeConfig
from gateway.realtime.receiver import ShortJitterBuffer, install_receive_buffer
from gateway.realtime.sdp import audio_codecs, complete_static_rtpmaps, negotiated_audio_codec
from gateway.realtime.signalling import Signalling, http_client
from gateway.realtime.tracks import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    CallerAudioTrack,
    DecodedAudio,
    EncodedAudio,
    RemoteAudioReader,
    RemoteAudioStats,
    RtpDecoder,
    RtpTimeline,
)

__all__ = ["DATA_CHANNEL_LABEL", "RealtimeSession", "open_peer_connections"]

log = logging.getLogger("gateway.realtime")

DATA_CHANNEL_LABEL: Final = "oai-events"

# Operator-facing names of the setup phases, used in timeout and loss messages.
_PHASE_NAMES: Final = {
    "client_secret": "client secret request",
    "sdp_exchange": "SDP exchange",
    "ice_dtls": "ICE+DTLS",
    "data_channel": "data channel open",
    "session_created": "session.created",
    "session_updated": "session.updated",
}
_CLOSE_TIMEOUT_S: Final = 5.0
# The upstream hang-up on close: long enough for a healthy API, short enough not to hold a
# call's cleanup (its admission is released after the session closes).
_HANGUP_TIMEOUT_S: Final = 2.0
_T = TypeVar("_T")
# A G.711 leg always gets the short receive buffer (its tap is how audio skips the decoder);
# this depth when the config keeps aiortc's own buffer.
_G711_RECEIVE_DEPTH: Final = 2

_PEERS: weakref.WeakSet[RTCPeerConnection] = weakref.WeakSet()


def open_peer_connections() -> int:
    """Peer connections this process created that are not closed yet (a leak shows here)."""
    return sum(1 for pc in list(_PEERS) if pc.connectionState != "closed")


class _End:
    """Marks the end of the event stream in the queue."""


_END: Final = _End()
_QueueItem = rt.ServerEvent | UpstreamProtocolError | _End


class _EventStream:
    """Async iterator over the session's server events (see :meth:`RealtimeSession.events`)."""

    def __init__(self, session: RealtimeSession) -> None:
        self._session = session

    def __aiter__(self) -> _EventStream:
        return self

    async def __anext__(self) -> rt.ServerEvent:
        queue = self._session._events
        item = await queue.get()
        if isinstance(item, _End):
            queue.put_nowait(item)  # every later call ends the same way
            if self._session.lost:
                raise UpstreamLost(
                    f"Realtime session lost: {self._session.close_reason}", code="lost"
                )
            raise StopAsyncIteration
        if isinstance(item, UpstreamProtocolError):
            raise item
        return item


class RealtimeSession:
    """One Realtime call over WebRTC, for one phone call. Create, :meth:`open`, use, :meth:`close`.

    ``session`` is the GA session object applied at setup (``type`` required). The session
    object is single use: ``open()`` once; ``close()`` any number of times, from any task.
    ``on_caller_audio_handoff(seconds)`` reports, per caller frame, the time from
    :meth:`push_audio` (or its ``received_at``) until aiortc takes the frame;
    ``on_caller_audio_drop()`` is called for each caller frame dropped because the caller-audio
    queue was full (a carrier flooding faster than real time).

    ``codec`` is the audio codec of this call's leg. ``opus`` (the default) offers the config's
    ``audio_codecs`` (all of aiortc's when empty); :meth:`push_audio` takes 24 kHz PCM and
    :meth:`model_audio` yields :class:`DecodedAudio`. ``pcmu`` or ``pcma`` offers that codec
    only and carries G.711 bytes both ways untouched: :meth:`push_audio` takes 160-byte frames
    in that law and :meth:`model_audio` yields :class:`EncodedAudio` straight from the receive
    buffer (aiortc's decoder never runs). An answer without the codec fails :meth:`open` with
    :class:`~gateway.errors.UpstreamCodecRefused`.
    """

    def __init__(
        self,
        config: RealtimeConfig,
        session: Mapping[str, Any],
        *,
        codec: UpstreamCodec = "opus",
        on_caller_audio_handoff: Callable[[float], None] | None = None,
        on_caller_audio_drop: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Validate now: a session without a GA type is our bug, not the upstream's.
        self._session_body: dict[str, Any] = rt.session_update(session)["session"]
        self._config = config
        self._signalling = Signalling(
            config.base_url, config.api_key, safety_identifier=config.safety_identifier
        )
        self._clock = clock
        if codec not in RTP_MIME:
            raise ValueError(f"codec must be one of {sorted(RTP_MIME)}, got {codec!r}")
        self.codec: UpstreamCodec = codec
        self._caller_track = CallerAudioTrack(
            max_frames=config.caller_max_frames,
            target_frames=config.caller_target_frames,
            catch_up=config.caller_catch_up,
            clock=clock,
            on_handoff=on_caller_audio_handoff,
            on_drop=on_caller_audio_drop,
            codec=codec,
        )
        self._events: asyncio.Queue[_QueueItem] = asyncio.Queue()
        # Model audio from the receive buffer's tap, as (payload, RTP timestamp, received at);
        # None marks the end.
        self._rtp: asyncio.Queue[tuple[bytes, int, float] | None] = asyncio.Queue()
        self._tapped = False
        self._audio_stats: RemoteAudioStats | None = None
        self._state: Literal["new", "opening", "open", "closed"] = "new"
        self._pc: RTCPeerConnection | None = None
        self.hung_up: bool | None = None
        """None until :meth:`close` asked the service to end the call; then whether it did."""
        self.receive_buffer: ShortJitterBuffer | None = None
        """The model-audio receiver's buffer when ``receive_buffer_packets`` is set."""
        self._channel: RTCDataChannel | None = None
        self._reader: RemoteAudioReader | None = None
        self._call_id: str | None = None
        self._audio_codec: str | None = None
        self._timings: dict[str, float] = {}
        self._phase_spans: list[tuple[str, float, float]] = []
        self._close_reason: str | None = None
        self._lost = False
        self._close_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        # setup rendezvous, created in open() on the running loop
        self._remote: asyncio.Future[MediaStreamTrack] | None = None
        self._connected: asyncio.Future[None] | None = None
        self._channel_open: asyncio.Future[None] | None = None
        self._created: asyncio.Future[rt.ServerEvent] | None = None
        self._updated: asyncio.Future[rt.ServerEvent] | None = None
        self._update_event_id: str | None = None
        self._lost_reason: asyncio.Future[str] | None = None
        self.events_received = 0
        self.protocol_errors = 0

    # ------------------------------------------------------------------ properties

    @property
    def call_id(self) -> str | None:
        """The upstream call id (``rtc_...``) from ``Location``; None before the SDP exchange."""
        return self._call_id

    @property
    def setup_timings(self) -> dict[str, float]:
        """Seconds spent in each setup phase so far, plus ``total`` once :meth:`open` returned."""
        return dict(self._timings)

    @property
    def phase_spans(self) -> tuple[tuple[str, float, float], ...]:
        """``(phase, start, end)`` of each setup phase run so far, in order, in the session's
        clock (``time.monotonic`` unless one was injected).

        The same phases as :attr:`setup_timings` (without ``total``), with when they ran, so a
        tracer can draw them on the call's timeline; a phase that failed or timed out is here
        too, ending when it gave up.
        """
        return tuple(self._phase_spans)

    @property
    def state(self) -> Literal["new", "opening", "open", "closed"]:
        return self._state

    @property
    def connection_state(self) -> str:
        """The aiortc peer connection state (``new`` before :meth:`open`)."""
        return "new" if self._pc is None else str(self._pc.connectionState)

    @property
    def audio_codec(self) -> str | None:
        """The codec the answer chose for audio, e.g. ``audio/opus`` or ``audio/PCMU``."""
        return self._audio_codec

    @property
    def close_reason(self) -> str | None:
        """Why the session closed (None while it is open)."""
        return self._close_reason

    @property
    def lost(self) -> bool:
        """True when the upstream went away or failed, rather than being closed by us."""
        return self._lost

    @property
    def caller_track(self) -> CallerAudioTrack:
        """The caller's audio on its way to the model (read its ``stats`` and ``queued_frames``)."""
        return self._caller_track

    @property
    def model_audio_stats(self) -> RemoteAudioStats | None:
        """Counters of the model-audio reader, once :meth:`audio_frames` or
        :meth:`model_audio` has started."""
        if self._reader is not None:
            return self._reader.stats
        return self._audio_stats

    # ------------------------------------------------------------------ setup

    async def open(self) -> None:
        """Run every setup phase; on return the session is configured and audio flows.

        Raises :class:`UpstreamRefused` (HTTP error), :class:`UpstreamTimeout` (a phase
        overran; the message names it), :class:`UpstreamLost` (the peer failed during setup),
        :class:`UpstreamRejected` (``session.update`` refused), :class:`UpstreamProtocolError`
        (an unusable answer) or :class:`UpstreamError` (the service is unreachable). In every
        failure case, and on cancellation, the session is closed before the exception leaves.
        """
        if self._state != "new":
            raise RuntimeError(f"open() can be called once; the session is {self._state}")
        self._state = "opening"
        loop = asyncio.get_running_loop()
        self._remote = loop.create_future()
        self._connected = loop.create_future()
        self._channel_open = loop.create_future()
        self._created = loop.create_future()
        self._lost_reason = loop.create_future()
        started = self._clock()
        try:
            await self._setup()
        except BaseException as exc:
            reason = f"setup failed: {exc}" if str(exc) else f"setup failed: {type(exc).__name__}"
            await self.close(reason)
            raise
        if self._close_task is not None:  # lost in the instant after the last phase
            raise UpstreamLost(f"Realtime session lost during setup: {self._close_reason}")
        self._state = "open"
        self._timings["total"] = self._clock() - started
        log.info(
            "realtime call %s ready in %.0f ms (%s)",
            self._call_id,
            self._timings["total"] * 1000,
            ", ".join(f"{k} {v * 1000:.0f}" for k, v in self._timings.items() if k != "total"),
        )

    async def _setup(self) -> None:
        cfg = self._config
        t0 = self._clock()
        pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=[
                    RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
                    for s in cfg.ice_servers
                ]
            )
        )
        self._pc = pc
        _PEERS.add(pc)
        pc.on("connectionstatechange", self._on_connection_state)
        pc.on("track", self._on_track)
        transceiver = pc.addTransceiver(self._caller_track, direction="sendrecv")
        g711 = self.codec != "opus"
        depth = cfg.receive_buffer_packets
        if g711 or depth is not None:
            # Our receive buffer, tapped: model audio never goes through aiortc's decoder
            # thread (see model_audio); without a depth configured an Opus leg keeps aiortc's.
            self._tapped = True
            self.receive_buffer = install_receive_buffer(
                transceiver.receiver,
                _G711_RECEIVE_DEPTH if depth is None else depth,
                tap=self._on_payload,
            )
        offered = (RTP_MIME[self.codec],) if g711 else cfg.audio_codecs
        if offered:
            available = RTCRtpSender.getCapabilities("audio").codecs
            wanted = [
                c for name in offered for c in available if c.mimeType.lower() == name.lower()
            ]
            if not wanted:
                raise ValueError(f"none of the audio codecs {offered} is supported")
            transceiver.setCodecPreferences(wanted)
        else:
            offered = tuple(c.mimeType for c in RTCRtpSender.getCapabilities("audio").codecs)
        channel = pc.createDataChannel(DATA_CHANNEL_LABEL)
        self._channel = channel
        channel.on("open", self._on_channel_open)
        channel.on("message", self._on_message)
        channel.on("close", self._on_channel_close)
        await pc.setLocalDescription(await pc.createOffer())
        self._record_phase("offer", t0)

        offer_sdp = pc.localDescription.sdp
        # One client for both requests: the ephemeral flow reuses the connection (and its TLS
        # session) for the SDP post.
        signalling = self._signalling
        async with self._client() as client:
            if cfg.auth == "ephemeral":
                secret = await self._http_phase(
                    "client_secret",
                    signalling.client_secret(client, self._session_body, cfg.client_secret_ttl_s),
                )
                answer = await self._http_phase(
                    "sdp_exchange", signalling.post_offer(client, offer_sdp, ephemeral_key=secret)
                )
            else:
                answer = await self._http_phase(
                    "sdp_exchange",
                    signalling.post_offer(client, offer_sdp, session=self._session_body),
                )
        self._call_id = answer.call_id
        if self._call_id is None:
            log.warning("Realtime answer has no rtc_ call id in Location; hangup() is disabled")
        answer_sdp = complete_static_rtpmaps(answer.sdp)
        self._audio_codec = negotiated_audio_codec(answer_sdp, offered)
        if self._audio_codec is None:
            raise UpstreamCodecRefused(
                f"Realtime answered without the audio codec this call offered "
                f"({', '.join(offered)}); it listed {_answer_codec_list(answer_sdp)}"
                + (
                    f": upstream_codec {self.codec} is not available from "
                    f"{cfg.base_url}; use opus for this number"
                    if g711
                    else ""
                ),
                code="codec_refused",
            )
        if self._audio_codec.lower() == "audio/opus":
            self._caller_track.encode_opus()  # before media flows: packets, no aiortc encoder
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        except Exception as exc:
            raise UpstreamProtocolError(
                f"Realtime answer SDP is unusable ({type(exc).__name__}: {exc})"
            ) from exc
        assert self._remote is not None and self._connected is not None
        if not self._remote.done():
            raise UpstreamProtocolError("Realtime answer SDP sends no audio back")

        await self._phase("ice_dtls", self._connected, cfg.timeouts.ice_dtls)
        assert self._channel_open is not None and self._created is not None
        await self._phase("data_channel", self._channel_open, cfg.timeouts.data_channel)
        await self._phase("session_created", self._created, cfg.timeouts.session_created)

        update = rt.session_update(self._session_body)
        self._update_event_id = update["event_id"]
        self._updated = asyncio.get_running_loop().create_future()
        self.send(update)
        reply = await self._phase("session_updated", self._updated, cfg.timeouts.session_updated)
        if reply.type == "error":
            err = reply.error or {}
            code, param = err.get("code"), err.get("param")
            raise UpstreamRejected(
                "Realtime refused the session configuration: "
                f"{code or err.get('type', 'error')}"
                + (f" (field {param})" if param else "")
                + f": {err.get('message', '')}",
                code=code,
                param=param,
            )

    async def _phase(self, name: str, waiter: asyncio.Future[Any], limit_s: float) -> Any:
        assert self._lost_reason is not None
        t0 = self._clock()
        try:
            done, _ = await asyncio.wait(
                {waiter, self._lost_reason}, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._record_phase(name, t0)
        if waiter in done:
            return waiter.result()
        label = _PHASE_NAMES[name]
        if self._lost_reason in done:
            raise UpstreamLost(
                f"Realtime connection lost during {label}: {self._lost_reason.result()}"
            )
        raise UpstreamTimeout(
            f"Realtime setup timed out: no {label} within {limit_s:g} s", code=f"timeout_{name}"
        )

    def _record_phase(self, name: str, started: float) -> None:
        ended = self._clock()
        self._timings[name] = ended - started
        self._phase_spans.append((name, started, ended))

    async def _http_phase(self, name: str, request: Awaitable[_T]) -> _T:
        timeout = self._config.timeouts.sdp_exchange
        t0 = self._clock()
        try:
            async with asyncio.timeout(timeout):
                return await request
        except (TimeoutError, httpx.TimeoutException):
            raise UpstreamTimeout(
                f"Realtime setup timed out: no {_PHASE_NAMES[name]} answer within {timeout:g} s "
                f"from {self._config.base_url}",
                code=f"timeout_{name}",
            ) from None
        finally:
            self._record_phase(name, t0)

    def _client(self) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
        cfg = self._config
        return http_client(
            cfg.http_client, transport=cfg.transport, timeout_s=cfg.timeouts.sdp_exchange
        )

    async def hangup(self) -> bool:
        """Close the session with this reason; returns whether the service acknowledged the
        hang-up (:meth:`close` always asks for one once the call has an id)."""
        await self.close("hung up by the gateway")
        return self.hung_up is True

    async def _hang_up_upstream(self) -> None:
        """``POST /realtime/calls/{id}/hangup``: the service ends (and stops billing) the call
        whatever state our side is in — a setup given up on (ICE never connected, an answer
        past the deadline), a lost or rotated session, the end of the call. Bounded; a failure
        is logged, never raised: the peer's close follows anyway."""
        if self._call_id is None or self.hung_up is not None:
            return
        self.hung_up = False
        try:
            async with asyncio.timeout(min(_HANGUP_TIMEOUT_S, self._config.timeouts.sdp_exchange)):
                async with self._client() as client:
                    status = await self._signalling.hangup(client, self._call_id)
        except (TimeoutError, httpx.HTTPError, UpstreamError) as exc:
            log.warning("hangup of %s failed: %s", self._call_id, type(exc).__name__)
            return
        self.hung_up = status < 300
        if status == 404:  # the service had ended it already (it was lost, or expired)
            log.debug("hangup of %s: the call had already ended", self._call_id)
        elif not self.hung_up:
            log.warning("hangup of %s refused: HTTP %d", self._call_id, status)

    # ------------------------------------------------------------------ aiortc callbacks

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._remote is not None and not self._remote.done():
            self._remote.set_result(track)

    def _on_connection_state(self) -> None:
        pc = self._pc
        if pc is None:
            return
        state = pc.connectionState
        if state == "connected" and self._connected is not None and not self._connected.done():
            self._connected.set_result(None)
        elif state in ("failed", "closed"):
            self._lose(f"peer connection {state}")

    def _on_channel_open(self) -> None:
        if self._channel_open is not None and not self._channel_open.done():
            self._channel_open.set_result(None)

    def _on_channel_close(self) -> None:
        self._lose("data channel closed by the server")

    def _on_message(self, message: str | bytes) -> None:
        try:
            ev = rt.parse_server_event(message)
        except UpstreamProtocolError as exc:
            self.protocol_errors += 1
            self._events.put_nowait(exc)
            return
        self.events_received += 1
        self._events.put_nowait(ev)
        if self._state != "opening":
            return
        # Setup rendezvous; the event is queued for the consumer all the same.
        if ev.type == "session.created":
            if self._created is not None and not self._created.done():
                self._created.set_result(ev)
        elif ev.type == "session.updated":
            if self._updated is not None and not self._updated.done():
                self._updated.set_result(ev)
        elif ev.type == "error" and self._updated is not None and not self._updated.done():
            # GA echoes our event_id in errors; an error without one during setup can only be
            # about the update too, since nothing else has been sent yet.
            echoed = (ev.error or {}).get("event_id")
            if echoed in (None, self._update_event_id):
                self._updated.set_result(ev)

    def _lose(self, reason: str) -> None:
        if self._close_task is not None:
            return  # we are closing it ourselves: not a loss
        self._lost = True
        if self._lost_reason is not None and not self._lost_reason.done():
            self._lost_reason.set_result(reason)
        log.warning("realtime call %s lost: %s", self._call_id, reason)
        self._close_reason = reason
        self._close_task = asyncio.ensure_future(self._teardown())

    # ------------------------------------------------------------------ steady state

    def send(self, event: Mapping[str, Any]) -> None:
        """Send one client event over the data channel (build it with :mod:`events`).

        Raises :class:`UpstreamLost` when the channel is not open (closed, lost, or not yet
        open): the caller should end the call, there is nobody to send to.
        """
        channel = self._channel
        state = "absent" if channel is None else channel.readyState
        if channel is None or state != "open" or self._close_task is not None:
            raise UpstreamLost(
                f"cannot send {event.get('type')!r}: the Realtime data channel is {state}"
                + (f" ({self._close_reason})" if self._close_reason else "")
            )
        channel.send(rt.encode(event))

    def events(self) -> AsyncIterator[rt.ServerEvent]:
        """Every server event in arrival order, including ``session.created`` and ``.updated``.

        Nothing is dropped: events queue until read. Iteration ends when the session is closed
        by us; it raises :class:`UpstreamLost` when the upstream went away, after the events
        that arrived before. A message that is not a valid event raises
        :class:`UpstreamProtocolError`; the iterator stays usable, so a consumer may count it
        and go on. Use one consumer.
        """
        return _EventStream(self)

    def push_audio(self, frame: LegFrame, received_at: float | None = None) -> None:
        """Queue one caller frame (480 int16 samples, 24 kHz mono; 160 bytes of the leg's law
        on a G.711 leg) for the caller-audio track.

        ``received_at`` is when the carrier frame arrived (monotonic); frames after close are
        ignored. See :class:`~gateway.realtime.tracks.CallerAudioTrack` for pacing and bounds.
        """
        self._caller_track.push(frame, received_at)

    def clear_audio(self) -> int:
        """Drop caller audio queued but not yet sent; returns how many frames."""
        return self._caller_track.clear()

    def _claim_audio(self, what: str) -> None:
        if self._remote is None or not self._remote.done() or self._remote.cancelled():
            raise RuntimeError(f"{what} needs an open session")
        if self._reader is not None or self._audio_stats is not None:
            raise RuntimeError("the session's audio is already being consumed")
        if self._tapped:
            self._audio_stats = RemoteAudioStats()
        else:
            self._reader = RemoteAudioReader(self._remote.result(), clock=self._clock)

    def _negotiated(self) -> UpstreamCodec:
        """The answer's audio codec as a codec name (what the tap carries)."""
        mime = (self._audio_codec or "").lower()
        for codec, name in RTP_MIME.items():
            if name.lower() == mime:
                return codec
        raise AudioFormatError(f"model audio in {self._audio_codec}: cannot decode it")

    async def _payloads(self) -> AsyncIterator[tuple[bytes, int, float]]:
        queue = self._rtp
        while (item := await queue.get()) is not None:
            yield item
        queue.put_nowait(None)  # every later reader ends the same way

    async def audio_frames(self) -> AsyncIterator[tuple[npt.NDArray[np.int16], float]]:
        """Assistant audio as ``(480-sample 24 kHz mono int16 frame, received_at)``.

        Call after :meth:`open`. Iteration ends when the session closes. Use one consumer.
        """
        self._claim_audio("audio_frames()")
        if self._reader is not None:
            async for item in self._reader:
                yield item
            return
        stats = self._audio_stats
        assert stats is not None
        decoder = RtpDecoder(self._negotiated())
        to_model = StreamResampler(decoder.rate, SAMPLE_RATE)
        pending = np.zeros(0, dtype=np.int16)
        async for payload, timestamp, received_at in self._payloads():
            stats.frames_decoded += 1
            pcm = to_model.process(decoder.decode(payload, timestamp))
            if pending.size:
                pcm = np.concatenate((pending, pcm))
            n = pcm.size // FRAME_SAMPLES
            pending = pcm[n * FRAME_SAMPLES :].copy()
            for i in range(n):
                stats.frames_out += 1
                yield pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES], received_at

    async def model_audio(self) -> AsyncIterator[DecodedAudio | EncodedAudio]:
        """Assistant audio for a consumer that converts once, to its own rate, as cheaply as
        the leg allows.

        On a G.711 leg: the RTP payload as it came (:class:`EncodedAudio`), never decoded, a
        lost packet as silence of its length. On an Opus leg with the short receive buffer:
        decoded here, on the event loop, to 48 kHz mono (:class:`DecodedAudio`; no decoder
        thread and its hop back per frame). With aiortc's own receive buffer: as aiortc
        decoded it (48 kHz stereo). Same rules as :meth:`audio_frames`; use one or the other.
        """
        self._claim_audio("model_audio()")
        if self._reader is not None:
            async for item in self._reader.decoded():
                yield item
            return
        stats = self._audio_stats
        assert stats is not None
        codec = self._negotiated()
        if codec == self.codec and codec != "opus":  # G.711 straight through
            timeline = RtpTimeline(CARRIER_RATE)
            fill = bytes([ULAW_SILENCE if codec == "pcmu" else ALAW_SILENCE])
            async for payload, timestamp, received_at in self._payloads():
                stats.frames_decoded += 1
                lost = timeline.lost_before(timestamp, len(payload))
                if lost:
                    yield EncodedAudio(fill * lost, codec, received_at)
                yield EncodedAudio(payload, codec, received_at)
            return
        decoder = RtpDecoder(codec)
        async for payload, timestamp, received_at in self._payloads():
            stats.frames_decoded += 1
            yield DecodedAudio(decoder.decode(payload, timestamp), decoder.rate, 1, received_at)

    def _on_payload(self, payload: bytes, timestamp: int) -> None:
        """The receive buffer's tap (on the loop): one frame of model audio, in sequence."""
        self._rtp.put_nowait((payload, timestamp, self._clock()))

    # ------------------------------------------------------------------ end

    async def close(self, reason: str = "closed by the gateway") -> None:
        """Close the data channel and the peer connection; idempotent, safe from any task.

        Returns once everything the session started has stopped. Cancelling the caller does
        not interrupt the teardown.
        """
        if self._close_task is None:
            self._close_reason = reason
            self._close_task = asyncio.ensure_future(self._teardown())
        await asyncio.shield(self._close_task)

    async def wait_closed(self) -> str:
        """Wait until the session is closed (by us or by the upstream); return the reason."""
        await self._closed.wait()
        return self._close_reason or "closed"

    async def _teardown(self) -> None:
        try:
            await self._hang_up_upstream()
            self._caller_track.stop()
            if self._channel is not None:
                self._channel.close()
            if self._pc is not None:
                try:
                    async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                        await self._pc.close()
                except TimeoutError:
                    log.error("peer connection of %s did not close in time", self._call_id)
        finally:
            for fut in (self._remote, self._connected, self._channel_open, self._created):
                if fut is not None and not fut.done():
                    fut.cancel()
            if self._updated is not None and not self._updated.done():
                self._updated.cancel()
            self._state = "closed"
            self._events.put_nowait(_END)
            self._rtp.put_nowait(None)
            self._closed.set()
            log.debug("realtime call %s closed: %s", self._call_id, self._close_reason)


def _answer_codec_list(sdp: str) -> str:
    names = audio_codecs(sdp)
    return ", ".join(names) if names else "no audio codec"
