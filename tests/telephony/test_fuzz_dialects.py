"""Fuzz the Telnyx and Plivo parsers as ``test_twilio.py`` fuzzes Twilio's: whatever arrives,
``parse`` returns a message or raises a :class:`CarrierError` with a message, and a rejected
frame leaves the stream able to go on."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import CarrierError
from gateway.telephony.messages import Mark, Media
from gateway.telephony.plivo import PlivoCarrierCodec, PlivoCodec
from gateway.telephony.telnyx import Reorderer, TelnyxCarrierCodec, TelnyxCodec
from tests.telephony import test_plivo as plivo_frames
from tests.telephony import test_telnyx as telnyx_frames

pytestmark = pytest.mark.timeout(120)

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
EVENTS = st.sampled_from(
    ["connected", "start", "media", "mark", "dtmf", "stop", "error", "playedStream", "clearedAudio"]
)
KEYS = st.sampled_from(
    ["event", "stream_id", "streamId", "sequence_number", "sequenceNumber", "media", "start"]
)
TELNYX_VALID = [
    telnyx_frames.CONNECTED,
    telnyx_frames.START,
    telnyx_frames.media(2),
    telnyx_frames.media(3),
]
PLIVO_VALID = [plivo_frames.START, plivo_frames.media(2), plivo_frames.media(3)]


@st.composite
def near_valid(draw: st.DrawFn, valid: list[str]) -> str:
    """A valid frame with one field replaced, removed or added."""
    base = json.loads(draw(st.sampled_from(valid)))
    node: dict[str, Any] = base
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


def _only_typed_errors(parse: Callable[[str | bytes], object], frame: str | bytes) -> None:
    try:
        parse(frame)
    except CarrierError as exc:
        assert str(exc)


def _codecs() -> list[Callable[[str | bytes], object]]:
    return [
        TelnyxCodec().parse,
        telnyx_frames.started().parse,
        TelnyxCarrierCodec("s").parse,
        PlivoCodec().parse,
        plivo_frames.started().parse,
        PlivoCarrierCodec("s").parse,
    ]


@settings(max_examples=300, deadline=None)
@given(frame=st.text(max_size=300) | st.binary(max_size=300))
def test_fuzz_arbitrary_text_and_bytes(frame: str | bytes) -> None:
    for parse in _codecs():
        _only_typed_errors(parse, frame)


@settings(max_examples=300, deadline=None)
@given(value=json_values, event=EVENTS)
def test_fuzz_arbitrary_json(value: object, event: str) -> None:
    for frame in (json.dumps(value), json.dumps({"event": event, "v": value})):
        for parse in _codecs():
            _only_typed_errors(parse, frame)


@settings(max_examples=500, deadline=None)
@given(
    telnyx=st.lists(near_valid(TELNYX_VALID), min_size=1, max_size=6),
    plivo=st.lists(near_valid(PLIVO_VALID), min_size=1, max_size=6),
)
def test_fuzz_near_valid_frames(telnyx: list[str], plivo: list[str]) -> None:
    fresh, running = TelnyxCodec(), telnyx_frames.started()
    for frame in telnyx:
        _only_typed_errors(fresh.parse, frame)
        _only_typed_errors(running.parse, frame)
        running.drain()
    fresh_p, running_p = PlivoCodec(), plivo_frames.started()
    for frame in plivo:
        _only_typed_errors(fresh_p.parse, frame)
        _only_typed_errors(running_p.parse, frame)


@settings(max_examples=300, deadline=None)
@given(order=st.permutations(list(range(2, 12))), window=st.integers(1, 12))
def test_reorderer_releases_each_number_once_in_increasing_order(
    order: list[int], window: int
) -> None:
    r = Reorderer(window)
    r.expect(2)
    out: list[int] = []
    for seq in order:
        out.extend(m.sequence_number for m in r.push(seq, Mark("s", seq, "n")))  # type: ignore[union-attr]
    out.extend(m.sequence_number for m in r.flush())  # type: ignore[union-attr]
    assert out == sorted(set(out))
    assert len(out) + r.late == 10
    if window >= 10:
        assert out == list(range(2, 12))  # a window as wide as the shuffle loses nothing


def test_media_survives_a_rejected_frame_in_both_dialects() -> None:
    telnyx = telnyx_frames.started()
    with pytest.raises(CarrierError):
        telnyx.parse('{"event": "media", "sequence_number": "2", "media": {}}')
    assert isinstance(telnyx.parse(telnyx_frames.media(2)), Media)
    plivo = plivo_frames.started()
    with pytest.raises(CarrierError):
        plivo.parse('{"event": "media", "sequenceNumber": 2, "media": {}}')
    assert isinstance(plivo.parse(plivo_frames.media(2)), Media)
