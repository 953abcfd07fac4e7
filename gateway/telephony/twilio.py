"""The Twilio Media Streams dialect (bidirectional ``<Connect><Stream>``), sans-I/O.

Two ends of the same wire format live here, so its shapes are written down once:

- :class:`TwilioCodec` is the gateway's end. :meth:`~TwilioCodec.parse` turns each text frame
  Twilio sends (``connected``, ``start``, ``media``, ``mark``, ``dtmf``, ``stop``; PROTOCOLS.md
  B3) into a frozen message from :mod:`gateway.telephony.messages`, and
  :meth:`~TwilioCodec.encode` turns :class:`PlayAudio` / :class:`PlayMark` / :class:`ClearAudio`
  into the JSON Twilio accepts (B4).
- :class:`TwilioCarrierCodec` is the carrier's end, for the simulated carrier of the load tester
  and the demo: it produces B3 frames from the same inbound message types and parses B4.

Both raise only :class:`gateway.errors.CarrierError` subclasses on bad input, with a message an
operator can act on. In the carrier-side role the peer at fault is the gateway, but the error
classes stay the same: the frame broke the carrier protocol.

Twilio sends ``sequenceNumber``, ``media.chunk`` and ``media.timestamp`` as decimal strings and
``mediaFormat.sampleRate`` / ``channels`` as numbers. The parser accepts either form for all
five, because Twilio-compatible carriers are not consistent about it and the meaning is
unambiguous; everything else must have exactly the documented type.

The media path runs 50 times a second per call, so it is plain ``json.loads`` + ``b64decode``
with hand-written field checks (about 3 µs a frame), no validation framework.
"""

from __future__ import annotations

import json
from base64 import b64encode
from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

from gateway.errors import (
    CarrierError,
    InternalError,
    UnsupportedMediaFormat,
)
from gateway.telephony.messages import (
    MULAW_8K_MONO,
    ClearAudio,
    Connected,
    Dtmf,
    Ignored,
    InboundMessage,
    Mark,
    Media,
    MediaFormat,
    OutboundMessage,
    PlayAudio,
    PlayMark,
    Start,
    Stop,
    frozen_mapping,
)
from gateway.telephony.wire import JsonWire, describe

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DTMF_DIGITS",
    "TwilioCarrierCodec",
    "TwilioCodec",
    "start_message",
]

DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024
DEFAULT_MAX_PAYLOAD_BYTES: Final = 8000
"""One second of μ-law. Twilio sends 160-byte (20 ms) frames; anything near this is abuse."""
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")

# Longest decimal string we turn into an int: sequence numbers and millisecond timestamps of a
# call that lasted a century still fit, and int() on megabyte strings is never reached.
_wire: Final = JsonWire("Twilio")


class TwilioCodec:
    """The gateway's end of one Twilio media stream. Create one per websocket.

    Call :meth:`parse` with every frame received: it returns a message to act on, or
    :class:`Ignored` for an event we do not handle (already counted), or raises a
    :class:`~gateway.errors.CarrierError`; after a rejected frame the codec's state is
    unchanged, so the caller may count it and keep reading. Send what :meth:`encode` returns as a
    text frame; it needs the ``streamSid`` from ``start``, so only encode after ``start`` parsed.
    """

    def __init__(
        self,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        media_tracks: frozenset[str] = frozenset({"inbound"}),
    ) -> None:
        if max_message_bytes < 256:
            raise ValueError(f"max_message_bytes={max_message_bytes} cannot hold a start message")
        if max_payload_bytes < 1:
            raise ValueError(f"max_payload_bytes={max_payload_bytes} must be positive")
        self.max_message_bytes = max_message_bytes
        self.max_payload_bytes = max_payload_bytes
        self.media_tracks = media_tracks
        self.start: Start | None = None
        self.stopped = False
        self.last_sequence_number = 0
        self.parsed = 0
        """Frames that produced a message (not counting ignored ones)."""
        self.ignored: Counter[str] = Counter()
        """Ignored frames by event name."""
        self.rejected: Counter[str] = Counter()
        """Rejected frames by error class name (``CarrierProtocolError``, ...)."""
        self.sequence_gaps = 0
        """Messages whose ``sequenceNumber`` did not follow the previous one (loss or reorder)."""
        self._sid_json = ""

    @property
    def stream_sid(self) -> str | None:
        return self.start.stream_sid if self.start is not None else None

    @property
    def ignored_count(self) -> int:
        return sum(self.ignored.values())

    @property
    def rejected_count(self) -> int:
        return sum(self.rejected.values())

    # --- inbound ------------------------------------------------------------------------------

    def parse(self, frame: str | bytes) -> InboundMessage | Ignored:
        """Parse one websocket frame; raises a :class:`~gateway.errors.CarrierError` subclass."""
        try:
            msg = self._parse(frame)
        except CarrierError as exc:
            self.rejected[type(exc).__name__] += 1
            raise
        if type(msg) is Ignored:
            self.ignored[msg.event] += 1
        else:
            self.parsed += 1
        return msg

    def _parse(self, frame: str | bytes) -> InboundMessage | Ignored:
        event, obj = _wire.load(frame, self.max_message_bytes)
        if event == "media":
            return self._media(obj)
        if event == "mark":
            seq = self._sequenced(obj, event)
            name = _wire.name(
                _wire.text(_wire.obj(obj, "mark", event), "name", event, "mark."), event
            )
            self._advance(seq)
            return Mark(self._sid(), seq, name)
        if event == "connected":
            return Connected(_wire.text(obj, "protocol", event), _wire.text(obj, "version", event))
        if event == "start":
            return self._start(obj)
        if event == "dtmf":
            seq = self._sequenced(obj, event)
            body = _wire.obj(obj, "dtmf", event)
            digit = _wire.text(body, "digit", event, "dtmf.")
            if digit not in DTMF_DIGITS:
                raise _wire.fail(event, f"'dtmf.digit' {digit[:8]!r} is not one of 0-9 * # A-D")
            track = body.get("track", "inbound_track")
            if type(track) is not str:
                raise _wire.fail(event, f"'dtmf.track' is {describe(track)}, expected a string")
            self._advance(seq)
            return Dtmf(self._sid(), seq, digit, track)
        if event == "stop":
            seq = self._sequenced(obj, event)
            body = _wire.obj(obj, "stop", event)
            call_sid = _wire.text(body, "callSid", event, "stop.")
            account_sid = _wire.text(body, "accountSid", event, "stop.")
            assert self.start is not None
            if call_sid != self.start.call_sid:
                raise _wire.fail(event, f"callSid {call_sid!r} is not this stream's call")
            self._advance(seq)
            self.stopped = True
            return Stop(self._sid(), seq, call_sid, account_sid)
        return Ignored(event[:64], "event not handled by the gateway")

    def _media(self, obj: dict[str, Any]) -> Media | Ignored:
        seq = self._sequenced(obj, "media")
        body = obj.get("media")
        if type(body) is not dict:
            raise _wire.fail("media", f"'media' is {describe(body)}, expected an object")
        track = _wire.text(body, "track", "media", "media.")
        chunk = _wire.number(body, "chunk", "media", "media.")
        timestamp = _wire.number(body, "timestamp", "media", "media.")
        payload = _wire.payload(
            _wire.text(body, "payload", "media", "media."), "media", self.max_payload_bytes
        )
        self._advance(seq)
        if track not in self.media_tracks:
            return Ignored("media", f"track {track[:32]!r} is not caller audio")
        return Media(self._sid(), seq, chunk, timestamp, payload, track)

    def drain(self) -> tuple[InboundMessage, ...]:
        """Nothing: Twilio delivers in order, so :meth:`parse` never holds a message back."""
        return ()

    def _start(self, obj: dict[str, Any]) -> Start:
        event = "start"
        if self.start is not None:
            raise _wire.fail(event, f"a second start on stream {self.start.stream_sid!r}")
        seq = _wire.number(obj, "sequenceNumber", event)
        body = _wire.obj(obj, "start", event)
        stream_sid = _wire.text(body, "streamSid", event, "start.")
        outer_sid = obj.get("streamSid", stream_sid)
        if outer_sid != stream_sid:
            raise _wire.fail(event, f"streamSid {outer_sid!r} differs from start.streamSid")
        if not stream_sid:
            raise _wire.fail(event, "'start.streamSid' is empty")
        call_sid = _wire.text(body, "callSid", event, "start.")
        account_sid = _wire.text(body, "accountSid", event, "start.")
        tracks = body.get("tracks")
        if type(tracks) is not list or not all(type(t) is str for t in tracks):
            raise _wire.fail(event, f"'start.tracks' is {describe(tracks)}, expected strings")
        params = body.get("customParameters", {})
        if type(params) is not dict or not all(type(v) is str for v in params.values()):
            raise _wire.fail(
                event, f"'start.customParameters' is {describe(params)}, expected strings"
            )
        fmt = _wire.obj(body, "mediaFormat", event, "start.")
        encoding = _wire.text(fmt, "encoding", event, "start.mediaFormat.")
        rate = _wire.number(fmt, "sampleRate", event, "start.mediaFormat.")
        channels = _wire.number(fmt, "channels", event, "start.mediaFormat.")
        media_format = MediaFormat(encoding, rate, channels)
        if media_format != MULAW_8K_MONO:
            raise UnsupportedMediaFormat(
                f"stream {stream_sid!r} announces {media_format}; the gateway needs "
                f"{MULAW_8K_MONO} (use a bidirectional <Connect><Stream>)"
            )
        start = Start(
            stream_sid=stream_sid,
            call_sid=call_sid,
            account_sid=account_sid,
            tracks=tuple(tracks),
            custom_parameters=frozen_mapping(params),
            media_format=media_format,
            sequence_number=seq,
        )
        self.start = start
        self.last_sequence_number = seq
        self._sid_json = json.dumps(stream_sid)
        return start

    def _sequenced(self, obj: dict[str, Any], event: str) -> int:
        """Check a post-start message's stream and return its sequence number."""
        if self.start is None:
            raise _wire.fail(event, "received before 'start'")
        if self.stopped:
            raise _wire.fail(event, "received after 'stop'")
        sid = obj.get("streamSid")
        if sid != self.start.stream_sid:
            raise _wire.fail(
                event,
                f"streamSid {describe(sid)} is not this stream ({self.start.stream_sid!r})",
            )
        return _wire.number(obj, "sequenceNumber", event)

    def _advance(self, seq: int) -> None:
        if seq != self.last_sequence_number + 1:
            self.sequence_gaps += 1
        self.last_sequence_number = seq

    def _sid(self) -> str:
        assert self.start is not None
        return self.start.stream_sid

    # --- outbound -----------------------------------------------------------------------------

    def encode(self, msg: OutboundMessage) -> str:
        """The JSON text frame for ``msg``. Raises :class:`InternalError` before ``start``."""
        if not self._sid_json:
            raise InternalError(f"cannot send {type(msg).__name__} before the stream's start")
        kind = type(msg)
        if kind is PlayAudio:
            assert isinstance(msg, PlayAudio)
            if not msg.payload:
                raise InternalError("refusing to send an empty media payload")
            payload = b64encode(msg.payload).decode("ascii")
            return (
                f'{{"event":"media","streamSid":{self._sid_json},'
                f'"media":{{"payload":"{payload}"}}}}'
            )
        if kind is PlayMark:
            assert isinstance(msg, PlayMark)
            return (
                f'{{"event":"mark","streamSid":{self._sid_json},'
                f'"mark":{{"name":{json.dumps(msg.name)}}}}}'
            )
        if kind is ClearAudio:
            return f'{{"event":"clear","streamSid":{self._sid_json}}}'
        raise InternalError(f"not an outbound carrier message: {msg!r}")


class TwilioCarrierCodec:
    """The carrier's end of one Twilio media stream, as a simulated carrier needs it.

    :meth:`encode` renders inbound messages (what Twilio sends) exactly as Twilio does, with
    numbers as strings where Twilio uses strings. :meth:`parse` reads what the gateway sends
    and checks it targets this stream. Counters (sequence numbers, chunks, timestamps) are the
    caller's business: see :class:`gateway.loadtest.carrier.CallerStream`.
    """

    def __init__(
        self,
        stream_sid: str,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_payload_bytes: int = 1024 * 1024,
    ) -> None:
        if not stream_sid:
            raise ValueError("stream_sid must not be empty")
        self.stream_sid = stream_sid
        self.max_message_bytes = max_message_bytes
        self.max_payload_bytes = max_payload_bytes
        self.ignored: Counter[str] = Counter()
        self._sid_json = json.dumps(stream_sid)

    # --- what the carrier sends -----------------------------------------------------------------

    def encode(self, msg: InboundMessage) -> str:
        """The text frame Twilio would send for ``msg``."""
        if type(msg) is Media:
            assert isinstance(msg, Media)
            return self.encode_media(
                msg.sequence_number,
                msg.chunk,
                msg.timestamp_ms,
                b64encode(msg.payload).decode("ascii"),
                msg.track,
            )
        body: dict[str, Any]
        if isinstance(msg, Connected):
            body = {"event": "connected", "protocol": msg.protocol, "version": msg.version}
        elif isinstance(msg, Start):
            fmt = msg.media_format
            body = {
                "event": "start",
                "sequenceNumber": str(msg.sequence_number),
                "start": {
                    "accountSid": msg.account_sid,
                    "streamSid": msg.stream_sid,
                    "callSid": msg.call_sid,
                    "tracks": list(msg.tracks),
                    "customParameters": dict(msg.custom_parameters),
                    "mediaFormat": {
                        "encoding": fmt.encoding,
                        "sampleRate": fmt.sample_rate,
                        "channels": fmt.channels,
                    },
                },
                "streamSid": msg.stream_sid,
            }
        elif isinstance(msg, Mark):
            body = {
                "event": "mark",
                "sequenceNumber": str(msg.sequence_number),
                "streamSid": msg.stream_sid,
                "mark": {"name": msg.name},
            }
        elif isinstance(msg, Dtmf):
            body = {
                "event": "dtmf",
                "streamSid": msg.stream_sid,
                "sequenceNumber": str(msg.sequence_number),
                "dtmf": {"track": msg.track, "digit": msg.digit},
            }
        elif isinstance(msg, Stop):
            body = {
                "event": "stop",
                "sequenceNumber": str(msg.sequence_number),
                "streamSid": msg.stream_sid,
                "stop": {"accountSid": msg.account_sid, "callSid": msg.call_sid},
            }
        else:
            raise InternalError(f"not an inbound carrier message: {msg!r}")
        return json.dumps(body, separators=(",", ":"))

    def encode_media(
        self,
        sequence_number: int,
        chunk: int,
        timestamp_ms: int,
        payload_b64: str,
        track: str = "inbound",
    ) -> str:
        """Fast path for ``media``: ``payload_b64`` is already base64 (encode a clip once)."""
        return (
            f'{{"event":"media","sequenceNumber":"{sequence_number}",'
            f'"media":{{"track":{json.dumps(track)},"chunk":"{chunk}",'
            f'"timestamp":"{timestamp_ms}","payload":"{payload_b64}"}},'
            f'"streamSid":{self._sid_json}}}'
        )

    # --- what the gateway sends -----------------------------------------------------------------

    def parse(self, frame: str | bytes) -> OutboundMessage | Ignored:
        """Parse one frame from the gateway; raises :class:`~gateway.errors.CarrierError`."""
        event, obj = _wire.load(frame, self.max_message_bytes)
        if event in ("media", "mark", "clear"):
            sid = obj.get("streamSid")
            if sid != self.stream_sid:
                raise _wire.fail(event, f"streamSid {describe(sid)} is not {self.stream_sid!r}")
        if event == "media":
            body = _wire.obj(obj, "media", event)
            payload = _wire.text(body, "payload", event, "media.")
            return PlayAudio(_wire.payload(payload, event, self.max_payload_bytes))
        if event == "mark":
            return PlayMark(
                _wire.name(_wire.text(_wire.obj(obj, "mark", event), "name", event, "mark."), event)
            )
        if event == "clear":
            return ClearAudio()
        self.ignored[event[:64]] += 1
        return Ignored(event[:64], "not a Twilio media-stream command")


def start_message(
    *,
    stream_sid: str,
    call_sid: str,
    account_sid: str,
    custom_parameters: Mapping[str, str] | None = None,
    sequence_number: int = 1,
) -> Start:
    """The ``start`` Twilio sends for a bidirectional stream (inbound track, μ-law 8 kHz)."""
    return Start(
        stream_sid=stream_sid,
        call_sid=call_sid,
        account_sid=account_sid,
        tracks=("inbound",),
        custom_parameters=frozen_mapping(custom_parameters),
        media_format=MULAW_8K_MONO,
        sequence_number=sequence_number,
    )
