"""Plivo: the audio-stream dialect (both ends), the V3 signature, the answer XML."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.errors import (
    AudioFormatError,
    CarrierError,
    CarrierProtocolError,
    InternalError,
    UnsupportedMediaFormat,
)
from gateway.numbers import Fallback
from gateway.telephony.carriers import CALL_SID_PARAM, StreamTarget
from gateway.telephony.messages import (
    ClearAudio,
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
from gateway.telephony.plivo import (
    PLIVO,
    PlivoCarrierCodec,
    PlivoCodec,
    sign_v3,
    signature_v3,
    validate_v3,
)

pytestmark = pytest.mark.timeout(10)

SID = "20170ada-f610-433b-8758-c02a2aab3662"
CALL = "ba3b5a26-4a70-4d31-b1b2-3f7f5e1f9a11"
AUDIO = bytes(range(1, 161))
# A start as Plivo's audio-streaming reference shows it (values shortened).
START = json.dumps(
    {
        "event": "start",
        "sequenceNumber": 1,
        "start": {
            "callId": CALL,
            "streamId": SID,
            "accountId": "MAXXXXXXXXXXXXXXXXXX",
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
        },
        "extra_headers": "{}",
    }
)


def media(seq: int, ts: int = 1_700_000_000_000, payload: bytes = AUDIO) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": seq,
            "streamId": SID,
            "media": {
                "track": "inbound",
                "timestamp": str(ts),
                "chunk": seq - 1,
                "payload": base64.b64encode(payload).decode(),
            },
        }
    )


def started(**kw: object) -> PlivoCodec:
    codec = PlivoCodec(**kw)  # type: ignore[arg-type]
    assert isinstance(codec.parse(START), Start)
    return codec


def test_start_binds_by_the_stream_url_query() -> None:
    codec = PlivoCodec(stream_parameters={"gateway_call_token": "t", CALL_SID_PARAM: CALL})
    start = codec.parse(START)
    assert isinstance(start, Start)
    assert start.stream_sid == SID and start.call_sid == CALL
    assert start.custom_parameters["gateway_call_token"] == "t"
    assert start.account_sid == "MAXXXXXXXXXXXXXXXXXX"


def test_media_timestamps_count_from_the_first_frame() -> None:
    codec = started()
    first = codec.parse(media(2, ts=1_700_000_000_000))
    second = codec.parse(media(3, ts=1_700_000_000_020))
    assert first == Media(SID, 2, 1, 0, AUDIO)
    assert isinstance(second, Media) and second.timestamp_ms == 20


def test_answers_and_dtmf() -> None:
    codec = started()
    played = {"event": "playedStream", "sequenceNumber": 2, "streamId": SID, "name": "gw-1"}
    assert codec.parse(json.dumps(played)) == Mark(SID, 2, "gw-1")
    older = {"event": "played", "streamId": SID, "name": "gw-2"}  # the FAQ's older name
    assert isinstance(codec.parse(json.dumps(older)), Mark)
    cleared = {"event": "clearedAudio", "sequenceNumber": 3, "streamId": SID}
    assert isinstance(codec.parse(json.dumps(cleared)), Ignored)
    dtmf = {"event": "dtmf", "sequenceNumber": 4, "streamId": SID, "dtmf": {"digit": "5"}}
    assert codec.parse(json.dumps(dtmf)) == Dtmf(SID, 4, "5")


def test_encode_is_play_audio_checkpoint_and_clear_audio() -> None:
    codec = PlivoCodec()
    with pytest.raises(InternalError, match="before the stream's start"):
        codec.encode(ClearAudio())
    codec.parse(START)
    assert json.loads(codec.encode(PlayAudio(b"\x01\x02"))) == {
        "event": "playAudio",
        "streamId": SID,
        "media": {"contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": "AQI="},
    }
    assert json.loads(codec.encode(PlayMark("m"))) == {
        "event": "checkpoint",
        "streamId": SID,
        "name": "m",
    }
    assert json.loads(codec.encode(ClearAudio())) == {"event": "clearAudio", "streamId": SID}


def test_carrier_end_and_gateway_end_round_trip() -> None:
    carrier = PlivoCarrierCodec(SID)
    gateway = PlivoCodec(stream_parameters={CALL_SID_PARAM: CALL})
    start = Start(SID, CALL, "MA1", ("inbound",), frozen_mapping({CALL_SID_PARAM: CALL}))
    for msg in (start, Media(SID, 2, 1, 0, AUDIO), Mark(SID, 3, "x"), Dtmf(SID, 4, "#")):
        assert gateway.parse(carrier.encode(msg)) == msg
    stop = gateway.parse(carrier.encode(Stop(SID, 5, CALL, "MA1")))
    assert isinstance(stop, Stop)
    for out in (PlayAudio(AUDIO), PlayMark("n"), ClearAudio()):
        assert carrier.parse(gateway.encode(out)) == out


@pytest.mark.parametrize(
    ("frame", "error", "words"),
    [
        ("{oops", CarrierProtocolError, "not valid JSON"),
        (media(2).replace(SID, "other"), CarrierProtocolError, "streamId"),
        ('{"event": "media", "sequenceNumber": 2}', CarrierProtocolError, "'media'"),
        (media(2, payload=b"\x00" * 9000), AudioFormatError, "exceeds"),
        (media(2).replace('"chunk": 1', '"chunk": -1'), CarrierProtocolError, "chunk"),
        ('{"event": "dtmf", "sequenceNumber": 2, "dtmf": {"digit": "x"}}', CarrierError, "digit"),
        ('{"event": "playedStream", "name": 5}', CarrierProtocolError, "name"),
    ],
)
def test_malformed_frames_raise_a_carrier_error_and_the_stream_goes_on(
    frame: str, error: type[Exception], words: str
) -> None:
    codec = started()
    with pytest.raises(error, match=words):
        codec.parse(frame)
    assert isinstance(codec.parse(media(2)), Media)


def test_other_formats_are_refused() -> None:
    frame = json.loads(START)
    frame["start"]["mediaFormat"] = {"encoding": "audio/x-l16", "sampleRate": 16000}
    with pytest.raises(UnsupportedMediaFormat, match="audio/x-mulaw"):
        PlivoCodec().parse(json.dumps(frame))


def test_carrier_side_refuses_commands_for_another_stream() -> None:
    carrier = PlivoCarrierCodec(SID)
    with pytest.raises(CarrierProtocolError, match="streamId"):
        carrier.parse('{"event": "clearAudio", "streamId": "x"}')


# --- V3 signature ------------------------------------------------------------------------------

TOKEN = "MTZmNzc4YjRkNTM4ZDM2OWE5ZmU3NzQ5NWI4ZjVm"
URL = "https://gw.example.com/plivo/answer"
FORM = {"CallUUID": CALL, "From": "+14155550100", "To": "+14155550199", "Direction": "inbound"}


def _by_hand(base: str, nonce: str) -> str:
    mac = hmac.new(TOKEN.encode(), f"{base}.{nonce}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def test_v3_base_string_follows_plivos_algorithm() -> None:
    # POST without a query: URL, "?", then every parameter sorted, name and value joined.
    base = f"{URL}?CallUUID{CALL}DirectioninboundFrom+14155550100To+14155550199"
    assert signature_v3(TOKEN, URL, "12345", FORM) == _by_hand(base, "12345")
    # with a query: its parameters sorted as k=v&..., then "." before the body parameters
    with_query = URL + "?b=2&a=1"
    base = f"{URL}?a=1&b=2.CallUUID{CALL}DirectioninboundFrom+14155550100To+14155550199"
    assert signature_v3(TOKEN, with_query, "n", FORM) == _by_hand(base, "n")
    # a GET signs the URL and its sorted query only
    assert signature_v3(TOKEN, with_query, "n", {}, "GET") == _by_hand(f"{URL}?a=1&b=2", "n")


def test_v3_valid_tampered_and_missing() -> None:
    headers = sign_v3(TOKEN, URL, FORM, "31415")
    sig, nonce = headers["X-Plivo-Signature-V3"], headers["X-Plivo-Signature-V3-Nonce"]
    assert validate_v3(TOKEN, URL, nonce, sig, FORM)
    assert validate_v3(TOKEN, URL, nonce, f"other, {sig}", FORM)  # one per active token
    assert not validate_v3(TOKEN, URL, nonce, sig, {**FORM, "To": "+14155550198"})
    assert not validate_v3(TOKEN, URL, "27182", sig, FORM)  # another nonce
    assert not validate_v3(TOKEN, URL + "?x=1", nonce, sig, FORM)
    assert not validate_v3("another-token", URL, nonce, sig, FORM)
    assert not validate_v3(TOKEN, URL, None, sig, FORM)
    assert not validate_v3(TOKEN, URL, nonce, None, FORM)


# --- answer XML -------------------------------------------------------------------------------


def test_answer_streams_bidirectionally_with_the_binding_in_the_url() -> None:
    target = StreamTarget("wss://gw.example.com/plivo/media", {"gateway_call_token": "t&x"}, CALL)
    root = ET.fromstring(PLIVO.answer(target, Fallback(number="+15550001111")).body)
    stream = root.find("Stream")
    assert stream is not None and stream.text is not None
    assert stream.get("bidirectional") == "true"
    assert stream.get("keepCallAlive") == "true"
    assert stream.get("contentType") == "audio/x-mulaw;rate=8000"
    url = urlsplit(stream.text)
    assert url.path == "/plivo/media"
    assert parse_qs(url.query) == {"gateway_call_token": ["t&x"], CALL_SID_PARAM: [CALL]}
    assert root.findtext("Dial/Number") == "+15550001111"  # the fallback after the stream


def test_fallback_speaks_and_hangs_up() -> None:
    root = ET.fromstring(PLIVO.fallback(Fallback(message="Busy <now>")).body)
    assert root.findtext("Speak") == "Busy <now>"
    assert root.find("Hangup") is not None
    with pytest.raises(ValueError, match="CallUUID"):
        PLIVO.incoming_call({"To": "+1"})
