"""One hostile call must not hurt the others: a flooding, junk-sending stream beside a normal
conversation, through the real gateway and the real emulator on loopback."""

from __future__ import annotations

import asyncio
import base64

import pytest
from websockets.asyncio.client import connect

from gateway.app import gateway_state
from gateway.loadtest.caller import CallOptions, Pause, Say, SimulatedCall, WaitForAnswer
from gateway.service import RunningGateway
from gateway.telephony.messages import PlayAudio, Stop
from gateway.telephony.twilio import TwilioCarrierCodec
from tests.support import CONNECTED, admit, start_frame

pytestmark = pytest.mark.timeout(90)

FLOOD_FRAMES = 3000  # a minute of audio, sent as fast as the socket takes it


def _metric(gw: RunningGateway, name: str, labels: dict[str, str]) -> float:
    value = gateway_state(gw.app).metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def _hostile(gw: RunningGateway, greeted: asyncio.Event) -> int | None:
    """Admitted like any call, then: junk bursts and a flood of media far faster than real time.
    Returns the close code the gateway ended the stream with (None: it stayed open)."""
    token = await admit(gw.url, "CAhostile")
    codec = TwilioCarrierCodec("MZhostile")
    silence = base64.b64encode(b"\xff" * 160).decode()
    async with connect(gw.server.ws_url + "/twilio/media") as ws:
        await ws.send(CONNECTED)
        await ws.send(start_frame(codec, "CAhostile", token))
        # wait until its own session is up (the greeting plays), so the flood meets the queue
        async with asyncio.timeout(30):
            while not isinstance(codec.parse(await ws.recv()), PlayAudio):
                pass
        greeted.set()
        for i in range(FLOOD_FRAMES):
            if i % 100 == 0:
                for junk in ("{not json", '{"event": "media"}', "[1]", '{"event": "bogus"}'):
                    await ws.send(junk)
            await ws.send(codec.encode_media(i + 2, i + 1, 20 * i, silence))
        await ws.send(codec.encode(Stop(codec.stream_sid, FLOOD_FRAMES + 9, "CAhostile", "AC1")))
        async with asyncio.timeout(15):
            await ws.wait_closed()
        return ws.close_code


async def test_a_flooding_call_does_not_disturb_a_normal_one(gateway: RunningGateway) -> None:
    question = Say.from_text("Hello, what are your opening hours on Saturday?")
    greeted = asyncio.Event()
    hostile = asyncio.create_task(_hostile(gateway, greeted))
    async with asyncio.timeout(30):
        await greeted.wait()
    script = [WaitForAnswer(), Pause(300), question, WaitForAnswer(), Pause(300), question,
              WaitForAnswer()]  # fmt: skip
    options = CallOptions(webhook_url=f"{gateway.url}/twilio/voice", to_number="+15550100002")
    normal = await SimulatedCall(script, options).run()
    close_code = await hostile

    # the normal call: everything it should have heard, heard in full
    assert normal.ok, (normal.failure, normal.failure_detail)
    assert len(normal.response_latencies_ms) == 2
    assert all(latency < 5000 for latency in normal.response_latencies_ms)
    assert normal.marks_echoed == normal.marks_received > 0
    assert normal.bytes_played == normal.bytes_received > 0

    # the hostile call: bounded and counted, ended by its own stop, nothing leaked
    assert close_code == 1000
    dropped = _metric(
        gateway,
        "gateway_dropped_frames_total",
        {"direction": "inbound", "reason": "queue_full"},
    )
    assert dropped >= FLOOD_FRAMES - 200  # the queue holds one second; the rest was dropped
    families = gateway_state(gateway.app).metrics.registry.collect()
    rejected = {
        sample.labels["reason"]: sample.value
        for family in families
        if family.name == "gateway_carrier_messages_rejected"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert sum(rejected.values()) >= 4 * (FLOOD_FRAMES // 100), rejected
    state = gateway_state(gateway.app)
    async with asyncio.timeout(15):
        await state.idle.wait()
    assert len(state.calls) == 0
