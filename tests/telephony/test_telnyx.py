"""Telnyx: the media dialect (both ends, reordering), the Ed25519 webhook signature, TeXML."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.errors import (
    AudioFormatError,
    CarrierError,
    CarrierProtocolError,
    Forbidden,
    InternalError,
    MessageTooLarge,
    UnsupportedMediaFormat,
)
from gateway.numbers import Fallback
from gateway.telephony.carriers import CALL_SID_PARAM, StreamTarget
from gateway.telephony.messages import (
    ClearAudio,
    Connected,
    Dtmf,
    Ignored,
    Mark,
    Media,
    PlayAudio,
    PlayMark,
    Start,
    Stop,
    frozen_mapping,
)
from gateway.telephony.telnyx import (
    TELNYX,
    Reorderer,
    TelnyxCarrierCodec,
    TelnyxCodec,
    sign_webhook,
    verify_webhook,
)

pytestmark = pytest.mark.timeout(10)

# The frames of Telnyx's AsyncAPI page ("Stream call media over WebSocket"), as published.
CONNECTED = '{"event": "connected", "version": "1.0.0"}'
START = json.dumps(
    {
        "event": "start",
        "sequence_number": "1",
        "stream_id": "32DE0DEA-53CB-4B21-89A4-9E1819C043BC",
        "start": {
            "user_id": "3E6F995F-85F7-4705-9741-53B116D28237",
            "call_control_id": "v2:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ",
            "call_session_id": "ff55a038-6f5d-11ef-9692-02420aeffb1f",
            "from": "+13122010094",
            "to": "+13122123456",
            "tags": ["TAG1", "TAG2"],
            "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
            "custom_parameters": {"customer_id": "customer_123"},
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
        },
    }
)
SID = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
CCID = "v2:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ"
AUDIO = bytes(range(160))


def media(seq: int, payload: bytes = AUDIO, track: str = "inbound") -> str:
    return json.dumps(
        {
            "event": "media",
            "sequence_number": str(seq),
            "media": {
                "track": track,
                "chunk": str(seq - 1),
                "timestamp": str(20 * (seq - 2)),
                "payload": base64.b64encode(payload).decode(),
            },
            "stream_id": SID,
        }
    )


def started(**kw: object) -> TelnyxCodec:
    codec = TelnyxCodec(**kw)  # type: ignore[arg-type]
    assert isinstance(codec.parse(CONNECTED), Connected)
    assert isinstance(codec.parse(START), Start)
    return codec


# --- the documented frames --------------------------------------------------------------------


def test_documented_start_parses_to_the_neutral_start() -> None:
    codec = TelnyxCodec()
    assert codec.parse(CONNECTED) == Connected("", "1.0.0")
    start = codec.parse(START)
    assert isinstance(start, Start)
    assert start.stream_sid == SID
    assert start.call_sid == CCID  # no gateway parameter: the call control id names the call
    assert start.account_sid == "3E6F995F-85F7-4705-9741-53B116D28237"
    assert dict(start.custom_parameters) == {"customer_id": "customer_123"}
    assert start.sequence_number == 1
    assert codec.stream_sid == SID and codec.call_control_id == CCID


def test_the_admitted_call_sid_and_url_parameters_bind_the_stream() -> None:
    frame = json.loads(START)
    frame["start"]["custom_parameters"] = {CALL_SID_PARAM: "CAwebhook", "gateway_call_token": "t"}
    codec = TelnyxCodec(stream_parameters={"extra": "1"})
    start = codec.parse(json.dumps(frame))
    assert isinstance(start, Start)
    assert start.call_sid == "CAwebhook"
    assert start.custom_parameters["gateway_call_token"] == "t"
    assert start.custom_parameters["extra"] == "1"


def test_media_mark_dtmf_stop_in_order() -> None:
    codec = started()
    assert codec.parse(media(2)) == Media(SID, 2, 1, 0, AUDIO, "inbound")
    mark = {"event": "mark", "sequence_number": "3", "stream_id": SID, "mark": {"name": "m1"}}
    assert codec.parse(json.dumps(mark)) == Mark(SID, 3, "m1")
    dtmf = {"event": "dtmf", "sequence_number": "4", "stream_id": SID, "dtmf": {"digit": "#"}}
    assert codec.parse(json.dumps(dtmf)) == Dtmf(SID, 4, "#")
    stop = {
        "event": "stop",
        "sequence_number": "5",
        "stream_id": SID,
        "stop": {"user_id": "u", "call_control_id": CCID},
    }
    stopped = codec.parse(json.dumps(stop))
    assert isinstance(stopped, Stop) and stopped.call_sid == CCID
    assert codec.drain() == ()


def test_encode_is_what_telnyx_accepts() -> None:
    codec = started()
    assert json.loads(codec.encode(PlayAudio(b"\x01\x02"))) == {
        "event": "media",
        "media": {"payload": "AQI="},
    }
    assert json.loads(codec.encode(PlayMark('a"b'))) == {"event": "mark", "mark": {"name": 'a"b'}}
    assert json.loads(codec.encode(ClearAudio())) == {"event": "clear"}
    with pytest.raises(InternalError):
        codec.encode(PlayAudio(b""))


# --- both ends round-trip -------------------------------------------------------------------


def test_carrier_end_and_gateway_end_round_trip() -> None:
    carrier = TelnyxCarrierCodec(SID, call_control_id=CCID)
    gateway = TelnyxCodec()
    start = Start(
        SID,
        "CAx",
        "user",
        ("inbound",),
        frozen_mapping({CALL_SID_PARAM: "CAx", "k": "v"}),
    )
    inbound = [
        Connected("", "1.0.0"),
        start,
        Media(SID, 2, 1, 0, AUDIO),
        Mark(SID, 3, "x"),
        Dtmf(SID, 4, "7"),
        Stop(SID, 5, "CAx", "user"),
    ]
    for msg in inbound:
        assert gateway.parse(carrier.encode(msg)) == msg
    for out in (PlayAudio(AUDIO), PlayMark("n"), ClearAudio()):
        assert carrier.parse(gateway.encode(out)) == out
    assert isinstance(carrier.parse('{"event": "bogus"}'), Ignored)


# --- reordering -------------------------------------------------------------------------------


def test_out_of_order_media_is_put_back_in_sequence() -> None:
    codec = started()
    first = codec.parse(media(3))
    assert isinstance(first, Ignored) and "held" in first.reason
    assert codec.drain() == ()
    second = codec.parse(media(2))
    assert isinstance(second, Media) and second.sequence_number == 2
    assert [m.sequence_number for m in codec.drain()] == [3]  # type: ignore[union-attr]
    assert codec.reorder.reordered == 1 and codec.reorder.lost == 0


def test_a_gap_is_given_up_after_the_window_and_late_frames_are_dropped() -> None:
    codec = started(reorder_window=2)
    assert isinstance(codec.parse(media(3)), Ignored)
    assert isinstance(codec.parse(media(4)), Ignored)
    out = codec.parse(media(5))  # a third held frame: sequence 2 is lost
    released = [out, *codec.drain()]
    assert [m.sequence_number for m in released] == [3, 4, 5]  # type: ignore[union-attr]
    assert codec.reorder.lost == 1
    late = codec.parse(media(2))
    assert isinstance(late, Ignored)
    assert codec.reorder.late == 1


def test_stop_releases_what_is_held_first() -> None:
    codec = started()
    assert isinstance(codec.parse(media(4)), Ignored)
    stop = {"event": "stop", "sequence_number": "6", "stream_id": SID, "stop": {}}
    first = codec.parse(json.dumps(stop))
    rest = codec.drain()
    assert isinstance(first, Media) and first.sequence_number == 4
    assert len(rest) == 1 and isinstance(rest[0], Stop)


def test_an_unnumbered_mark_or_stop_is_delivered_as_it_comes() -> None:
    codec = started()
    assert isinstance(codec.parse(media(3)), Ignored)  # held, waiting for 2
    mark = {"event": "mark", "stream_id": SID, "mark": {"name": "m"}}
    assert codec.parse(json.dumps(mark)) == Mark(SID, 0, "m")
    first = codec.parse(json.dumps({"event": "stop", "stream_id": SID}))
    assert isinstance(first, Media) and first.sequence_number == 3  # what was held comes first
    assert [type(m) for m in codec.drain()] == [Stop]


def test_other_tracks_keep_the_numbering_whole() -> None:
    codec = started()
    assert isinstance(codec.parse(media(3)), Ignored)  # held
    other = codec.parse(media(2, track="outbound"))
    assert isinstance(other, Ignored) and "not caller audio" in other.reason
    assert [m.sequence_number for m in codec.drain()] == [3]  # type: ignore[union-attr]


@pytest.mark.parametrize("order", [[2, 3, 4, 5, 6], [3, 2, 5, 4, 6], [6, 5, 4, 3, 2]])
def test_reorderer_output_does_not_depend_on_arrival_order(order: list[int]) -> None:
    r = Reorderer(window=5)
    r.expect(2)
    out = []
    for seq in order:
        out.extend(r.push(seq, Mark("s", seq, str(seq))))
    assert [m.sequence_number for m in out] == [2, 3, 4, 5, 6]  # type: ignore[union-attr]


# --- malformed frames: a clear error, state unchanged ------------------------------------------


@pytest.mark.parametrize(
    ("frame", "error", "words"),
    [
        ("{not json", CarrierProtocolError, "not valid JSON"),
        ("[1]", CarrierProtocolError, "expected an object"),
        ('{"event": "media"}', CarrierProtocolError, "sequence_number"),
        (media(2).replace(SID, "other"), CarrierProtocolError, "stream_id"),
        (media(2).replace('"2"', '"x"', 1), CarrierProtocolError, "sequence_number"),
        (media(2, payload=b"").replace('"payload": ""', '"payload": "!!"'), CarrierError, "base64"),
        (media(2, payload=b"\x00" * 9000), AudioFormatError, "exceeds"),
        (b"\x00\x01", CarrierProtocolError, "binary"),
        ("x" * 70_000, MessageTooLarge, "exceeds"),
        (
            '{"event":"error","sequence_number":"2","stream_id":"' + SID + '",'
            '"payload":{"code":100002,"title":"unknown_error"}}',
            CarrierProtocolError,
            "100002",
        ),
    ],
)
def test_malformed_frames_raise_a_carrier_error_naming_the_fault(
    frame: str | bytes, error: type[Exception], words: str
) -> None:
    codec = started()
    with pytest.raises(error, match=words):
        codec.parse(frame)
    # the stream goes on: the next good frame parses
    assert isinstance(codec.parse(media(2)), Media)
    assert sum(codec.rejected.values()) == 1


def test_media_before_start_and_a_second_start_are_refused() -> None:
    codec = TelnyxCodec()
    with pytest.raises(CarrierProtocolError, match="before 'start'"):
        codec.parse(media(2))
    codec.parse(START)
    with pytest.raises(CarrierProtocolError, match="second start"):
        codec.parse(START)


def test_a_format_other_than_pcmu_8k_is_refused() -> None:
    frame = json.loads(START)
    frame["start"]["media_format"] = {"encoding": "L16", "sample_rate": 16000, "channels": 1}
    with pytest.raises(UnsupportedMediaFormat, match="PCMU 8000 Hz"):
        TelnyxCodec().parse(json.dumps(frame))


# --- webhook signature --------------------------------------------------------------------------

KEY = Ed25519PrivateKey.generate()
PUBLIC = base64.b64encode(KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
BODY = b"CallSid=v3%3Aabc&From=%2B1555&To=%2B1666"
NOW = 1_760_000_000


def _verify(headers: dict[str, str], body: bytes = BODY, now: float = NOW) -> None:
    verify_webhook(
        PUBLIC,
        body,
        headers.get("telnyx-signature-ed25519"),
        headers.get("telnyx-timestamp"),
        now=now,
        tolerance_s=300,
    )


def test_a_valid_signature_passes() -> None:
    _verify(sign_webhook(KEY, BODY, NOW - 10))


def test_a_tampered_body_fails() -> None:
    with pytest.raises(Forbidden, match="does not match"):
        _verify(sign_webhook(KEY, BODY, NOW), body=BODY.replace(b"1666", b"1667"))


def test_a_tampered_timestamp_fails() -> None:
    headers = sign_webhook(KEY, BODY, NOW)
    headers["telnyx-timestamp"] = str(NOW - 1)
    with pytest.raises(Forbidden, match="does not match"):
        _verify(headers)


def test_another_keys_signature_fails() -> None:
    with pytest.raises(Forbidden, match="does not match"):
        _verify(sign_webhook(Ed25519PrivateKey.generate(), BODY, NOW))


@pytest.mark.parametrize(("age", "words"), [(301, "old"), (-301, "future")])
def test_expired_or_future_timestamps_fail(age: int, words: str) -> None:
    with pytest.raises(Forbidden, match=words):
        _verify(sign_webhook(KEY, BODY, NOW - age))


@pytest.mark.parametrize(
    "headers",
    [{}, {"telnyx-timestamp": str(NOW)}, {"telnyx-signature-ed25519": "AAAA"}],
    ids=["none", "no-signature", "no-timestamp"],
)
def test_missing_headers_fail(headers: dict[str, str]) -> None:
    with pytest.raises(Forbidden, match="not signed"):
        _verify(headers)


def test_garbage_signature_and_timestamp_fail() -> None:
    with pytest.raises(Forbidden):
        _verify({"telnyx-signature-ed25519": "%%%", "telnyx-timestamp": str(NOW)})
    with pytest.raises(Forbidden, match="Unix seconds"):
        _verify({"telnyx-signature-ed25519": "AAAA", "telnyx-timestamp": "soon"})


# --- TeXML ------------------------------------------------------------------------------------


def test_texml_answer_streams_bidirectionally_with_binding_parameters() -> None:
    target = StreamTarget("wss://gw.example.com/telnyx/media", {"gateway_call_token": "t&"}, "v3:c")
    root = ET.fromstring(TELNYX.answer(target, Fallback(message="Sorry")).body)
    stream = root.find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url") == "wss://gw.example.com/telnyx/media"
    assert stream.get("bidirectionalMode") == "rtp"
    assert stream.get("bidirectionalCodec") == "PCMU"
    assert stream.get("codec") == "PCMU"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == {"gateway_call_token": "t&", CALL_SID_PARAM: "v3:c"}
    assert root.findtext("Say") == "Sorry"  # the fallback after the stream
    assert root.find("Hangup") is not None


def test_texml_webhook_fields() -> None:
    call = TELNYX.incoming_call({"CallSid": "v3:x", "To": "+1666", "From": "+1555"})
    assert (call.call_sid, call.called, call.caller) == ("v3:x", "+1666", "+1555")
    with pytest.raises(ValueError, match="CallSid"):
        TELNYX.incoming_call({"To": "+1666"})
