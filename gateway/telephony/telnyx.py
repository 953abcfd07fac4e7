"""Telnyx: TeXML answer, Ed25519 webhook signatures, and its media-stream dialect, sans-I/O.

Media dialect (developers.telnyx.com, "Stream call media over WebSocket"; docs/carriers.md says
what is confirmed): text JSON frames with snake_case fields and decimal-string counters::

    {"event":"connected","version":"1.0.0"}
    {"event":"start","sequence_number":"1","stream_id":"…","start":{"call_control_id":"v3:…",
     "user_id":"…","from":"+1…","to":"+1…","custom_parameters":{…},
     "media_format":{"encoding":"PCMU","sample_rate":8000,"channels":1}}}
    {"event":"media","sequence_number":"4","stream_id":"…",
     "media":{"track":"inbound","chunk":"2","timestamp":"5","payload":"<base64 PCMU>"}}
    {"event":"mark"|"dtmf"|"stop"|"error", "sequence_number":…, "stream_id":…, …}

and back ``{"event":"media","media":{"payload":…}}``, ``{"event":"mark","mark":{"name":…}}``,
``{"event":"clear"}``; marks echo as Twilio's do (after the audio before them, or at a clear).

Telnyx does not guarantee frame order. :class:`Reorderer` puts post-``start`` messages back in
``sequence_number`` order, holding an early one until the gap fills or ``window`` messages are
held (then the gap is given up as lost, and a frame arriving later is dropped as late). A
``stop`` is never held: it releases everything held, in order, then ends the stream.

The stream binds to its call by the ``<Parameter>`` pairs of the TeXML answer, which Telnyx
returns in ``start.custom_parameters``; :data:`~gateway.telephony.carriers.CALL_SID_PARAM`
carries the webhook's ``CallSid`` because whether it equals ``start.call_control_id`` is not
documented.
"""

from __future__ import annotations

import base64
import binascii
import json
from base64 import b64encode
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.errors import (
    CarrierError,
    CarrierProtocolError,
    Forbidden,
    InternalError,
    UnsupportedMediaFormat,
)
from gateway.telephony.carriers import (
    CALL_SID_PARAM,
    Answer,
    IncomingCall,
    SignedRequest,
    StreamTarget,
    unsigned_upgrade,
    xml_element,
    xml_parent,
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
    OutboundMessage,
    PlayAudio,
    PlayMark,
    Start,
    Stop,
    frozen_mapping,
)
from gateway.telephony.twilio import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DTMF_DIGITS,
)
from gateway.telephony.twilio_carrier import fallback_twiml
from gateway.telephony.wire import JsonWire

if TYPE_CHECKING:
    from gateway.numbers import Fallback
    from gateway.settings import Settings

__all__ = [
    "REORDER_WINDOW",
    "SIGNATURE_HEADER",
    "TELNYX",
    "TIMESTAMP_HEADER",
    "Reorderer",
    "TelnyxCarrier",
    "TelnyxCarrierCodec",
    "TelnyxCodec",
    "sign_webhook",
    "verify_webhook",
]

SIGNATURE_HEADER: Final = "telnyx-signature-ed25519"
TIMESTAMP_HEADER: Final = "telnyx-timestamp"
REORDER_WINDOW: Final = 5
"""Messages held waiting for a missing one: 100 ms of media, then the gap is given up."""
_ENCODINGS: Final = {"PCMU": "audio/x-mulaw"}
_XML_DECL: Final = '<?xml version="1.0" encoding="UTF-8"?>'

_wire = JsonWire("Telnyx")


# --- webhook signatures ---------------------------------------------------------------------------


def verify_webhook(
    public_key_b64: str,
    body: bytes,
    signature_b64: str | None,
    timestamp: str | None,
    *,
    now: float,
    tolerance_s: float,
) -> None:
    """Raise :class:`Forbidden` unless ``signature_b64`` is Telnyx's Ed25519 signature of
    ``timestamp|body`` and ``timestamp`` (Unix seconds) is within ``tolerance_s`` of ``now``."""
    if not signature_b64 or not timestamp:
        raise Forbidden(f"no {SIGNATURE_HEADER} / {TIMESTAMP_HEADER} header: not signed by Telnyx")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise Forbidden(f"{TIMESTAMP_HEADER} {timestamp[:24]!r} is not Unix seconds")
    skew = now - int(timestamp)
    if abs(skew) > tolerance_s:
        raise Forbidden(
            f"{TIMESTAMP_HEADER} is {abs(skew):.0f} s {'old' if skew > 0 else 'in the future'} "
            f"(more than {tolerance_s:g} s): a replayed or delayed request"
        )
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))
        key.verify(signature, timestamp.encode("ascii") + b"|" + body)
    except (binascii.Error, ValueError, InvalidSignature):
        raise Forbidden(f"{SIGNATURE_HEADER} does not match the webhook request") from None


def sign_webhook(private_key: Ed25519PrivateKey, body: bytes, timestamp: int) -> dict[str, str]:
    """The headers Telnyx would send with ``body`` at ``timestamp`` (tests, load)."""
    signature = private_key.sign(str(timestamp).encode("ascii") + b"|" + body)
    return {
        SIGNATURE_HEADER: base64.b64encode(signature).decode("ascii"),
        TIMESTAMP_HEADER: str(timestamp),
    }


# --- reordering -----------------------------------------------------------------------------------


class Reorderer:
    """Releases sequence-numbered messages in order (sans-I/O; one per stream).

    :meth:`expect` the first number, then :meth:`push` each message: it returns what can be
    released now, in order (possibly nothing). :meth:`flush` releases everything held.
    """

    def __init__(self, window: int = REORDER_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window={window} must be at least 1")
        self.window = window
        self.next: int | None = None
        self._held: dict[int, InboundMessage | None] = {}
        self.reordered = 0
        """Messages that arrived early and were put back in place."""
        self.lost = 0
        """Sequence numbers given up on (never arrived within the window)."""
        self.late = 0
        """Messages that arrived after their place was given up, or twice: dropped."""

    @property
    def held(self) -> int:
        return len(self._held)

    def expect(self, seq: int) -> None:
        self.next = seq

    def push(self, seq: int, msg: InboundMessage | None) -> list[InboundMessage]:
        """Place message ``seq`` (``None``: a number that carries nothing for the gateway, such
        as another track's media) and return what is released."""
        if self.next is None:
            self.next = seq
        if seq < self.next or seq in self._held:
            self.late += 1
            return []
        if seq > self.next:
            self._held[seq] = msg
            self.reordered += 1
            if len(self._held) <= self.window:
                return []
            first = min(self._held)
            self.lost += first - self.next
            self.next = first
            return self._release()
        self.next = seq + 1
        released = self._release()
        return released if msg is None else [msg, *released]

    def _release(self) -> list[InboundMessage]:
        out: list[InboundMessage] = []
        assert self.next is not None
        while self.next in self._held:
            msg = self._held.pop(self.next)
            if msg is not None:
                out.append(msg)
            self.next += 1
        return out

    def flush(self) -> list[InboundMessage]:
        out = [m for s in sorted(self._held) if (m := self._held[s]) is not None]
        if self._held:
            assert self.next is not None
            last = max(self._held)
            self.lost += last - self.next + 1 - len(self._held)
            self.next = last + 1
        self._held.clear()
        return out


# --- the gateway's end ----------------------------------------------------------------------------


class TelnyxCodec:
    """The gateway's end of one Telnyx media stream (see the module docstring).

    ``stream_parameters`` (the media URL's query) are merged under ``start.custom_parameters``.
    :meth:`parse` returns the next message in order, or :class:`Ignored` while a frame is held;
    then :meth:`drain` returns what the frame released. A rejected frame leaves the state as it
    was.
    """

    def __init__(
        self,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        stream_parameters: Mapping[str, str] | None = None,
        reorder_window: int = REORDER_WINDOW,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_payload_bytes = max_payload_bytes
        self.stream_parameters = dict(stream_parameters or {})
        self.start: Start | None = None
        self.call_control_id: str | None = None
        self.stopped = False
        self.reorder = Reorderer(reorder_window)
        self._released: list[InboundMessage] = []
        self.rejected: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.parsed = 0

    @property
    def stream_sid(self) -> str | None:
        return self.start.stream_sid if self.start is not None else None

    def parse(self, frame: str | bytes) -> InboundMessage | Ignored:
        """Parse one frame; raises a :class:`~gateway.errors.CarrierError` subclass."""
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

    def drain(self) -> tuple[InboundMessage, ...]:
        released, self._released = tuple(self._released), []
        self.parsed += len(released)
        return released

    def _parse(self, frame: str | bytes) -> InboundMessage | Ignored:
        event, obj = _wire.load(frame, self.max_message_bytes)
        if event == "connected":
            version = obj.get("version", "")
            return Connected("", version if type(version) is str else "")
        if event == "start":
            return self._start(obj)
        if event not in ("media", "mark", "dtmf", "stop", "error"):
            return Ignored(event[:64], "event not handled by the gateway")
        start = self._started(obj, event)
        if event == "error":
            body = obj.get("payload")
            raise CarrierProtocolError(f"Telnyx reports a stream error: {json.dumps(body)[:200]}")
        # A mark echo, key press or stop without a number (not every example shows one)
        # cannot be put in place: it is delivered as it comes rather than refused.
        numbered = event == "media" or "sequence_number" in obj
        seq = _wire.number(obj, "sequence_number", event) if numbered else 0
        msg = self._message(event, obj, seq, start)
        if isinstance(msg, Ignored):
            released = self.reorder.push(seq, None)  # keeps the numbering whole
            self._released.extend(released)
            return msg
        if isinstance(msg, Stop):
            released = [*self.reorder.flush(), msg]
            self.stopped = True
        elif not numbered:
            released = [msg]
        else:
            released = self.reorder.push(seq, msg)
        if not released:
            return Ignored(event, f"held until sequence {self.reorder.next} arrives (or late)")
        self._released.extend(released[1:])
        return released[0]

    def _message(
        self, event: str, obj: dict[str, Any], seq: int, start: Start
    ) -> InboundMessage | Ignored:
        sid = start.stream_sid
        if event == "media":
            body = _wire.obj(obj, "media", event)
            track = body.get("track", "inbound")
            if type(track) is not str:
                raise _wire.fail(event, "'media.track' is not a string")
            chunk = _wire.number(body, "chunk", event, "media.")
            timestamp = _wire.number(body, "timestamp", event, "media.")
            payload = _wire.payload(
                _wire.text(body, "payload", event, "media."), event, self.max_payload_bytes
            )
            if track != "inbound":
                return Ignored(event, f"track {track[:32]!r} is not caller audio")
            return Media(sid, seq, chunk, timestamp, payload, track)
        if event == "mark":
            name = _wire.text(_wire.obj(obj, "mark", event), "name", event, "mark.")
            return Mark(sid, seq, _wire.name(name, event))
        if event == "dtmf":
            digit = _wire.text(_wire.obj(obj, "dtmf", event), "digit", event, "dtmf.")
            if digit not in DTMF_DIGITS:
                raise _wire.fail(event, f"'dtmf.digit' {digit[:8]!r} is not one of 0-9 * # A-D")
            return Dtmf(sid, seq, digit)
        body = obj.get("stop") or {}
        if type(body) is not dict:
            raise _wire.fail(event, "'stop' is not an object")
        ccid = body.get("call_control_id", self.call_control_id)
        if ccid != self.call_control_id:
            raise _wire.fail(event, f"call_control_id {str(ccid)[:40]!r} is not this stream's")
        return Stop(sid, seq, start.call_sid, start.account_sid)

    def _started(self, obj: dict[str, Any], event: str) -> Start:
        if self.start is None:
            raise _wire.fail(event, "received before 'start'")
        if self.stopped:
            raise _wire.fail(event, "received after 'stop'")
        sid = obj.get("stream_id", self.start.stream_sid)
        if sid != self.start.stream_sid:
            raise _wire.fail(event, f"stream_id {str(sid)[:40]!r} is not this stream's")
        return self.start

    def _start(self, obj: dict[str, Any]) -> Start:
        event = "start"
        if self.start is not None:
            raise _wire.fail(event, f"a second start on stream {self.start.stream_sid!r}")
        seq = _wire.number(obj, "sequence_number", event)
        stream_id = _wire.text(obj, "stream_id", event)
        if not stream_id:
            raise _wire.fail(event, "'stream_id' is empty")
        body = _wire.obj(obj, "start", event)
        call_control_id = _wire.text(body, "call_control_id", event, "start.")
        user_id = body.get("user_id", "")
        params = {
            **_wire.params(body, "custom_parameters", event, "start."),
            **self.stream_parameters,
        }
        fmt = _wire.obj(body, "media_format", event, "start.")
        encoding = _wire.text(fmt, "encoding", event, "start.media_format.")
        rate = _wire.number(fmt, "sample_rate", event, "start.media_format.")
        channels = (
            _wire.number(fmt, "channels", event, "start.media_format.") if "channels" in fmt else 1
        )
        if (_ENCODINGS.get(encoding.upper()), rate, channels) != (
            MULAW_8K_MONO.encoding,
            MULAW_8K_MONO.sample_rate,
            MULAW_8K_MONO.channels,
        ):
            raise UnsupportedMediaFormat(
                f"Telnyx stream {stream_id!r} announces {encoding} {rate} Hz, {channels} "
                "channel(s); the gateway needs PCMU 8000 Hz mono (TeXML <Stream "
                'bidirectionalCodec="PCMU" bidirectionalSamplingRate="8000">)'
            )
        start = Start(
            stream_sid=stream_id,
            call_sid=params.get(CALL_SID_PARAM) or call_control_id,
            account_sid=user_id if type(user_id) is str else "",
            tracks=("inbound",),
            custom_parameters=frozen_mapping(params),
            media_format=MULAW_8K_MONO,
            sequence_number=seq,
        )
        self.start = start
        self.call_control_id = call_control_id
        self.reorder.expect(seq + 1)
        return start

    def encode(self, msg: OutboundMessage) -> str:
        """The JSON text frame for ``msg`` (Telnyx needs no stream id on commands)."""
        kind = type(msg)
        if kind is PlayAudio:
            assert isinstance(msg, PlayAudio)
            if not msg.payload:
                raise InternalError("refusing to send an empty media payload")
            payload = b64encode(msg.payload).decode("ascii")
            return f'{{"event":"media","media":{{"payload":"{payload}"}}}}'
        if kind is PlayMark:
            assert isinstance(msg, PlayMark)
            return f'{{"event":"mark","mark":{{"name":{json.dumps(msg.name)}}}}}'
        if kind is ClearAudio:
            return '{"event":"clear"}'
        raise InternalError(f"not an outbound carrier message: {msg!r}")


# --- the carrier's end ----------------------------------------------------------------------------


class TelnyxCarrierCodec:
    """Telnyx's end of one stream, for the simulated carrier: renders what Telnyx sends and
    parses what the gateway sends. Counters are the caller's business, as for Twilio's."""

    def __init__(
        self,
        stream_sid: str,
        *,
        call_control_id: str = "v3:simulated",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_payload_bytes: int = 1024 * 1024,
    ) -> None:
        if not stream_sid:
            raise ValueError("stream_sid must not be empty")
        self.stream_sid = stream_sid
        self.call_control_id = call_control_id
        self.max_message_bytes = max_message_bytes
        self.max_payload_bytes = max_payload_bytes
        self.ignored: Counter[str] = Counter()
        self._sid_json = json.dumps(stream_sid)

    def encode(self, msg: InboundMessage) -> str:
        if isinstance(msg, Media):
            return self.encode_media(
                msg.sequence_number,
                msg.chunk,
                msg.timestamp_ms,
                b64encode(msg.payload).decode("ascii"),
                msg.track,
            )
        body: dict[str, Any]
        if isinstance(msg, Connected):
            body = {"event": "connected", "version": msg.version}
        elif isinstance(msg, Start):
            body = {
                "event": "start",
                "sequence_number": str(msg.sequence_number),
                "start": {
                    "user_id": msg.account_sid,
                    "call_control_id": self.call_control_id,
                    "custom_parameters": dict(msg.custom_parameters),
                    "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
                },
                "stream_id": msg.stream_sid,
            }
        elif isinstance(msg, Mark):
            body = {
                "event": "mark",
                "sequence_number": str(msg.sequence_number),
                "stream_id": msg.stream_sid,
                "mark": {"name": msg.name},
            }
        elif isinstance(msg, Dtmf):
            body = {
                "event": "dtmf",
                "sequence_number": str(msg.sequence_number),
                "stream_id": msg.stream_sid,
                "dtmf": {"digit": msg.digit},
            }
        elif isinstance(msg, Stop):
            body = {
                "event": "stop",
                "sequence_number": str(msg.sequence_number),
                "stream_id": msg.stream_sid,
                "stop": {"user_id": msg.account_sid, "call_control_id": self.call_control_id},
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
        return (
            f'{{"event":"media","sequence_number":"{sequence_number}",'
            f'"media":{{"track":{json.dumps(track)},"chunk":"{chunk}",'
            f'"timestamp":"{timestamp_ms}","payload":"{payload_b64}"}},'
            f'"stream_id":{self._sid_json}}}'
        )

    def parse(self, frame: str | bytes) -> OutboundMessage | Ignored:
        event, obj = _wire.load(frame, self.max_message_bytes)
        if event == "media":
            body = _wire.obj(obj, "media", event)
            payload = _wire.text(body, "payload", event, "media.")
            return PlayAudio(_wire.payload(payload, event, self.max_payload_bytes))
        if event == "mark":
            name = _wire.text(_wire.obj(obj, "mark", event), "name", event, "mark.")
            return PlayMark(_wire.name(name, event))
        if event == "clear":
            return ClearAudio()
        self.ignored[event[:64]] += 1
        return Ignored(event[:64], "not a Telnyx media-stream command")


# --- the carrier ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TelnyxCarrier:
    """Telnyx TeXML: ``POST /telnyx/voice`` answers ``<Connect><Stream>`` in RTP mode."""

    name: str = "telnyx"
    voice_path: str = "/telnyx/voice"
    media_path: str = "/telnyx/media"
    credential_setting: str = "TELNYX_PUBLIC_KEY"
    auth_scheme: str = f"{SIGNATURE_HEADER} (Ed25519) with a replay window"

    def credential(self, settings: Settings) -> str | None:
        return settings.telnyx_public_key

    def check_webhook(self, credential: str, request: SignedRequest, settings: Settings) -> None:
        verify_webhook(
            credential,
            request.body,
            request.headers.get(SIGNATURE_HEADER),
            request.headers.get(TIMESTAMP_HEADER),
            now=request.now,
            tolerance_s=settings.telnyx_signature_tolerance_s,
        )

    check_upgrade = staticmethod(unsigned_upgrade)

    def incoming_call(self, form: Mapping[str, str]) -> IncomingCall:
        call_sid = form.get("CallSid") or form.get("CallControlId") or ""
        if not call_sid:
            raise ValueError("missing CallSid")
        return IncomingCall(call_sid, form.get("To"), form.get("From"))

    def answer(self, target: StreamTarget, fallback: Fallback) -> Answer:
        parameters = {**target.parameters, CALL_SID_PARAM: target.call_sid}
        inner = "".join(
            xml_element("Parameter", name=name, value=value) for name, value in parameters.items()
        )
        stream = xml_parent(
            "Stream",
            inner,
            url=target.url,
            codec="PCMU",  # the caller's audio as PCMU even on a PCMA call (Telnyx transcodes)
            bidirectionalMode="rtp",
            bidirectionalCodec="PCMU",
            bidirectionalSamplingRate="8000",
        )
        # TeXML runs what follows <Connect> when the stream ends: the fallback.
        rest = fallback_twiml(fallback).split("<Response>", 1)[1]
        return Answer(f"{_XML_DECL}<Response><Connect>{stream}</Connect>{rest}")

    def fallback(self, fallback: Fallback) -> Answer:
        return Answer(fallback_twiml(fallback))

    def new_codec(self, settings: Settings, query: Mapping[str, str]) -> TelnyxCodec:
        return TelnyxCodec(max_message_bytes=settings.max_message_bytes, stream_parameters=query)


TELNYX: Final = TelnyxCarrier()
