"""Plivo: XML answer, V3 webhook signatures, and its audio-stream dialect, sans-I/O.

Media dialect (docs.plivo.com audio streaming; docs/carriers.md says what is confirmed): text
JSON frames with camelCase fields::

    {"event":"start","sequenceNumber":1,"start":{"callId":"…","streamId":"…","accountId":"…",
     "tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000}}}
    {"event":"media","sequenceNumber":2,"streamId":"…",
     "media":{"track":"inbound","timestamp":"…","chunk":1,"payload":"<base64 μ-law>"}}
    {"event":"dtmf", …, "dtmf":{"digit":"5"}}
    {"event":"playedStream","streamId":"…","name":"…"}    answers a checkpoint
    {"event":"clearedAudio","streamId":"…"}               answers a clearAudio

and back ``playAudio`` (``media{contentType, sampleRate, payload}``), ``checkpoint{name}`` and
``clearAudio``. The core's marks are checkpoints and its clears are ``clearAudio``; a
``playedStream`` is a mark echo. Whether Plivo also answers pending checkpoints when it clears
(Twilio echoes its marks) is not documented; the mark ledger needs neither (a clear settles
every pending mark itself).

The stream binds to its call by the query string of the ``<Stream>`` URL (Plivo passes no
parameters in ``start``): the codec is built with it and lays it under
``start.custom_parameters``. ``media.timestamp`` is turned into milliseconds since the first
media frame, since Plivo's examples show wall-clock epoch milliseconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from base64 import b64encode
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from gateway.errors import (
    CarrierError,
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
from gateway.telephony.wire import JsonWire

if TYPE_CHECKING:
    from gateway.numbers import Fallback
    from gateway.settings import Settings

__all__ = [
    "NONCE_HEADER",
    "PLIVO",
    "SIGNATURE_HEADER",
    "PlivoCarrier",
    "PlivoCarrierCodec",
    "PlivoCodec",
    "sign_v3",
    "signature_v3",
    "validate_v3",
]

SIGNATURE_HEADER: Final = "x-plivo-signature-v3"
NONCE_HEADER: Final = "x-plivo-signature-v3-nonce"
CONTENT_TYPE: Final = "audio/x-mulaw;rate=8000"
_XML_DECL: Final = '<?xml version="1.0" encoding="UTF-8"?>'

_wire = JsonWire("Plivo")


# --- V3 signatures --------------------------------------------------------------------------------


def _values(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else sorted(value)


def signature_v3(
    auth_token: str,
    url: str,
    nonce: str,
    params: Mapping[str, str | Sequence[str]],
    method: str = "POST",
) -> str:
    """Plivo's V3 signature of a request (plivo-python ``utils/signature_v3.py``).

    The base string is the URL without its query, then ``?`` and its query parameters sorted
    as ``k=v`` joined by ``&``; for a POST with a body, a ``.`` after the query (when there is
    one) and every body parameter sorted as ``kv`` with no separator; then ``.`` and the nonce.
    HMAC-SHA256 with the auth token, base64.
    """
    parts = urlsplit(url)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    query_params = {k: v for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    body = dict(params) if method.upper() == "POST" else {}
    if method.upper() != "POST":
        query_params.update({k: _values(v) for k, v in params.items()})
    query = "&".join(f"{k}={v}" for k in sorted(query_params) for v in _values(query_params[k]))
    if query or body:
        base += "?" + query
    if query and body:
        base += "."
    base += "".join(f"{k}{v}" for k in sorted(body) for v in _values(body[k]))
    mac = hmac.new(auth_token.encode(), f"{base}.{nonce}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


def validate_v3(
    auth_token: str,
    url: str,
    nonce: str | None,
    signatures: str | None,
    params: Mapping[str, str | Sequence[str]],
    method: str = "POST",
) -> bool:
    """Whether one of the comma-separated ``signatures`` signs this request."""
    if not nonce or not signatures:
        return False
    expected = signature_v3(auth_token, url, nonce, params, method).encode()
    return any(hmac.compare_digest(expected, s.strip().encode()) for s in signatures.split(","))


def sign_v3(
    auth_token: str, url: str, params: Mapping[str, str | Sequence[str]], nonce: str
) -> dict[str, str]:
    """The headers Plivo would send with this POST (tests, load)."""
    return {
        "X-Plivo-Signature-V3": signature_v3(auth_token, url, nonce, params),
        "X-Plivo-Signature-V3-Nonce": nonce,
    }


# --- the gateway's end ----------------------------------------------------------------------------


class PlivoCodec:
    """The gateway's end of one Plivo audio stream (see the module docstring).

    ``stream_parameters`` is the stream URL's query: it carries the call's binding. Frames
    arrive in order (one TCP connection); a gap in ``sequenceNumber`` is counted, not repaired.
    """

    def __init__(
        self,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        stream_parameters: Mapping[str, str] | None = None,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_payload_bytes = max_payload_bytes
        self.stream_parameters = dict(stream_parameters or {})
        self.start: Start | None = None
        self.stopped = False
        self.last_sequence_number = 0
        self.sequence_gaps = 0
        self.parsed = 0
        self.ignored: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self._first_timestamp: int | None = None
        self._sid_json = ""

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
        return ()

    def _parse(self, frame: str | bytes) -> InboundMessage | Ignored:
        event, obj = _wire.load(frame, self.max_message_bytes)
        if event == "start":
            return self._start(obj)
        if event == "connected":  # not documented for Plivo; harmless if it comes
            return Connected("", str(obj.get("version", "")))
        if event not in ("media", "playedStream", "played", "dtmf", "stop", "clearedAudio"):
            return Ignored(event[:64], "event not handled by the gateway")
        start = self._started(obj, event)
        seq = self._sequence(obj, event)
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
            self._advance(seq)
            if track != "inbound":
                return Ignored(event, f"track {track[:32]!r} is not caller audio")
            if self._first_timestamp is None:
                self._first_timestamp = timestamp
            ms = max(0, timestamp - self._first_timestamp)
            return Media(sid, seq, chunk, ms, payload, track)
        if event in ("playedStream", "played"):
            name = _wire.name(_wire.text(obj, "name", event), event)
            self._advance(seq)
            return Mark(sid, seq, name)
        if event == "dtmf":
            body = _wire.obj(obj, "dtmf", event)
            digit = _wire.text(body, "digit", event, "dtmf.")
            if digit not in DTMF_DIGITS:
                raise _wire.fail(event, f"'dtmf.digit' {digit[:8]!r} is not one of 0-9 * # A-D")
            self._advance(seq)
            return Dtmf(sid, seq, digit)
        if event == "clearedAudio":
            self._advance(seq)
            return Ignored(event, "the clear is settled when it is sent")
        self._advance(seq)
        self.stopped = True
        return Stop(sid, seq, start.call_sid, start.account_sid)

    def _sequence(self, obj: dict[str, Any], event: str) -> int:
        """``sequenceNumber`` when present (the answers to commands may lack it)."""
        if "sequenceNumber" not in obj:
            return self.last_sequence_number
        return _wire.number(obj, "sequenceNumber", event)

    def _advance(self, seq: int) -> None:
        if seq != self.last_sequence_number + 1 and seq != self.last_sequence_number:
            self.sequence_gaps += 1
        self.last_sequence_number = max(seq, self.last_sequence_number)

    def _started(self, obj: dict[str, Any], event: str) -> Start:
        if self.start is None:
            raise _wire.fail(event, "received before 'start'")
        if self.stopped:
            raise _wire.fail(event, "received after 'stop'")
        sid = obj.get("streamId", self.start.stream_sid)
        if sid != self.start.stream_sid:
            raise _wire.fail(event, f"streamId {str(sid)[:40]!r} is not this stream's")
        return self.start

    def _start(self, obj: dict[str, Any]) -> Start:
        event = "start"
        if self.start is not None:
            raise _wire.fail(event, f"a second start on stream {self.start.stream_sid!r}")
        seq = _wire.number(obj, "sequenceNumber", event) if "sequenceNumber" in obj else 1
        body = _wire.obj(obj, "start", event)
        stream_id = _wire.text(body, "streamId", event, "start.")
        if not stream_id:
            raise _wire.fail(event, "'start.streamId' is empty")
        call_id = _wire.text(body, "callId", event, "start.")
        account = body.get("accountId", "")
        tracks = body.get("tracks", ["inbound"])
        if type(tracks) is not list or not all(type(t) is str for t in tracks):
            raise _wire.fail(event, "'start.tracks' is not a list of strings")
        fmt = _wire.obj(body, "mediaFormat", event, "start.")
        encoding = _wire.text(fmt, "encoding", event, "start.mediaFormat.")
        rate = _wire.number(fmt, "sampleRate", event, "start.mediaFormat.")
        if (encoding.lower(), rate) != (MULAW_8K_MONO.encoding, MULAW_8K_MONO.sample_rate):
            raise UnsupportedMediaFormat(
                f"Plivo stream {stream_id!r} announces {encoding} {rate} Hz; the gateway "
                f'needs audio/x-mulaw 8000 Hz (<Stream contentType="{CONTENT_TYPE}">)'
            )
        params = dict(self.stream_parameters)
        start = Start(
            stream_sid=stream_id,
            call_sid=params.get(CALL_SID_PARAM) or call_id,
            account_sid=account if type(account) is str else "",
            tracks=tuple(tracks),
            custom_parameters=frozen_mapping(params),
            media_format=MULAW_8K_MONO,
            sequence_number=seq,
        )
        self.start = start
        self.last_sequence_number = seq
        self._sid_json = json.dumps(stream_id)
        return start

    def encode(self, msg: OutboundMessage) -> str:
        """``playAudio`` / ``checkpoint`` / ``clearAudio``; only after ``start``."""
        if not self._sid_json:
            raise InternalError(f"cannot send {type(msg).__name__} before the stream's start")
        kind = type(msg)
        if kind is PlayAudio:
            assert isinstance(msg, PlayAudio)
            if not msg.payload:
                raise InternalError("refusing to send an empty media payload")
            payload = b64encode(msg.payload).decode("ascii")
            return (
                f'{{"event":"playAudio","streamId":{self._sid_json},"media":'
                f'{{"contentType":"audio/x-mulaw","sampleRate":8000,"payload":"{payload}"}}}}'
            )
        if kind is PlayMark:
            assert isinstance(msg, PlayMark)
            return (
                f'{{"event":"checkpoint","streamId":{self._sid_json},'
                f'"name":{json.dumps(msg.name)}}}'
            )
        if kind is ClearAudio:
            return f'{{"event":"clearAudio","streamId":{self._sid_json}}}'
        raise InternalError(f"not an outbound carrier message: {msg!r}")


# --- the carrier's end ----------------------------------------------------------------------------


class PlivoCarrierCodec:
    """Plivo's end of one stream, for the simulated carrier."""

    def __init__(
        self,
        stream_sid: str,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_payload_bytes: int = 1024 * 1024,
        epoch_ms: int = 0,
    ) -> None:
        if not stream_sid:
            raise ValueError("stream_sid must not be empty")
        self.stream_sid = stream_sid
        self.max_message_bytes = max_message_bytes
        self.max_payload_bytes = max_payload_bytes
        self.epoch_ms = epoch_ms
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
                "sequenceNumber": msg.sequence_number,
                "start": {
                    "callId": msg.call_sid,
                    "streamId": msg.stream_sid,
                    "accountId": msg.account_sid,
                    "tracks": list(msg.tracks),
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
                },
                "extra_headers": "{}",
            }
        elif isinstance(msg, Mark):
            body = {
                "event": "playedStream",
                "sequenceNumber": msg.sequence_number,
                "streamId": msg.stream_sid,
                "name": msg.name,
            }
        elif isinstance(msg, Dtmf):
            body = {
                "event": "dtmf",
                "sequenceNumber": msg.sequence_number,
                "streamId": msg.stream_sid,
                "dtmf": {"track": "inbound", "digit": msg.digit},
            }
        elif isinstance(msg, Stop):
            body = {
                "event": "stop",
                "sequenceNumber": msg.sequence_number,
                "streamId": msg.stream_sid,
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
            f'{{"event":"media","sequenceNumber":{sequence_number},"streamId":{self._sid_json},'
            f'"media":{{"track":{json.dumps(track)},"timestamp":"{self.epoch_ms + timestamp_ms}",'
            f'"chunk":{chunk},"payload":"{payload_b64}"}}}}'
        )

    def parse(self, frame: str | bytes) -> OutboundMessage | Ignored:
        event, obj = _wire.load(frame, self.max_message_bytes)
        if event in ("playAudio", "checkpoint", "clearAudio"):
            sid = obj.get("streamId")
            if sid != self.stream_sid:
                raise _wire.fail(event, f"streamId {str(sid)[:40]!r} is not {self.stream_sid!r}")
        if event == "playAudio":
            body = _wire.obj(obj, "media", event)
            ctype = _wire.text(body, "contentType", event, "media.")
            if ctype != "audio/x-mulaw":
                raise _wire.fail(event, f"contentType {ctype[:40]!r} is not this stream's")
            payload = _wire.text(body, "payload", event, "media.")
            return PlayAudio(_wire.payload(payload, event, self.max_payload_bytes))
        if event == "checkpoint":
            return PlayMark(_wire.name(_wire.text(obj, "name", event), event))
        if event == "clearAudio":
            return ClearAudio()
        self.ignored[event[:64]] += 1
        return Ignored(event[:64], "not a Plivo audio-stream command")


# --- the carrier ----------------------------------------------------------------------------------


def _fallback_xml(fallback: Fallback) -> str:
    if fallback.number:
        return xml_parent("Dial", xml_element("Number", fallback.number))
    return xml_element("Speak", fallback.message) + "<Hangup/>"


@dataclass(frozen=True, slots=True)
class PlivoCarrier:
    """Plivo XML: ``POST /plivo/answer`` answers ``<Stream bidirectional="true">``."""

    name: str = "plivo"
    voice_path: str = "/plivo/answer"
    media_path: str = "/plivo/media"
    credential_setting: str = "PLIVO_AUTH_TOKEN"
    auth_scheme: str = "X-Plivo-Signature-V3 (HMAC-SHA256 with nonce)"

    def credential(self, settings: Settings) -> str | None:
        token = settings.plivo_auth_token
        return None if token is None else token.get_secret_value()

    def check_webhook(self, credential: str, request: SignedRequest, settings: Settings) -> None:
        del settings
        if not validate_v3(
            credential,
            request.url,
            request.headers.get(NONCE_HEADER),
            request.headers.get(SIGNATURE_HEADER),
            request.form,
            request.method,
        ):
            raise Forbidden(
                f"X-Plivo-Signature-V3 does not match the webhook request "
                f"(checked against {request.url})"
            )

    check_upgrade = staticmethod(unsigned_upgrade)

    def incoming_call(self, form: Mapping[str, str]) -> IncomingCall:
        call_uuid = form.get("CallUUID", "")
        if not call_uuid:
            raise ValueError("missing CallUUID")
        return IncomingCall(call_uuid, form.get("To"), form.get("From"))

    def answer(self, target: StreamTarget, fallback: Fallback) -> Answer:
        query = urlencode({**target.parameters, CALL_SID_PARAM: target.call_sid})
        stream = xml_element(
            "Stream",
            f"{target.url}?{query}",
            bidirectional="true",
            keepCallAlive="true",
            contentType=CONTENT_TYPE,
        )
        # keepCallAlive: the XML after <Stream> runs only when the stream ends (the fallback).
        return Answer(f"{_XML_DECL}<Response>{stream}{_fallback_xml(fallback)}</Response>")

    def fallback(self, fallback: Fallback) -> Answer:
        return Answer(f"{_XML_DECL}<Response>{_fallback_xml(fallback)}</Response>")

    def new_codec(self, settings: Settings, query: Mapping[str, str]) -> PlivoCodec:
        return PlivoCodec(max_message_bytes=settings.max_message_bytes, stream_parameters=query)


PLIVO: Final = PlivoCarrier()
