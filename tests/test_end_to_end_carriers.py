"""Calls end to end on every carrier: a simulated carrier in its own dialect -> the real gateway
(webhook and media websocket on loopback) -> the real emulator over WebRTC.

Twilio's own end-to-end tests are in ``test_end_to_end.py``; these play SignalWire, Telnyx and
Plivo through the same :class:`~gateway.loadtest.caller.SimulatedCall`, so greeting, answer,
barge-in (their ``clear``/``clearAudio``) and marks (``mark``/``checkpoint``) are measured as the
caller hears them.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from websockets.asyncio.client import connect

from gateway.app import gateway_state
from gateway.loadtest.caller import BargeIn, CallOptions, HangUp, Say, SimulatedCall, WaitForAnswer
from gateway.loadtest.dialects import dialect_named
from gateway.service import RunningGateway
from gateway.telephony.carriers import CALL_SID_PARAM, CALL_TOKEN_PARAM
from gateway.telephony.messages import Connected, PlayAudio, Start, Stop, frozen_mapping
from gateway.telephony.plivo import PlivoCarrierCodec
from gateway.telephony.telnyx import TelnyxCarrierCodec
from tests.support import emulator_sessions, wait_all_ended

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def gateway_settings() -> dict[str, Any]:
    """Every carrier served: unsigned from loopback unless a test gives its credentials."""
    return {"max_calls": 4, "carriers": ["signalwire", "telnyx", "plivo"]}


CARRIERS = ["signalwire", "telnyx", "plivo"]
PROFILES = """
default:
  instructions: "You answer for the default line."
  greeting: "Greet the caller briefly."
numbers:
  "+15551230001":
    instructions: "You are the bakery's assistant."
    voice: cedar
    greeting: "Say hello from the bakery."
  "+15551230002":
    greeting: null
"""
TELNYX_KEY = Ed25519PrivateKey.generate()
TELNYX_SEED = base64.b64encode(
    TELNYX_KEY.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
).decode()
TELNYX_PUBLIC = base64.b64encode(
    TELNYX_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
).decode()
SECRETS = {"signalwire": "sw-key", "telnyx": TELNYX_SEED, "plivo": "pl-token"}


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


def _options(gw: RunningGateway, carrier: str, **kw: object) -> CallOptions:
    path = dialect_named(carrier).voice_path
    return CallOptions(
        webhook_url=f"{gw.url}{path}",
        to_number="+15551230001",
        carrier=carrier,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_a_call_is_greeted_answered_interrupted_and_cleaned_up(
    gateway: RunningGateway, question: Say, interruption: Say, carrier: str
) -> None:
    # One call per carrier covers the whole path (a call is ~15 s of real-time audio).
    script = [
        WaitForAnswer(),
        question,
        BargeIn(interruption, after_ms=500),
        WaitForAnswer(),
        HangUp(),
    ]
    result = await SimulatedCall(script, _options(gateway, carrier)).run()

    assert result.ok, (result.failure, result.failure_detail)
    assert result.setup_ms is not None  # the greeting was heard
    assert result.response_latencies_ms
    assert result.frames_played > 50
    assert result.marks_received > 0 and result.marks_echoed > 0  # marks / checkpoints
    barge = [t for t in result.turns if t.barge_in]
    assert len(barge) == 1
    assert result.clears_received >= 1
    assert barge[0].answer_ms is not None
    sessions = await wait_all_ended(gateway)
    assert len(sessions) == 1
    assert sessions[0]["session"]["instructions"] == "You are the bakery's assistant."
    assert sessions[0]["events_received"].get("output_audio_buffer.clear", 0) >= 1
    state = gateway_state(gateway.app)
    assert state.calls == {} and state.admissions.live == 0


@pytest.mark.parametrize(
    "gateway_settings",
    [
        {
            "max_calls": 4,
            "signalwire_signing_key": SECRETS["signalwire"],
            "telnyx_public_key": TELNYX_PUBLIC,
            "plivo_auth_token": SECRETS["plivo"],
        }
    ],
    ids=["signed"],
)
@pytest.mark.parametrize("carrier", CARRIERS)
async def test_signed_calls_go_through_and_forged_ones_cost_nothing(
    gateway: RunningGateway, carrier: str
) -> None:
    good = await SimulatedCall(
        [WaitForAnswer(), HangUp()], _options(gateway, carrier, auth_token=SECRETS[carrier])
    ).run()
    assert good.ok, (good.failure, good.failure_detail)
    forged = await SimulatedCall(
        [WaitForAnswer(), HangUp()], _options(gateway, carrier, auth_token=None)
    ).run()
    assert forged.failure == "webhook_http_403"
    assert len(await wait_all_ended(gateway)) == 1


# --- by hand on the wire ------------------------------------------------------------------------


async def _admit(
    gw: RunningGateway, carrier: str, call_sid: str, to: str = "+15551230001"
) -> tuple[str, dict[str, str]]:
    """POST the carrier's webhook; the media URL and the binding its answer gives."""
    dialect = dialect_named(carrier)
    form = dialect.webhook_form(call_sid, "AC1", "+15550001111", to)
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"{gw.url}{dialect.voice_path}",
            content=urlencode(form).encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert r.status_code == 200, r.text
    return dialect.stream_from_answer(r.text, f"{gw.url}{dialect.voice_path}")


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_junk_frames_do_not_end_the_call_and_telnyx_frames_may_come_out_of_order(
    gateway: RunningGateway, question: Say, carrier: str
) -> None:
    call_sid = f"{carrier}-junk"
    url, params = await _admit(gateway, carrier, call_sid, to="+15551230002")  # no greeting
    codec = dialect_named(carrier).codec("the-stream")
    start = Start("the-stream", call_sid, "acct", ("inbound",), frozen_mapping(params))
    junk = ["{not json", json.dumps({"event": "media"}), '{"event": "bogus"}', "[1, 2]"]
    silence = base64.b64encode(b"\xff" * 160).decode()
    frames = [
        codec.encode_media(i + 2, i + 1, 20 * i, p)
        for i, p in enumerate(list(question.frames) + [silence] * 1000)
    ]
    if carrier == "telnyx":  # swap neighbours: every pair arrives in the wrong order
        for i in range(0, len(frames) - 1, 2):
            frames[i], frames[i + 1] = frames[i + 1], frames[i]
    answered = False
    async with connect(url) as ws:
        if carrier != "plivo":
            await ws.send(codec.encode(Connected("Call", "1.0.0")))
        await ws.send(codec.encode(start))
        async with asyncio.timeout(30):
            for i, frame in enumerate(frames):
                if i < len(junk):
                    await ws.send(junk[i])
                await ws.send(frame)
                try:
                    raw = await asyncio.wait_for(ws.recv(), 0.02)
                except TimeoutError:
                    continue
                if isinstance(codec.parse(raw), PlayAudio):
                    answered = True
                    break
        await ws.send(codec.encode(Stop("the-stream", 99_999, call_sid, "acct")))
    assert answered, "the assistant never answered"
    sessions = await wait_all_ended(gateway)
    assert len(sessions) == 1 and sessions[0]["turns"] >= 1
    counted = gateway_state(gateway.app).metrics.render().decode()
    assert 'gateway_carrier_messages_rejected_total{reason="CarrierProtocolError"}' in counted


@pytest.mark.parametrize("carrier", ["telnyx", "plivo"])
async def test_a_stream_without_a_valid_binding_is_closed_with_1008(
    gateway: RunningGateway, carrier: str
) -> None:
    url, params = await _admit(gateway, carrier, f"{carrier}-forged")
    if carrier == "plivo":  # the binding is in the URL: present a forged token there
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        query[CALL_TOKEN_PARAM] = "not-a-token"
        url = urlsplit(url)._replace(query=urlencode(query)).geturl()
        plivo = PlivoCarrierCodec("pl-stream")
        first = plivo.encode(Start("pl-stream", "pl-forged", "MA1", ("inbound",)))
    else:
        forged = {**params, CALL_TOKEN_PARAM: "not-a-token"}
        tx = TelnyxCarrierCodec("tx-stream")
        first = tx.encode(Start("tx-stream", "v3:x", "u", ("inbound",), frozen_mapping(forged)))
    assert CALL_SID_PARAM in (params or {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()})
    async with connect(url) as ws:
        await ws.send(first)
        async with asyncio.timeout(10):
            await ws.wait_closed()
    assert ws.close_code == 1008
    assert await emulator_sessions(gateway) == []
