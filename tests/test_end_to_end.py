"""Phone calls end to end: simulated Twilio caller -> real gateway -> real emulator (WebRTC).

Every test here runs the whole product on loopback: the gateway's webhook and media websocket
under uvicorn, one aiortc peer per call to the Realtime emulator (itself an aiortc answerer
with server VAD and synthesized speech), and a caller that speaks synthesized sentences in
real time and plays back what it hears like Twilio does.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.app import gateway_state
from gateway.loadtest.caller import (
    BargeIn,
    CallOptions,
    HangUp,
    Pause,
    Say,
    SimulatedCall,
    WaitForAnswer,
)
from gateway.service import RunningGateway
from gateway.telephony.messages import PlayAudio, Stop
from gateway.telephony.twilio import TwilioCarrierCodec
from tests.support import (
    CONNECTED,
    admit,
    emulator_sessions,
    start_frame,
    wait_all_ended,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

PROFILES = """
default:
  instructions: "You answer for the default line."
  voice: alloy
  greeting: "Greet the caller briefly."
numbers:
  "+15551230001":
    instructions: "You are the bakery's assistant."
    voice: cedar
    greeting: "Say hello from the bakery."
  "+15551230002":
    instructions: "You are the garage's assistant."
    voice: ash
    greeting: null
  "+15551230003":
    instructions: "You are the phone-quality line."
    greeting: "Say hello from the phone line."
    upstream_codec: pcmu
"""


@pytest.fixture(scope="module")
def question() -> Say:
    return Say.from_text("Hello, what are your opening hours on Saturday?")


@pytest.fixture(scope="module")
def interruption() -> Say:
    return Say.from_text("Sorry, one more question please.")


@pytest.fixture
def profiles_yaml() -> str:
    return PROFILES


@pytest.fixture
def emulator_options() -> dict[str, object]:
    return {"latency_ms": 150.0}


def _options(gw: RunningGateway, to: str, **kw: Any) -> CallOptions:
    return CallOptions(webhook_url=f"{gw.url}/twilio/voice", to_number=to, **kw)


async def test_call_greets_answers_a_question_and_cleans_up(
    gateway: RunningGateway, question: Say
) -> None:
    script = [WaitForAnswer(), question, WaitForAnswer(), HangUp()]
    result = await SimulatedCall(script, _options(gateway, "+15551230001")).run()

    assert result.ok, (result.failure, result.failure_detail)
    assert result.setup_ms is not None  # the greeting was heard
    assert len(result.response_latencies_ms) == 1
    assert result.response_latencies_ms[0] > 0
    assert result.gaps_ms == []
    # the carrier heard what it was sent, and echoed marks for it
    assert result.frames_played > 50
    assert result.marks_received > 0
    # every mark was echoed once its audio played (the last may still be queued at hang-up)
    assert result.marks_received - 1 <= result.marks_echoed <= result.marks_received

    sessions = await wait_all_ended(gateway)
    assert len(sessions) == 1
    cfg = sessions[0]["session"]
    # the number's profile reached the model
    assert cfg["instructions"] == "You are the bakery's assistant."
    assert cfg["audio"]["output"]["voice"] == "cedar"
    assert sessions[0]["turns"] >= 1
    state = gateway_state(gateway.app)
    assert state.calls == {}
    assert state.admissions.live == 0


async def test_barge_in_clears_the_carrier_and_cancels_the_response(
    gateway: RunningGateway, question: Say, interruption: Say
) -> None:
    script = [
        WaitForAnswer(),
        question,
        BargeIn(interruption, after_ms=500),
        WaitForAnswer(),
        HangUp(),
    ]
    result = await SimulatedCall(script, _options(gateway, "+15551230001")).run()

    assert result.ok, (result.failure, result.failure_detail)
    barge = [t for t in result.turns if t.barge_in]
    assert len(barge) == 1
    assert barge[0].assistant_audible_at_onset
    assert result.clears_received >= 1
    assert barge[0].clear_ms is not None and barge[0].onset_ms is not None
    assert barge[0].clear_ms >= barge[0].onset_ms
    assert len(result.barge_in_stop_ms) == 1
    # the interrupted answer was followed by an answer to the interruption
    assert barge[0].answer_ms is not None

    sessions = await wait_all_ended(gateway)
    received = sessions[0]["events_received"]
    # the upstream was told to stop talking (the response itself may already have finished
    # generating: the model is faster than real time, so the cancel is then a no-op)
    assert received.get("output_audio_buffer.clear", 0) >= 1


async def test_a_pcmu_number_talks_barges_in_and_truncates_with_g711_straight_through(
    gateway: RunningGateway, question: Say, interruption: Say
) -> None:
    script = [
        WaitForAnswer(),
        question,
        BargeIn(interruption, after_ms=500),
        WaitForAnswer(),
        HangUp(),
    ]
    result = await SimulatedCall(script, _options(gateway, "+15551230003")).run()

    assert result.ok, (result.failure, result.failure_detail)
    assert result.setup_ms is not None and result.gaps_ms == []
    assert result.marks_received > 0 and result.clears_received >= 1
    [barge] = [t for t in result.turns if t.barge_in]
    assert barge.assistant_audible_at_onset and barge.answer_ms is not None
    sessions = await wait_all_ended(gateway)
    [session] = sessions
    audio = session["session"]["audio"]
    assert audio["input"]["format"] == {"type": "audio/pcmu"}
    assert audio["output"]["format"] == {"type": "audio/pcmu"}
    assert session["events_received"].get("conversation.item.truncate", 0) >= 1
    [summary] = gateway_state(gateway.app).recent
    assert summary["codec"] == "pcmu"


async def test_each_number_gets_its_own_profile_and_session(
    gateway: RunningGateway, question: Say
) -> None:
    bakery = SimulatedCall([WaitForAnswer(), HangUp()], _options(gateway, "+15551230001"))
    # the garage has no greeting: the caller speaks first
    garage = SimulatedCall(
        [Pause(300), question, WaitForAnswer(), HangUp()], _options(gateway, "+15551230002")
    )
    results = await asyncio.gather(bakery.run(), garage.run())
    assert all(r.ok for r in results), [(r.failure, r.failure_detail) for r in results]

    sessions = await wait_all_ended(gateway)
    voices = sorted(s["session"]["audio"]["output"]["voice"] for s in sessions)
    assert voices == ["ash", "cedar"]


async def test_stream_without_an_admitted_call_is_closed_with_1008(
    gateway: RunningGateway,
) -> None:
    codec = TwilioCarrierCodec("MZforged")
    async with connect(gateway.server.ws_url + "/twilio/media") as ws:
        await ws.send(CONNECTED)
        await ws.send(start_frame(codec, "CAforged", "not-a-token"))
        async with asyncio.timeout(10):
            await ws.wait_closed()
    assert ws.close_code == 1008
    # nothing was opened upstream for it
    assert await emulator_sessions(gateway) == []
    # and it was never a call: counted, but no recent-calls entry and so no call record (both
    # are made together; a captured upgrade signature must not fill the records database)
    state = gateway_state(gateway.app)
    await state.idle.wait()
    assert not state.recent
    metrics = state.metrics.render().decode()
    assert 'gateway_calls_total{outcome="forbidden"} 1.0' in metrics


async def test_malformed_carrier_messages_do_not_end_the_call(
    gateway: RunningGateway, question: Say
) -> None:
    # Admit a call through the webhook, then speak on the stream by hand with junk mixed in.
    token = await admit(gateway.url, "CAjunk", to="+15551230002")
    codec = TwilioCarrierCodec("MZjunk")
    junk = ["{not json", json.dumps({"event": "media"}), '{"event": "bogus"}', "[1, 2]"]
    silence = base64.b64encode(b"\xff" * 160).decode()
    frames = list(question.frames) + [silence] * 1000
    answered = False
    async with connect(gateway.server.ws_url + "/twilio/media") as ws:
        await ws.send(CONNECTED)
        await ws.send(start_frame(codec, "CAjunk", token))
        async with asyncio.timeout(30):
            for i, payload in enumerate(frames):
                if i < len(junk):
                    await ws.send(junk[i])
                await ws.send(codec.encode_media(i + 2, i + 1, 20 * i, payload))
                try:
                    raw = await asyncio.wait_for(ws.recv(), 0.02)
                except TimeoutError:
                    continue
                if isinstance(codec.parse(raw), PlayAudio):
                    answered = True
                    break
        await ws.send(codec.encode(Stop(codec.stream_sid, 9999, "CAjunk", "AC1")))
    assert answered, "the assistant never answered"
    sessions = await wait_all_ended(gateway)
    assert len(sessions) == 1
    assert sessions[0]["turns"] >= 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "gateway_settings", [{"twilio_auth_token": "tw-secret", "max_calls": 4}], ids=["signed"]
)
async def test_forged_requests_cost_nothing_and_do_not_disturb_a_live_call(
    gateway: RunningGateway, question: Say
) -> None:
    live = asyncio.create_task(
        SimulatedCall(
            [WaitForAnswer(), question, WaitForAnswer(), HangUp()],
            _options(gateway, "+15551230001", auth_token="tw-secret"),
        ).run()
    )
    attacks: list[int] = []
    async with httpx.AsyncClient() as client:
        form = {"CallSid": "CAevil", "AccountSid": "AC1", "From": "+1", "To": "+15551230001"}
        for i in range(40):
            headers = {"X-Twilio-Signature": "forged"} if i % 2 else {}
            r = await client.post(f"{gateway.url}/twilio/voice", data=form, headers=headers)
            attacks.append(r.status_code)
    for i in range(20):
        headers = {"X-Twilio-Signature": "forged"} if i % 2 else {}
        codec = TwilioCarrierCodec(f"MZevil{i}")
        try:
            async with connect(
                gateway.server.ws_url + "/twilio/media", additional_headers=headers
            ) as ws:
                await ws.send(CONNECTED)
                await ws.send(start_frame(codec, f"CAevil{i}", "guess"))
                async with asyncio.timeout(10):
                    await ws.wait_closed()
                attacks.append(ws.close_code or 0)
        except InvalidStatus as exc:
            attacks.append(exc.response.status_code)
    result = await live
    sessions = await wait_all_ended(gateway)
    assert all(code in (403, 1008) for code in attacks), attacks
    assert result.ok, (result.failure, result.failure_detail)
    assert len(result.response_latencies_ms) == 1
    assert len(sessions) == 1  # only the genuine call reached the upstream


async def test_replaying_a_live_calls_webhook_gets_no_token_and_no_slot(
    gateway: RunningGateway,
) -> None:
    # A captured webhook replayed while its call is live must not mint a second token (which
    # would let a second stream bind as that call) nor hold a second capacity slot.
    state = gateway_state(gateway.app)
    heard = asyncio.Event()
    options = _options(gateway, "+15551230001", call_sid="CAreplayed")
    call = asyncio.create_task(
        SimulatedCall(
            [WaitForAnswer(), Pause(1000), HangUp()], options, on_event=lambda _e: heard.set()
        ).run()
    )
    async with asyncio.timeout(20):
        await heard.wait()
    await wait_until(lambda: state.admissions.live == 1, what="the call is live")
    form = {"CallSid": "CAreplayed", "AccountSid": "AC1", "From": "+1", "To": "+15551230001"}
    async with httpx.AsyncClient() as client:
        replay = await client.post(f"{gateway.url}/twilio/voice", data=form)
    assert replay.status_code == 403
    assert "gateway_call_token" not in replay.text
    assert state.admissions.load(state.wall_clock()) == 1
    result = await call
    assert result.ok, (result.failure, result.failure_detail)
    await wait_all_ended(gateway)
