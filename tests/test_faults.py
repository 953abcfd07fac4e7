"""Faults with a designed outcome, through the real gateway and the real emulator on loopback.

Upstream faults come from the emulator's knobs (``POST /emulator/faults``); carrier faults are
played by hand on a raw websocket. Each test checks what the caller gets and that nothing is
left behind: the gateway's call table empties and every upstream session ends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.app import gateway_state
from gateway.loadtest.caller import CallOptions, Pause, Say, SimulatedCall, WaitForAnswer
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

SETUP_TIMEOUT_S = 3.0
IDLE_TIMEOUT_S = 1.5
SILENCE = base64.b64encode(b"\xff" * 160).decode()


@pytest.fixture
def gateway_settings() -> dict[str, Any]:
    return {
        "max_calls": 4,
        "setup_timeout_s": SETUP_TIMEOUT_S,
        "carrier_idle_timeout_s": IDLE_TIMEOUT_S,
    }


@pytest.fixture(scope="module")
def question() -> Say:
    return Say.from_text("Hello, what are your opening hours on Saturday?")


async def _faults(gw: RunningGateway, **faults: Any) -> None:
    assert gw.emulator is not None
    async with httpx.AsyncClient() as client:
        resp = await client.post(f"{gw.emulator.url}/emulator/faults", json=faults)
        resp.raise_for_status()


async def _all_cleaned_up(gw: RunningGateway) -> list[dict[str, Any]]:
    """Wait until the gateway has no call and every upstream session it opened has ended —
    also those given up on during setup (ICE never connected): nothing is left to bill."""
    sessions = await wait_all_ended(gw)
    assert gateway_state(gw.app).calls == {}
    return sessions


def _upstream_errors(gw: RunningGateway, code: str) -> float:
    value = gateway_state(gw.app).metrics.registry.get_sample_value(
        "gateway_upstream_errors_total", {"code": code}
    )
    return value or 0.0


def _options(gw: RunningGateway) -> CallOptions:
    return CallOptions(webhook_url=f"{gw.url}/twilio/voice", to_number="+15550100002")


async def _admitted_stream(gw: RunningGateway, call_sid: str) -> tuple[ClientConnection, str]:
    """Admit ``call_sid`` through the webhook and open its media socket (not yet started)."""
    token = await admit(gw.url, call_sid)
    ws = await connect(gw.server.ws_url + "/twilio/media")
    await ws.send(CONNECTED)
    return ws, token


async def _until_audio(ws: ClientConnection, codec: TwilioCarrierCodec) -> None:
    async with asyncio.timeout(30):
        while not isinstance(codec.parse(await ws.recv()), PlayAudio):
            pass


# --- upstream faults ----------------------------------------------------------------------------


async def test_ice_that_never_connects_ends_the_stream_within_the_setup_deadline(
    gateway: RunningGateway,
) -> None:
    await _faults(gateway, ice_fail=True)
    result = await SimulatedCall([WaitForAnswer(timeout_ms=30_000)], _options(gateway)).run()
    assert result.failure == "closed_by_gateway"
    assert result.close_code == 4502  # the carrier plays the TwiML fallback
    # the caller is never left in silence beyond the deadline (plus teardown)
    assert result.duration_ms < (SETUP_TIMEOUT_S + 3) * 1000
    assert result.setup_ms is None
    await _all_cleaned_up(gateway)


async def test_a_refused_session_is_retried_and_the_call_goes_through(
    gateway: RunningGateway,
) -> None:
    await _faults(gateway, refuse_status=503, refuse_count=1)
    result = await SimulatedCall([WaitForAnswer()], _options(gateway)).run()
    assert result.ok, (result.failure, result.failure_detail)
    assert _upstream_errors(gateway, "http_503") == 1
    sessions = await _all_cleaned_up(gateway)
    assert len(sessions) == 1  # the refusal created nothing upstream


async def test_a_lost_data_channel_is_replaced_and_the_conversation_goes_on(
    gateway: RunningGateway, question: Say
) -> None:
    await _faults(gateway, close_channel_after_s=3.0)
    script = [WaitForAnswer(), Pause(4000), question, WaitForAnswer()]
    call = asyncio.create_task(SimulatedCall(script, _options(gateway)).run())

    async def first_session() -> bool:
        return bool(await emulator_sessions(gateway))

    await wait_until(first_session, what="the first upstream session")
    await _faults(gateway)  # the first session exists: let its replacement be healthy
    result = await call
    assert result.ok, (result.failure, result.failure_detail)
    assert len(result.response_latencies_ms) == 1  # the question after the loss was answered
    assert _upstream_errors(gateway, "reconnect") == 1
    sessions = await _all_cleaned_up(gateway)
    assert len(sessions) == 2


# --- carrier faults -----------------------------------------------------------------------------


async def test_a_carrier_that_goes_silent_is_hung_up_after_the_idle_timeout(
    gateway: RunningGateway,
) -> None:
    ws, token = await _admitted_stream(gateway, "CAidle")
    codec = TwilioCarrierCodec("MZidle")
    async with ws:
        await ws.send(start_frame(codec, "CAidle", token))
        await _until_audio(ws, codec)  # the call is up; from now on the carrier sends nothing
        async with asyncio.timeout(IDLE_TIMEOUT_S + 10):
            with contextlib.suppress(ConnectionClosed):
                async for _ in ws:  # read what the gateway sends, so its close frame gets in
                    pass
    assert ws.close_code == 1002
    assert "sent nothing" in (ws.close_reason or "")
    await _all_cleaned_up(gateway)


async def test_a_websocket_reset_mid_call_cleans_everything_up(gateway: RunningGateway) -> None:
    ws, token = await _admitted_stream(gateway, "CAreset")
    codec = TwilioCarrierCodec("MZreset")
    await ws.send(start_frame(codec, "CAreset", token))
    await _until_audio(ws, codec)
    ws.transport.abort()  # TCP reset: no close frame, no stop
    sessions = await _all_cleaned_up(gateway)
    assert [s["state"] for s in sessions] == ["ended"]


async def test_stop_without_start_opens_nothing(gateway: RunningGateway) -> None:
    ws, _ = await _admitted_stream(gateway, "CAstop")
    codec = TwilioCarrierCodec("MZstop")
    async with ws:
        await ws.send(codec.encode(Stop(codec.stream_sid, 2, "CAstop", "AC1")))
        async with asyncio.timeout(10):
            await ws.wait_closed()
    assert ws.close_code == 1002
    assert await emulator_sessions(gateway) == []
    await _all_cleaned_up(gateway)


async def test_duplicated_and_reordered_frames_do_not_end_the_call(
    gateway: RunningGateway, question: Say
) -> None:
    ws, token = await _admitted_stream(gateway, "CAorder")
    codec = TwilioCarrierCodec("MZorder")
    frames = list(question.frames) + [SILENCE] * 150
    order: list[int] = []
    for i in range(0, len(frames) - 1, 2):
        order += [i + 1, i] if i % 10 == 0 else [i, i + 1]  # swap some pairs
        if i % 14 == 0:
            order.append(i)  # and send some twice
    async with ws:
        await ws.send(start_frame(codec, "CAorder", token))
        await _until_audio(ws, codec)  # the greeting
        async with asyncio.timeout(30):
            # let the greeting finish, then speak with the frames out of order
            for k in range(150):
                await ws.send(codec.encode_media(k + 2, k + 1, 20 * k, SILENCE))
                await asyncio.sleep(0.02)
            answered = False
            for n, i in enumerate(order):
                seq = 200 + i
                await ws.send(codec.encode_media(seq, seq, 20 * seq, frames[i]))
                await asyncio.sleep(0.02)
                while not answered:
                    try:
                        raw = await asyncio.wait_for(ws.recv(), 0.001)
                    except TimeoutError:
                        break
                    answered = n > len(question.frames) and isinstance(codec.parse(raw), PlayAudio)
                if answered:
                    break
        assert answered, "the question sent out of order was not answered"
        await ws.send(codec.encode(Stop(codec.stream_sid, 9999, "CAorder", "AC1")))
        async with asyncio.timeout(10):
            async for _ in ws:
                pass
    assert ws.close_code == 1000
    await _all_cleaned_up(gateway)
