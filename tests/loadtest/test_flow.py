"""The call flow without sockets: ticks and the gateway's messages in, frames and figures out.

Times are fed by hand, so the same script gives the same figures on a busy machine.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from gateway.audio.g711 import array_to_ulaw
from gateway.loadtest.caller import CallOptions
from gateway.loadtest.carrier import CallerStream
from gateway.loadtest.flow import FRAME_S, CallFailed, CallFlow
from gateway.loadtest.result import CallResult
from gateway.loadtest.script import Pause, PressDigits, Say, Step, WaitForAnswer
from gateway.telephony.messages import PlayAudio, PlayMark
from gateway.telephony.twilio import TwilioCodec

TONE = array_to_ulaw((8000 * np.sin(np.arange(1600) * 0.3)).astype(np.int16))  # 200 ms


def _opened(script: list[Step]) -> tuple[CallFlow, TwilioCodec]:
    stream = CallerStream(stream_sid="MZ1", call_sid="CA1", account_sid="AC1")
    gateway = TwilioCodec()  # the gateway's side of the same stream
    gateway.parse(stream.connected())
    gateway.parse(stream.start())
    flow = CallFlow(script, CallOptions(media_url="ws://x"), CallResult("CA1", "MZ1", failure=None))
    flow.open(stream, epoch=0.0, ws_open_at=0.0)
    return flow, gateway


def _ticks(flow: CallFlow, until_s: float) -> list[dict[str, object]]:
    """Run 20 ms ticks on time until the caller hangs up or ``until_s``; what was sent."""
    sent: list[str] = []
    deadline = FRAME_S
    while not flow.hangup and deadline <= until_s:
        flow.tick(deadline, deadline, sent)
        deadline += FRAME_S
    return [json.loads(m) for m in sent]


def test_an_answer_heard_ends_the_wait_and_the_script() -> None:
    flow, gateway = _opened([WaitForAnswer(quiet_ms=100)])
    replies: list[str] = []
    flow.receive(gateway.encode(PlayAudio(TONE)), 0.0, replies)
    flow.receive(gateway.encode(PlayMark("m1")), 0.0, replies)
    sent = _ticks(flow, 2.0)
    assert flow.script_done and sent[-1]["event"] == "stop"
    events = [m["event"] for m in sent]
    assert events.count("mark") == 1 and events.index("mark") == 9  # in the tick at 200 ms
    flow.finish(now=0.4)
    result = flow.result
    assert result.ok and result.setup_ms == pytest.approx(0.0, abs=1)
    assert [(round(s.start_ms), round(s.end_ms)) for s in result.assistant] == [(0, 200)]
    assert result.marks_echoed == 1


def test_no_answer_fails_the_script_at_its_timeout() -> None:
    flow, _ = _opened([Say(TONE, "hello"), WaitForAnswer(timeout_ms=100)])
    with pytest.raises(CallFailed, match="no_answer") as failed:
        _ticks(flow, 2.0)
    assert "turn 1" in failed.value.detail
    assert flow.result.turns[0].end_ms == pytest.approx(200)


def test_digits_are_sent_gap_apart() -> None:
    flow, _ = _opened([Pause(40), PressDigits("12", gap_ms=100)])
    sent = _ticks(flow, 1.0)
    assert [m["dtmf"]["digit"] for m in sent if m["event"] == "dtmf"] == ["1", "2"]  # type: ignore[index]
    assert flow.result.dtmf_sent == 2
    first, second = [e.t_ms for e in flow.result.timeline if e.kind == "dtmf"]
    assert first >= 60 and second - first == pytest.approx(100)


def test_a_message_that_is_not_twilios_is_a_protocol_error() -> None:
    flow, _ = _opened([WaitForAnswer()])
    with pytest.raises(CallFailed, match="gateway_protocol_error"):
        flow.receive('{"event": "media"}', 0.0, [])
