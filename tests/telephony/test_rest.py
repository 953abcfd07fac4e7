"""TwilioRestClient against the Calls-resource stand-in on a loopback port, and end to end: a
real gateway (with its embedded Realtime emulator), a simulated Twilio call registered in the
stand-in, and a REST hang-up / transfer issued mid-call by the test."""

from __future__ import annotations

import asyncio
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from gateway.app import gateway_state
from gateway.loadtest.caller import CallOptions, Pause, SimulatedCall, TimelineEntry, WaitForAnswer
from gateway.loadtest.twilio_api import Callee, CallUpdate, TwilioApiStandIn
from gateway.numbers import ProfileStore
from gateway.service import RunningGateway, running_gateway
from gateway.serving import RunningServer
from gateway.settings import Settings
from gateway.telephony.rest import (
    CallInfo,
    CreateCall,
    TwilioApiError,
    TwilioRestClient,
    transfer_twiml,
)

pytestmark = pytest.mark.timeout(90)

ACCOUNT = "AC" + "5a" * 16
TOKEN = "auth-token-0123456789abcdef"
KEY, KEY_SECRET = "SK" + "6b" * 16, "api-key-secret-0123456789"
CALL = "CA" + "7c" * 16


class Recorder:
    def __init__(self) -> None:
        self.updates: list[CallUpdate] = []

    async def __call__(self, update: CallUpdate) -> None:
        self.updates.append(update)


@pytest.fixture
async def api() -> AsyncIterator[tuple[TwilioApiStandIn, RunningServer]]:
    stand_in = TwilioApiStandIn(ACCOUNT, TOKEN, api_keys={KEY: KEY_SECRET})
    async with stand_in.serve() as server:
        yield stand_in, server


def client(
    server: RunningServer, password: str = TOKEN, username: str = ACCOUNT, **kw: Any
) -> TwilioRestClient:
    kw.setdefault("backoff_s", 0.01)
    return TwilioRestClient(ACCOUNT, username, password, base_url=server.url, **kw)


def live_call(stand_in: TwilioApiStandIn) -> Recorder:
    seen = Recorder()
    stand_in.register(CALL, to="+15550100002", from_="+15550100001", on_update=seen)
    return seen


# --- the happy paths ---------------------------------------------------------------------------


async def test_hang_up_completes_the_call(api: tuple[TwilioApiStandIn, RunningServer]) -> None:
    stand_in, server = api
    seen = live_call(stand_in)
    async with client(server) as rest:
        info = await rest.hang_up(CALL)
    assert isinstance(info, CallInfo)
    assert (info.sid, info.account_sid, info.status) == (CALL, ACCOUNT, "completed")
    assert info.ended and info.end_time is not None and info.duration_s == 0
    assert seen.updates == [CallUpdate(CALL, "hangup")]
    [request] = stand_in.requests
    assert (request.method, request.form, request.auth_ok) == (
        "POST",
        {"Status": "completed"},
        True,
    )


async def test_transfer_redirects_the_call_to_a_dial(
    api: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    stand_in, server = api
    seen = live_call(stand_in)
    async with client(server) as rest:
        info = await rest.transfer(CALL, "+15550109999", caller_id="+15550100002", announce="Hold")
    assert info.status == "in-progress"  # Twilio now runs the <Dial>
    [update] = seen.updates
    assert update.action == "twiml"
    assert update.twiml == transfer_twiml("+15550109999", caller_id="+15550100002", announce="Hold")
    assert update.dialed == ["+15550109999"]
    assert stand_in.requests[0].form == {"Twiml": update.twiml}


async def test_fetch_reads_the_call_with_an_api_key(
    api: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    stand_in, server = api
    live_call(stand_in)
    async with client(server, username=KEY, password=KEY_SECRET) as rest:
        info = await rest.fetch(CALL)
    assert (info.to, info.from_, info.direction) == ("+15550100002", "+15550100001", "inbound")
    assert info.status == "in-progress" and not info.ended
    assert info.start_time is not None and info.start_time.tzinfo is not None
    assert info.end_time is None and info.duration_s is None
    assert stand_in.requests[0].username == KEY


async def test_shared_http_client_is_not_closed(
    api: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    stand_in, server = api
    live_call(stand_in)
    async with httpx.AsyncClient() as http:
        async with client(server, http=http) as rest:
            await rest.fetch(CALL)
        assert not http.is_closed


# --- failures -----------------------------------------------------------------------------------


async def test_wrong_token_is_401_with_what_to_check_and_no_retry(
    api: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    stand_in, server = api
    seen = live_call(stand_in)
    wrong = "wrong-token-secret-xyz"
    async with client(server, password=wrong) as rest:
        with pytest.raises(TwilioApiError) as caught:
            await rest.hang_up(CALL)
    err = caught.value
    assert (err.status, err.code, err.attempts) == (401, 20003, 1)
    assert err.auth_failed and not err.unreachable
    text = str(err)
    assert "HTTP 401" in text and "20003" in text and "Authenticate" in text
    assert "check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN" in text
    assert wrong not in text and wrong not in repr(err) and wrong not in repr(rest)
    assert len(stand_in.requests) == 1 and seen.updates == []


async def test_wrong_api_key_secret_names_the_key_settings(
    api: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    _, server = api
    async with client(server, username=KEY, password="not-the-secret") as rest:
        with pytest.raises(TwilioApiError, match="check TWILIO_API_KEY and TWILIO_API_SECRET"):
            await rest.fetch(CALL)


async def test_unknown_call_is_404_not_retried(
    api: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    stand_in, server = api
    async with client(server) as rest:
        with pytest.raises(TwilioApiError) as caught:
            await rest.hang_up(CALL)
    err = caught.value
    assert (err.status, err.code, err.attempts) == (404, 20404, 1)
    assert err.not_found
    assert "the call has already ended or the SID is wrong" in str(err)
    assert "https://www.twilio.com/docs/errors/20404" in str(err)
    assert len(stand_in.requests) == 1


async def test_hanging_up_an_ended_call_is_21220(
    api: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    stand_in, server = api
    live_call(stand_in)
    async with client(server) as rest:
        await rest.hang_up(CALL)
        with pytest.raises(TwilioApiError) as caught:
            await rest.transfer(CALL, "+15550109999")
    assert caught.value.call_not_in_progress and caught.value.status == 400
    assert "no longer in progress" in str(caught.value)


async def test_429_then_ok_is_retried_after_retry_after(
    api: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    stand_in, server = api
    seen = live_call(stand_in)
    stand_in.fail_next(429, retry_after=0.3)
    async with client(server) as rest:
        began = time.monotonic()
        info = await rest.hang_up(CALL)
        waited = time.monotonic() - began
    assert info.status == "completed"
    assert [r.status_code for r in stand_in.requests] == [429, 200]
    assert waited >= 0.3  # Retry-After honoured (the backoff alone is ~10 ms)
    assert len(seen.updates) == 1


async def test_500_three_times_gives_up_with_the_last_error(
    api: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    stand_in, server = api
    seen = live_call(stand_in)
    stand_in.fail_next(500, times=3)
    async with client(server) as rest:
        with pytest.raises(TwilioApiError) as caught:
            await rest.hang_up(CALL)
    err = caught.value
    assert (err.status, err.code, err.attempts) == (500, 20500, 3)
    assert "after 3 attempts" in str(err) and "server-side problem" in str(err)
    assert [r.status_code for r in stand_in.requests] == [500, 500, 500]
    assert seen.updates == [] and stand_in.call(CALL)["status"] == "in-progress"


async def test_a_retry_after_longer_than_a_call_can_wait_fails_at_once(
    api: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    stand_in, server = api
    live_call(stand_in)
    stand_in.fail_next(503, retry_after=60)
    async with client(server, max_retry_wait_s=1.0) as rest:
        with pytest.raises(TwilioApiError, match="Twilio asked to wait 60 s") as caught:
            await rest.fetch(CALL)
    assert caught.value.attempts == 1


async def test_refused_port_is_a_clear_unreachable_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        secret = "refused-port-secret-123"
        rest = TwilioRestClient(
            ACCOUNT, ACCOUNT, secret, base_url=f"http://127.0.0.1:{port}", backoff_s=0.01
        )
        async with rest:
            with pytest.raises(TwilioApiError) as caught:
                await rest.hang_up(CALL)
    err = caught.value
    assert err.unreachable and err.status is None and err.attempts == 3
    text = str(err)
    assert f"could not get an answer from http://127.0.0.1:{port}" in text
    assert "ConnectError" in text and "GATEWAY_TWILIO_API_BASE_URL" in text
    assert secret not in text


async def test_a_redirect_that_timed_out_is_not_repeated_but_a_hang_up_is(
    api: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    stand_in, server = api
    seen = live_call(stand_in)
    async with client(server, timeout_s=0.3) as rest:
        stand_in.delay_next(1.0)
        with pytest.raises(TwilioApiError) as caught:
            await rest.transfer(CALL, "+15550109999")
        assert caught.value.unreachable and caught.value.attempts == 1
        assert "not repeated" in str(caught.value)
        stand_in.delay_next(1.0)
        info = await rest.hang_up(CALL)  # the second attempt is not delayed
    assert info.status == "completed"
    assert [u.action for u in seen.updates][-1] == "hangup"


async def test_a_body_that_is_not_a_call_names_the_base_url_setting(
    api: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    _, server = api
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda request: httpx.Response(200, text="<html/>"))
    )
    async with http, client(server, http=http) as rest:
        with pytest.raises(TwilioApiError, match="GATEWAY_TWILIO_API_BASE_URL"):
            await rest.fetch(CALL)


async def test_the_password_is_redacted_even_when_echoed_back() -> None:
    secret = "echoed-secret-456"

    def echo(request: httpx.Request) -> httpx.Response:
        body = {"code": 20003, "message": f"bad password {secret}", "status": 401}
        return httpx.Response(401, json=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(echo)) as http:
        rest = TwilioRestClient(
            ACCOUNT, ACCOUNT, secret, base_url="https://api.twilio.com", http=http
        )
        with pytest.raises(TwilioApiError) as caught:
            await rest.fetch(CALL)
    assert secret not in str(caught.value) and secret not in caught.value.twilio_message
    assert "bad password ***" in str(caught.value)


# --- arguments ----------------------------------------------------------------------------------


def test_transfer_twiml_says_then_dials() -> None:
    twiml = transfer_twiml("+15550109999", caller_id="+15550100002", announce=" Transferring ")
    root = ET.fromstring(twiml)
    assert [child.tag for child in root] == ["Say", "Dial"]
    assert root[0].text == "Transferring"
    assert root[1].text == "+15550109999" and root[1].get("callerId") == "+15550100002"
    plain = ET.fromstring(transfer_twiml("+442071838750"))
    assert [child.tag for child in plain] == ["Dial"] and plain[0].get("callerId") is None


@pytest.mark.parametrize("number", ["15550109999", "+0555", "+1555 010 9999", "+1" + "2" * 15, ""])
def test_transfer_twiml_wants_e164(number: str) -> None:
    with pytest.raises(ValueError, match=r"E\.164"):
        transfer_twiml(number)
    with pytest.raises(ValueError, match=r"E\.164"):
        transfer_twiml("+15550109999", caller_id=number)


async def test_bad_arguments_fail_before_any_request(
    api: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    stand_in, server = api
    async with client(server) as rest:
        with pytest.raises(ValueError, match="letters and digits"):
            await rest.hang_up("CA1/../../x")
        with pytest.raises(ValueError, match="exceeds Twilio's 4000"):
            await rest.redirect(CALL, "<Response>" + "<Pause/>" * 600 + "</Response>")
        with pytest.raises(ValueError, match="not well-formed"):
            await rest.redirect(CALL, "<Response><Dial>")
        with pytest.raises(ValueError, match=r"E\.164"):
            await rest.transfer(CALL, "0800")
    assert stand_in.requests == []
    with pytest.raises(ValueError):
        TwilioRestClient(ACCOUNT, ACCOUNT, "", base_url=server.url)
    with pytest.raises(ValueError):
        TwilioRestClient(ACCOUNT, ACCOUNT, TOKEN, base_url="api.twilio.com")


# --- end to end: a real gateway, a simulated call, a REST hang-up mid-call --------------------

PROFILES = """
default:
  instructions: "You answer the phone."
  voice: alloy
  greeting: "Greet the caller briefly."
"""
ADMIN = "admin-token-for-tests"


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    path = tmp_path / "profiles.yaml"
    path.write_text(PROFILES)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, profiles_file=path, max_calls=2, admin_token=SecretStr(ADMIN)
    )
    async with running_gateway(
        settings, port=0, emulator_options={"latency_ms": 100.0}, profiles=ProfileStore(path)
    ) as gw:
        yield gw


async def _admin_calls(gw: RunningGateway) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{gw.url}/admin/calls", headers={"Authorization": f"Bearer {ADMIN}"})
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


async def _call_until_heard(
    gw: RunningGateway,
    stand_in: TwilioApiStandIn,
    act: Callable[[str], Awaitable[CallInfo]],
) -> tuple[Any, CallInfo, dict[str, Any]]:
    """Place a call, wait for the greeting to be heard, then ``act`` on it mid-call."""
    heard = asyncio.Event()

    def on_event(entry: TimelineEntry) -> None:
        if entry.kind == "assistant_start":
            heard.set()

    options = CallOptions(
        webhook_url=f"{gw.url}/twilio/voice", to_number="+15550100002", twilio_api=stand_in
    )
    call = SimulatedCall([WaitForAnswer(), Pause(60_000)], options, on_event=on_event)
    task = asyncio.create_task(call.run())
    async with asyncio.timeout(30):
        await heard.wait()
    live = await _admin_calls(gw)
    assert [c["call_sid"] for c in live["calls"]] == [call.result.call_sid]
    info = await act(call.result.call_sid)
    result = await task
    return result, info, live


async def test_rest_hang_up_mid_call_ends_the_simulated_call_and_the_gateway_call(
    gateway: RunningGateway, api: tuple[TwilioApiStandIn, RunningServer]
) -> None:
    stand_in, server = api
    async with client(server) as rest:
        result, info, _ = await _call_until_heard(gateway, stand_in, rest.hang_up)

    assert info.status == "completed"
    assert result.ok, (result.failure, result.failure_detail)
    assert result.ended_by == "rest_hangup"
    assert result.setup_ms is not None  # the greeting was heard before the hang-up
    state = gateway_state(gateway.app)
    async with asyncio.timeout(10):
        await state.idle.wait()
    after = await _admin_calls(gateway)
    assert after["calls"] == []
    [ended] = [c for c in after["recent"] if c["call_sid"] == result.call_sid]
    assert ended["end_reason"] == "carrier sent stop"
    assert state.admissions.live == 0


async def test_rest_transfer_mid_call_leaves_the_stream_for_the_dial(
    gateway: RunningGateway, api: tuple[TwilioApiStandIn, RunningServer]
) -> None:
    stand_in, server = api
    async with client(server) as rest:

        async def transfer(call_sid: str) -> CallInfo:
            return await rest.transfer(call_sid, "+15550109999", announce="Transferring you")

        result, info, _ = await _call_until_heard(gateway, stand_in, transfer)

    assert info.status == "in-progress"
    assert result.ok and result.ended_by == "rest_redirect"
    assert result.dialed == ["+15550109999"]
    assert (
        result.redirect_twiml is not None and "<Say>Transferring you</Say>" in result.redirect_twiml
    )
    state = gateway_state(gateway.app)
    async with asyncio.timeout(10):
        await state.idle.wait()
    assert state.calls == {}


# --- placing calls -----------------------------------------------------------------------------

OUTBOUND_TWIML = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
    '<Stream url="ws://127.0.0.1:9/twilio/media" /></Connect><Hangup /></Response>'
)


async def test_create_call_sends_twilios_fields_and_gets_the_queued_call(
    api: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    stand_in, server = api
    stand_in.callee("+15550100002", Callee(answer="busy"))
    request = CreateCall(
        to="+15550100002",
        from_="+15550100001",
        twiml=OUTBOUND_TWIML,
        status_callback="http://127.0.0.1:9/status?call=OB1",
        machine_detection="DetectMessageEnd",
        machine_detection_timeout_s=20,
        amd_callback="http://127.0.0.1:9/amd?call=OB1",
        timeout_s=25,
    )
    async with client(server) as rest:
        info = await rest.create_call(request)
    assert info.status == "queued" and info.direction == "outbound-api"
    assert info.sid.startswith("CA") and info.to == "+15550100002"
    [sent] = stand_in.requests
    assert sent.method == "POST" and sent.path.endswith(f"/Accounts/{ACCOUNT}/Calls.json")
    assert sent.form["MachineDetection"] == "DetectMessageEnd"
    assert sent.form["AsyncAmd"] == "true"
    assert sent.form["AsyncAmdStatusCallback"] == "http://127.0.0.1:9/amd?call=OB1"
    assert sent.form["MachineDetectionTimeout"] == "20" and sent.form["Timeout"] == "25"
    assert await stand_in.placed_call(info.sid) is None  # busy: it never streamed


def test_create_call_refuses_what_twilio_would_before_sending() -> None:
    with pytest.raises(ValueError, match=r"E\.164"):
        CreateCall(to="5550100", from_="+15550100001", twiml=OUTBOUND_TWIML)
    with pytest.raises(ValueError, match="MachineDetection"):
        CreateCall(to="+15550100002", from_="+15550100001", twiml="", machine_detection="Always")


async def test_a_create_whose_answer_is_lost_is_not_repeated(
    api: tuple[TwilioApiStandIn, RunningServer],
) -> None:
    stand_in, server = api
    stand_in.delay_next(1.0)
    request = CreateCall(to="+15550100002", from_="+15550100001", twiml=OUTBOUND_TWIML)
    async with client(server, timeout_s=0.2, max_attempts=3) as rest:
        with pytest.raises(TwilioApiError) as failed:
            await rest.create_call(request)
    assert failed.value.unreachable and failed.value.attempts == 1
