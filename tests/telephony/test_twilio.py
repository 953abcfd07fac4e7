"""The Twilio Media Streams codec, both ends: exact frames, round trips, every malformed case."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import (
    AudioFormatError,
    CarrierError,
    CarrierProtocolError,
    InternalError,
    MessageTooLarge,
    UnsupportedMediaFormat,
)
from gateway.telephony.messages import (
    MULAW_8K_MONO,
    CarrierCodec,
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
from gateway.telephony.twilio import TwilioCarrierCodec, TwilioCodec, start_message

SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL = "CA44f9a8c5c9bd5d2ed6d6fa32e1a3a9ae"
ACCOUNT = "AC00000000000000000000000000000000"

# Frames in the exact shape of Twilio's documentation (websocket-messages page), spaces and all.
CONNECTED = '{"event": "connected", "protocol": "Call", "version": "1.0.0"}'
START = json.dumps(
    {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": ACCOUNT,
            "streamSid": SID,
            "callSid": CALL,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"FirstName": "Jane", "gateway_call_token": "tok"},
        },
        "streamSid": SID,
    }
)
PAYLOAD_B64 = (
    "no+JhoaJjpzSHxAKBgYJDhtEopGKh4aIjZm7JhILBwYIDRg1qZSLh4aIjJevLBUMBwYHDBUsr5eM"
    "iIaHi5SpNRgNCAYHCxIroom="
)
MEDIA = json.dumps(
    {
        "event": "media",
        "sequenceNumber": "3",
        "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": PAYLOAD_B64},
        "streamSid": SID,
    }
)
MARK = json.dumps(
    {"event": "mark", "sequenceNumber": "4", "streamSid": SID, "mark": {"name": "my label"}}
)
DTMF = json.dumps(
    {
        "event": "dtmf",
        "streamSid": SID,
        "sequenceNumber": "5",
        "dtmf": {"track": "inbound_track", "digit": "1"},
    }
)
STOP = json.dumps(
    {
        "event": "stop",
        "sequenceNumber": "6",
        "streamSid": SID,
        "stop": {"accountSid": ACCOUNT, "callSid": CALL},
    }
)


def started(**kwargs: Any) -> TwilioCodec:
    codec = TwilioCodec(**kwargs)
    codec.parse(CONNECTED)
    codec.parse(START)
    return codec


def test_it_is_a_carrier_codec() -> None:
    codec: CarrierCodec = TwilioCodec()
    assert codec.stream_sid is None


def test_documented_frames_parse_to_typed_messages() -> None:
    codec = TwilioCodec()
    assert codec.parse(CONNECTED) == Connected("Call", "1.0.0")
    start = codec.parse(START)
    assert isinstance(start, Start)
    assert start.stream_sid == SID and codec.stream_sid == SID
    assert start.call_sid == CALL and start.account_sid == ACCOUNT
    assert start.tracks == ("inbound",)
    assert dict(start.custom_parameters) == {"FirstName": "Jane", "gateway_call_token": "tok"}
    assert start.media_format == MULAW_8K_MONO
    assert start.sequence_number == 1
    media = codec.parse(MEDIA)
    assert media == Media(SID, 3, 1, 5, base64.b64decode(PAYLOAD_B64), "inbound")
    assert codec.parse(MARK) == Mark(SID, 4, "my label")
    assert codec.parse(DTMF) == Dtmf(SID, 5, "1", "inbound_track")
    assert codec.parse(STOP) == Stop(SID, 6, CALL, ACCOUNT)
    assert codec.parsed == 6 and codec.rejected_count == 0 and codec.sequence_gaps == 1
    assert codec.stopped


def test_messages_are_frozen_and_parameters_read_only() -> None:
    start = started().start
    assert start is not None
    with pytest.raises(AttributeError):
        start.call_sid = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        start.custom_parameters["FirstName"] = "Eve"  # type: ignore[index]


def test_bytes_text_frames_are_rejected_as_binary() -> None:
    codec = TwilioCodec()
    with pytest.raises(CarrierProtocolError, match="binary"):
        codec.parse(CONNECTED.encode())
    assert codec.rejected["CarrierProtocolError"] == 1


INBOUND: list[InboundMessage] = [
    Connected("Call", "1.0.0"),
    start_message(
        stream_sid=SID, call_sid=CALL, account_sid=ACCOUNT, custom_parameters={"k": "v é"}
    ),
    Media(SID, 2, 1, 0, b"\xff" * 160),
    Media(SID, 3, 2, 20, bytes(range(256))),
    Mark(SID, 4, 'name "with" quotes/ünï'),
    Dtmf(SID, 5, "#"),
    Stop(SID, 6, CALL, ACCOUNT),
]


def test_every_inbound_message_round_trips_through_both_ends() -> None:
    carrier = TwilioCarrierCodec(SID)
    gateway = TwilioCodec()
    for msg in INBOUND:
        frame = carrier.encode(msg)
        assert gateway.parse(frame) == msg
    assert gateway.sequence_gaps == 0


OUTBOUND: list[OutboundMessage] = [
    PlayAudio(b"\x00\x7f\xff" * 100),
    PlayMark("resp_1:item_9:4200"),
    PlayMark('odd "name" \\ ü'),
    ClearAudio(),
]


@pytest.mark.parametrize("msg", OUTBOUND, ids=lambda m: type(m).__name__)
def test_every_outbound_message_round_trips_through_both_ends(msg: OutboundMessage) -> None:
    frame = started().encode(msg)
    assert TwilioCarrierCodec(SID).parse(frame) == msg


def test_outbound_frames_have_the_documented_shape() -> None:
    codec = started()
    assert json.loads(codec.encode(PlayAudio(b"\xff\xfe"))) == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": "//4="},
    }
    assert json.loads(codec.encode(PlayMark("m1"))) == {
        "event": "mark",
        "streamSid": SID,
        "mark": {"name": "m1"},
    }
    assert json.loads(codec.encode(ClearAudio())) == {"event": "clear", "streamSid": SID}


def test_encode_needs_the_stream_sid() -> None:
    with pytest.raises(InternalError, match="before the stream's start"):
        TwilioCodec().encode(ClearAudio())
    with pytest.raises(InternalError, match="empty"):
        started().encode(PlayAudio(b""))


def test_numbers_may_also_arrive_as_json_numbers() -> None:
    codec = started()
    frame = json.loads(MEDIA)
    frame["sequenceNumber"] = 2
    frame["media"]["chunk"] = 1
    frame["media"]["timestamp"] = 0
    msg = codec.parse(json.dumps(frame))
    assert isinstance(msg, Media) and (msg.sequence_number, msg.chunk, msg.timestamp_ms) == (
        2,
        1,
        0,
    )


def _mutated(frame: str, path: tuple[str, ...], value: object) -> str:
    obj = json.loads(frame)
    node = obj
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return json.dumps(obj)


_DELETE = object()

MALFORMED_AFTER_START = [
    ("not json", "{", CarrierProtocolError),
    ("json array", "[1, 2]", CarrierProtocolError),
    ("json string", '"media"', CarrierProtocolError),
    ("no event", '{"streamSid": "x"}', CarrierProtocolError),
    ("event not a string", '{"event": 3}', CarrierProtocolError),
    ("deep nesting", "[" * 50_000 + "]" * 50_000, MessageTooLarge),
    ("nested under limit", '{"event": ' + "[" * 3000 + "]" * 3000 + "}", CarrierProtocolError),
    (
        "huge int literal",
        '{"event": "media", "sequenceNumber": ' + "9" * 5000 + "}",
        CarrierProtocolError,
    ),
    ("media missing", _mutated(MEDIA, ("media",), _DELETE), CarrierProtocolError),
    ("media not object", _mutated(MEDIA, ("media",), "x"), CarrierProtocolError),
    ("payload missing", _mutated(MEDIA, ("media", "payload"), _DELETE), CarrierProtocolError),
    ("payload number", _mutated(MEDIA, ("media", "payload"), 12), CarrierProtocolError),
    ("payload bad base64", _mutated(MEDIA, ("media", "payload"), "@@@@"), CarrierProtocolError),
    ("payload bad padding", _mutated(MEDIA, ("media", "payload"), "AAA"), CarrierProtocolError),
    ("payload non-ascii", _mutated(MEDIA, ("media", "payload"), "ÿÿÿÿ"), CarrierProtocolError),
    ("payload empty", _mutated(MEDIA, ("media", "payload"), ""), AudioFormatError),
    (
        "payload too long",
        _mutated(MEDIA, ("media", "payload"), base64.b64encode(b"\xff" * 9000).decode()),
        AudioFormatError,
    ),
    ("chunk missing", _mutated(MEDIA, ("media", "chunk"), _DELETE), CarrierProtocolError),
    ("chunk not digits", _mutated(MEDIA, ("media", "chunk"), "1e3"), CarrierProtocolError),
    ("chunk negative", _mutated(MEDIA, ("media", "chunk"), -1), CarrierProtocolError),
    ("chunk bool", _mutated(MEDIA, ("media", "chunk"), True), CarrierProtocolError),
    ("chunk float", _mutated(MEDIA, ("media", "chunk"), 1.5), CarrierProtocolError),
    ("chunk huge", _mutated(MEDIA, ("media", "chunk"), "9" * 40), CarrierProtocolError),
    ("timestamp list", _mutated(MEDIA, ("media", "timestamp"), [1]), CarrierProtocolError),
    ("track missing", _mutated(MEDIA, ("media", "track"), _DELETE), CarrierProtocolError),
    ("sequence missing", _mutated(MEDIA, ("sequenceNumber",), _DELETE), CarrierProtocolError),
    ("sequence null", _mutated(MEDIA, ("sequenceNumber",), None), CarrierProtocolError),
    ("unicode digits", _mutated(MEDIA, ("sequenceNumber",), "٣"), CarrierProtocolError),
    ("other stream", _mutated(MEDIA, ("streamSid",), "MZother"), CarrierProtocolError),
    ("no stream sid", _mutated(MEDIA, ("streamSid",), _DELETE), CarrierProtocolError),
    ("second start", START, CarrierProtocolError),
    ("mark no name", _mutated(MARK, ("mark", "name"), _DELETE), CarrierProtocolError),
    ("mark name number", _mutated(MARK, ("mark", "name"), 1), CarrierProtocolError),
    ("mark name huge", _mutated(MARK, ("mark", "name"), "x" * 5000), CarrierProtocolError),
    ("mark body list", _mutated(MARK, ("mark",), []), CarrierProtocolError),
    ("dtmf bad digit", _mutated(DTMF, ("dtmf", "digit"), "12"), CarrierProtocolError),
    ("dtmf letter", _mutated(DTMF, ("dtmf", "digit"), "x"), CarrierProtocolError),
    ("dtmf track number", _mutated(DTMF, ("dtmf", "track"), 0), CarrierProtocolError),
    ("stop other call", _mutated(STOP, ("stop", "callSid"), "CAother"), CarrierProtocolError),
    ("stop no account", _mutated(STOP, ("stop", "accountSid"), _DELETE), CarrierProtocolError),
]


@pytest.mark.parametrize(
    ("frame", "error"),
    [pytest.param(f, e, id=name) for name, f, e in MALFORMED_AFTER_START],
)
def test_malformed_frames_raise_typed_errors_and_leave_state_alone(
    frame: str, error: type[Exception]
) -> None:
    codec = started()
    with pytest.raises(error) as info:
        codec.parse(frame)
    assert str(info.value)  # operator-readable, never empty
    assert codec.rejected_count == 1
    # the stream goes on as if the bad frame never came
    good = _mutated(MEDIA, ("sequenceNumber",), "2")
    assert isinstance(codec.parse(good), Media)
    assert codec.sequence_gaps == 0


@pytest.mark.parametrize("frame", [MEDIA, MARK, DTMF, STOP], ids=["media", "mark", "dtmf", "stop"])
def test_stream_messages_before_start_are_protocol_errors(frame: str) -> None:
    codec = TwilioCodec()
    codec.parse(CONNECTED)
    with pytest.raises(CarrierProtocolError, match="before 'start'"):
        codec.parse(frame)


def test_messages_after_stop_are_protocol_errors() -> None:
    codec = started()
    codec.parse(STOP)
    with pytest.raises(CarrierProtocolError, match="after 'stop'"):
        codec.parse(MEDIA)


@pytest.mark.parametrize(
    ("fmt", "named"),
    [
        ({"encoding": "audio/x-l16", "sampleRate": 8000, "channels": 1}, "audio/x-l16"),
        ({"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1}, "16000 Hz"),
        ({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2}, "2 channel"),
        ({"encoding": "audio/x-mulaw", "sampleRate": "8000", "channels": "1"}, None),
    ],
)
def test_start_media_format_must_be_mulaw_8k_mono(fmt: dict[str, Any], named: str | None) -> None:
    codec = TwilioCodec()
    frame = _mutated(START, ("start", "mediaFormat"), fmt)
    if named is None:
        assert isinstance(codec.parse(frame), Start)
        return
    with pytest.raises(UnsupportedMediaFormat, match=named):
        codec.parse(frame)
    assert codec.start is None
    assert isinstance(codec.parse(START), Start)  # a correct start is still accepted


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("start", "streamSid"), _DELETE),
        (("start", "streamSid"), ""),
        (("streamSid",), "MZdifferent"),
        (("start", "callSid"), None),
        (("start", "accountSid"), 7),
        (("start", "tracks"), "inbound"),
        (("start", "tracks"), [1]),
        (("start", "customParameters"), {"a": 1}),
        (("start", "customParameters"), ["a"]),
        (("start", "mediaFormat"), _DELETE),
        (("start", "mediaFormat", "sampleRate"), 8000.0),
        (("start", "mediaFormat", "encoding"), None),
        (("start",), _DELETE),
        (("sequenceNumber",), "one"),
    ],
)
def test_malformed_start_is_a_protocol_error(path: tuple[str, ...], value: object) -> None:
    codec = TwilioCodec()
    with pytest.raises(CarrierProtocolError):
        codec.parse(_mutated(START, path, value))
    assert codec.start is None


def test_start_without_custom_parameters_has_none() -> None:
    start = TwilioCodec().parse(_mutated(START, ("start", "customParameters"), _DELETE))
    assert isinstance(start, Start) and dict(start.custom_parameters) == {}


def test_unknown_events_are_ignored_and_counted() -> None:
    codec = started()
    result = codec.parse('{"event": "transcription", "streamSid": "x"}')
    assert result == Ignored("transcription", "event not handled by the gateway")
    assert codec.ignored == {"transcription": 1}
    assert codec.ignored_count == 1 and codec.rejected_count == 0


def test_outbound_track_media_is_ignored_not_treated_as_caller_audio() -> None:
    codec = started()
    result = codec.parse(_mutated(MEDIA, ("media", "track"), "outbound"))
    assert isinstance(result, Ignored) and result.event == "media"


def test_size_limit_counts_utf8_bytes() -> None:
    codec = TwilioCodec(max_message_bytes=1024)
    with pytest.raises(MessageTooLarge):
        codec.parse('{"event": "x", "pad": "' + "a" * 2000 + '"}')
    with pytest.raises(MessageTooLarge):
        codec.parse('{"event": "x", "pad": "' + "é" * 600 + '"}')  # 600 chars, 1200 bytes
    assert isinstance(codec.parse('{"event": "x", "pad": "' + "é" * 400 + '"}'), Ignored)
    with pytest.raises(MessageTooLarge):
        codec.parse(b"\x00" * 2000)
    assert codec.rejected["MessageTooLarge"] == 3


def test_constructor_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        TwilioCodec(max_message_bytes=10)
    with pytest.raises(ValueError):
        TwilioCodec(max_payload_bytes=0)


def test_sequence_gaps_are_counted() -> None:
    codec = started()
    codec.parse(_mutated(MEDIA, ("sequenceNumber",), "2"))
    codec.parse(_mutated(MEDIA, ("sequenceNumber",), "5"))
    codec.parse(_mutated(MEDIA, ("sequenceNumber",), "4"))
    assert codec.sequence_gaps == 2 and codec.last_sequence_number == 4


# --- the carrier's end --------------------------------------------------------------------------


def test_carrier_end_rejects_frames_for_another_stream() -> None:
    carrier = TwilioCarrierCodec(SID)
    with pytest.raises(CarrierProtocolError, match="streamSid"):
        carrier.parse('{"event": "clear", "streamSid": "MZx"}')
    with pytest.raises(CarrierProtocolError, match="base64"):
        carrier.parse(json.dumps({"event": "media", "streamSid": SID, "media": {"payload": "!"}}))
    assert carrier.parse('{"event": "hello"}') == Ignored(
        "hello", "not a Twilio media-stream command"
    )
    assert carrier.ignored == {"hello": 1}


def test_carrier_media_fast_path_matches_the_general_encoder() -> None:
    carrier = TwilioCarrierCodec(SID)
    payload = b"\x01\x02\x03"
    fast = carrier.encode_media(7, 3, 40, base64.b64encode(payload).decode())
    assert json.loads(fast) == json.loads(carrier.encode(Media(SID, 7, 3, 40, payload)))
    assert json.loads(fast)["sequenceNumber"] == "7"  # strings, as Twilio sends them


def test_custom_media_format_is_rendered_as_numbers() -> None:
    start = Start(SID, CALL, ACCOUNT, ("inbound",), frozen_mapping(), MediaFormat("a/b", 16000, 2))
    obj = json.loads(TwilioCarrierCodec(SID).encode(start))
    assert obj["start"]["mediaFormat"] == {"encoding": "a/b", "sampleRate": 16000, "channels": 2}


# --- fuzzing ------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
EVENTS = st.sampled_from(["connected", "start", "media", "mark", "dtmf", "stop", "clear", "x"])
KEYS = st.sampled_from(
    ["event", "streamSid", "sequenceNumber", "media", "mark", "dtmf", "stop", "start"]
)


@st.composite
def twilio_like(draw: st.DrawFn) -> str:
    """Valid frames with one field replaced, removed or added: the parser's edge cases."""
    base = json.loads(draw(st.sampled_from([CONNECTED, START, MEDIA, MARK, DTMF, STOP])))
    node = base
    while True:
        keys = [k for k, v in node.items() if isinstance(v, dict)]
        if not keys or draw(st.booleans()):
            break
        node = node[draw(st.sampled_from(keys))]
    key = draw(st.sampled_from([*node.keys(), draw(KEYS)]))
    if draw(st.booleans()) and key in node:
        del node[key]
    else:
        node[key] = draw(json_values | EVENTS)
    return json.dumps(base)


def _only_typed_errors(codec: TwilioCodec | TwilioCarrierCodec, frame: str | bytes) -> None:
    try:
        codec.parse(frame)
    except CarrierError as exc:
        assert str(exc)


@settings(max_examples=400, deadline=None)
@given(frame=st.text(max_size=300) | st.binary(max_size=300))
def test_fuzz_arbitrary_text_and_bytes(frame: str | bytes) -> None:
    _only_typed_errors(TwilioCodec(), frame)
    _only_typed_errors(started(), frame)
    _only_typed_errors(TwilioCarrierCodec(SID), frame)


@settings(max_examples=400, deadline=None)
@given(value=json_values, event=EVENTS)
def test_fuzz_arbitrary_json(value: object, event: str) -> None:
    for frame in (json.dumps(value), json.dumps({"event": event, "streamSid": SID, "v": value})):
        _only_typed_errors(TwilioCodec(), frame)
        _only_typed_errors(started(), frame)
        _only_typed_errors(TwilioCarrierCodec(SID), frame)


@settings(max_examples=800, deadline=None)
@given(frames=st.lists(twilio_like(), min_size=1, max_size=6))
def test_fuzz_near_valid_frames(frames: list[str]) -> None:
    fresh, running = TwilioCodec(), started()
    for frame in frames:
        _only_typed_errors(fresh, frame)
        _only_typed_errors(running, frame)
