"""The console through a real gateway on loopback: login and its cookie, CSRF refusals,
logout, the push stream during a real call (simulated carrier + the real emulator), hanging
up from the console, and the browser phone's admission and media stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.app import gateway_state
from gateway.console.routes import COOKIE
from gateway.loadtest.caller import CallOptions, HangUp, Pause, Say, SimulatedCall, WaitForAnswer
from gateway.records.model import CallRecord
from gateway.service import RunningGateway
from gateway.telephony.messages import PlayAudio, Stop
from gateway.telephony.twilio import TwilioCarrierCodec, start_message
from tests.support import CONNECTED, wait_until

pytestmark = pytest.mark.timeout(60)

ADMIN = "console-test-admin-token"
PROFILES = """
default:
  instructions: "You answer for the default line."
  greeting: "Greet the caller briefly."
numbers:
  "+15551230001":
    instructions: "You are the bakery's assistant."
    greeting: "Say hello from the bakery."
"""


@pytest.fixture
def gateway_settings() -> dict[str, Any]:
    # Loopback is a trusted proxy here, so a test can claim HTTPS with X-Forwarded-Proto.
    return {"max_calls": 4, "admin_token": ADMIN, "trusted_proxies": ["127.0.0.1", "::1"]}


@pytest.fixture
def profiles_yaml() -> str:
    return PROFILES


@pytest.fixture
async def client(gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, follow_redirects=False) as c:
        yield c


async def _login(client: httpx.AsyncClient) -> str:
    """Log in; answer the session's CSRF token (the cookie stays in the client)."""
    resp = await client.post("/console/login", data={"token": ADMIN})
    assert resp.status_code == 303, resp.text
    session = await client.get("/console/api/session")
    assert session.status_code == 200
    token: str = session.json()["csrf_token"]
    return token


# --- login, cookie, CSRF, logout ---------------------------------------------------------------


@pytest.mark.parametrize("gateway_settings", [{"max_calls": 1}])  # no admin token
async def test_without_an_admin_token_the_console_is_off_like_the_admin_api(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    admin = await client.get("/admin/calls")
    assert admin.status_code == 404
    for path in ("/console", "/console/static/console.js", "/console/api/events"):
        resp = await client.get(path)
        assert (resp.status_code, resp.json()) == (404, admin.json()), path
    assert (await client.post("/console/login", data={"token": ""})).status_code == 404
    with pytest.raises(InvalidStatus):
        async with connect(f"{gateway.server.ws_url}/console/phone/media"):
            pass


async def test_without_a_session_the_console_shows_only_the_login_form(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/console")
    assert page.status_code == 200
    assert 'action="/console/login"' in page.text
    assert "live-calls" not in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for path in ("/console/api/session", "/console/api/calls", "/console/api/events"):
        assert (await client.get(path)).status_code == 401, path
    assert (await client.post("/console/api/phone", json={})).status_code == 401


async def test_a_wrong_token_is_refused_and_sets_no_cookie(client: httpx.AsyncClient) -> None:
    resp = await client.post("/console/login", data={"token": "guess"})
    assert resp.status_code == 401
    assert "Wrong token" in resp.text
    assert "set-cookie" not in resp.headers
    assert (await client.get("/console/api/session")).status_code == 401


async def test_login_sets_a_strict_httponly_cookie_and_keeps_the_token_out_of_urls(
    client: httpx.AsyncClient,
) -> None:
    resp = await client.post("/console/login", data={"token": ADMIN})
    assert resp.status_code == 303
    assert resp.headers["location"] == "/console"
    cookie = resp.headers["set-cookie"]
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
    assert {"httponly", "path", "samesite"} <= attrs
    assert "samesite=strict" in cookie.lower()
    assert "secure" not in attrs  # plain HTTP here
    assert ADMIN not in cookie and ADMIN not in resp.headers["location"]
    page = await client.get("/console")
    assert "live-calls" in page.text
    assert ADMIN not in page.text
    session = await client.get("/console/api/session")
    assert ADMIN not in session.text
    assert [n["number"] for n in session.json()["numbers"]] == ["+15551230001"]


async def test_the_cookie_is_secure_when_a_trusted_proxy_says_https(
    client: httpx.AsyncClient,
) -> None:
    resp = await client.post(
        "/console/login", data={"token": ADMIN}, headers={"X-Forwarded-Proto": "https"}
    )
    assert resp.status_code == 303
    attrs = {a.strip().lower() for a in resp.headers["set-cookie"].split(";")}
    assert "secure" in attrs


async def test_state_changes_need_the_csrf_header_and_our_own_origin(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    csrf = await _login(client)
    assert (await client.post("/console/logout")).status_code == 403
    assert (await client.post("/console/logout", headers={"X-CSRF-Token": "x"})).status_code == 403
    foreign = {"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
    assert (await client.post("/console/logout", headers=foreign)).status_code == 403
    assert (await client.post("/console/api/phone", json={})).status_code == 403
    assert (await client.get("/console/api/session")).status_code == 200  # still logged in

    same = {"X-CSRF-Token": csrf, "Origin": gateway.url}
    resp = await client.post("/console/logout", headers=same)
    assert resp.status_code == 204
    assert "max-age=0" in resp.headers["set-cookie"].lower()
    assert (await client.get("/console/api/session")).status_code == 401


async def test_a_stolen_cookie_is_worthless_after_logout(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    csrf = await _login(client)
    sid = client.cookies[COOKIE]
    await client.post("/console/logout", headers={"X-CSRF-Token": csrf})
    async with httpx.AsyncClient(base_url=gateway.url, cookies={COOKIE: sid}) as thief:
        assert (await thief.get("/console/api/session")).status_code == 401


async def test_static_files_are_served_without_html_or_traversal(
    client: httpx.AsyncClient,
) -> None:
    js = await client.get("/console/static/console.js")
    assert js.status_code == 200 and "EventSource" in js.text
    assert (await client.get("/console/static/app.html")).status_code == 404
    assert (await client.get("/console/static/..%2f__init__.py")).status_code == 404


# --- the push stream during real calls -----------------------------------------------------------


async def _events(
    client: httpx.AsyncClient, out: list[tuple[str, dict[str, Any]]], seen: asyncio.Event
) -> None:
    async with client.stream("GET", "/console/api/events", timeout=None) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        event = ""
        async for line in resp.aiter_lines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[len("data: ") :])))
                seen.set()


async def test_the_push_stream_shows_a_call_live_with_its_transcript(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    await _login(client)
    events: list[tuple[str, dict[str, Any]]] = []
    seen = asyncio.Event()
    reader = asyncio.create_task(_events(client, events, seen))
    try:
        question = Say.from_text("Hello, when do you open on Saturday?")
        script = [WaitForAnswer(), question, WaitForAnswer(), HangUp()]
        options = CallOptions(webhook_url=f"{gateway.url}/twilio/voice", to_number="+15551230001")
        result = await SimulatedCall(script, options).run()
        assert result.ok, (result.failure, result.failure_detail)
        sid = result.call_sid
        await wait_until(lambda: any(e == "ended" for e, _ in events), within=10)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    views = [d for e, d in events if e == "call" and d["call_sid"] == sid]
    assert views, events
    assert views[-1]["profile"] == "+15551230001" or views[-1]["profile"]
    assert views[-1]["codec"] is not None
    assert {v["state"] for v in views} >= {"listening"} or len(views) > 1
    assert all("transcript" not in v for v in views)  # lines come as their own events
    lines = [d for e, d in events if e == "line" and d["call_sid"] == sid]
    speakers = [line["speaker"] for line in lines]
    assert "assistant" in speakers and "caller" in speakers, lines
    assert any(v["turn_latency_ms"] for v in views)
    ended = [d for e, d in events if e == "ended" and d["call_sid"] == sid]
    assert ended and ended[0]["outcome"] is not None
    assert ADMIN not in json.dumps(events)


async def test_the_operator_hangs_up_a_live_call(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    csrf = await _login(client)
    script = [WaitForAnswer(), Pause(ms=30_000), HangUp()]
    options = CallOptions(webhook_url=f"{gateway.url}/twilio/voice", to_number="+15551230001")
    call = asyncio.create_task(SimulatedCall(script, options).run())
    state = gateway_state(gateway.app)
    await wait_until(lambda: bool(state.calls), within=15)
    (sid,) = state.calls
    assert (await client.post(f"/console/api/calls/{sid}/hangup")).status_code == 403  # no CSRF
    assert sid in state.calls
    resp = await client.post(f"/console/api/calls/{sid}/hangup", headers={"X-CSRF-Token": csrf})
    assert resp.status_code == 202
    result = await asyncio.wait_for(call, 15)
    assert result.failure == "closed_by_gateway", (result.failure, result.failure_detail)
    assert "operator" in result.close_reason
    missing = await client.post(f"/console/api/calls/{sid}/hangup", headers={"X-CSRF-Token": csrf})
    assert missing.status_code == 404


# --- the browser phone, spoken by a test in Twilio's messages --------------------------------


async def test_the_browser_phone_stream_needs_the_session_and_binds_with_its_call_token(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    csrf = await _login(client)
    resp = await client.post(
        "/console/api/phone", json={"number": "+15551230001"}, headers={"X-CSRF-Token": csrf}
    )
    assert resp.status_code == 200, resp.text
    call = resp.json()
    assert call["stream_url"] == f"{gateway.server.ws_url}/console/phone/media"
    params = call["parameters"]
    assert params["gateway_number"] == "+15551230001" and params["gateway_call_token"]
    url = call["stream_url"]
    cookie = {"Cookie": f"{COOKIE}={client.cookies[COOKIE]}"}

    for headers in ({}, {**cookie, "Origin": "https://evil.example"}, {"Origin": gateway.url}):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 403

    codec = TwilioCarrierCodec("MZconsole1")
    async with connect(url, additional_headers={**cookie, "Origin": gateway.url}) as ws:
        await ws.send(CONNECTED)
        start = start_message(
            stream_sid=codec.stream_sid,
            call_sid=call["call_sid"],
            account_sid=call["account_sid"],
            custom_parameters=params,
        )
        await ws.send(codec.encode(start))
        heard = 0
        while heard < 10:  # the greeting arrives, as a phone would hear it
            msg = codec.parse(await asyncio.wait_for(ws.recv(), 15))
            heard += isinstance(msg, PlayAudio)
        state = gateway_state(gateway.app)
        assert call["call_sid"] in state.calls
        await ws.send(codec.encode(Stop(codec.stream_sid, 2, call["call_sid"], "AC1")))
    await wait_until(lambda: not state.calls, within=10)


async def test_the_browser_phone_needs_a_known_number(
    client: httpx.AsyncClient,
) -> None:
    csrf = await _login(client)
    resp = await client.post(
        "/console/api/phone", json={"number": "+19999999999"}, headers={"X-CSRF-Token": csrf}
    )
    assert resp.status_code == 422


# --- the pages' data ----------------------------------------------------------------------------


async def test_the_session_opens_the_admin_api_with_csrf_on_posts(
    client: httpx.AsyncClient,
) -> None:
    csrf = await _login(client)
    assert (await client.get("/admin/calls")).status_code == 200
    assert (await client.get("/admin/usage")).status_code == 200
    assert (await client.post("/admin/reload")).status_code == 403  # no CSRF header
    reloaded = await client.post("/admin/reload", headers={"X-CSRF-Token": csrf})
    assert reloaded.status_code == 200 and reloaded.json()["reloaded"]
    client.cookies.clear()
    assert (await client.get("/admin/calls")).status_code == 401
    bearer = await client.get("/admin/calls", headers={"Authorization": f"Bearer {ADMIN}"})
    assert bearer.status_code == 200  # scripts keep their bearer token


async def test_health_reports_capacity_latency_lag_and_errors(client: httpx.AsyncClient) -> None:
    await _login(client)
    h = (await client.get("/console/api/health")).json()
    assert h["capacity"] == 4 and h["live_calls"] == 0
    assert set(h["added_latency_p99_ms"]) == {"inbound", "outbound"}
    assert h["event_loop_lag_ms"] >= 0
    assert isinstance(h["upstream_errors"], dict)


async def test_profiles_show_effective_settings_and_a_broken_file_in_words(
    client: httpx.AsyncClient, profiles_file: Any
) -> None:
    await _login(client)
    p = (await client.get("/console/api/profiles")).json()
    assert p["file_error"] is None
    bakery = p["numbers"]["+15551230001"]
    assert bakery["instructions"] == "You are the bakery's assistant."
    assert bakery["voice"] and bakery["model"] and "turn_detection" in bakery
    profiles_file.write_text("numbers:\n  '+15551230001':\n    voice: 12\n")
    broken = (await client.get("/console/api/profiles")).json()
    assert "voice" in broken["file_error"]
    # the last good profiles stay in force and on the page
    assert broken["numbers"]["+15551230001"]["instructions"] == bakery["instructions"]


async def test_a_recording_is_served_only_from_the_recordings_folder(
    client: httpx.AsyncClient, gateway: RunningGateway, tmp_path: Any
) -> None:
    await _login(client)
    state = gateway_state(gateway.app)
    assert state.records is not None
    folder = state.settings.recordings_dir
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "CAin.wav").write_bytes(b"RIFF0000WAVE")
    outside = tmp_path / "secret.txt"
    outside.write_text("not a recording")
    now = datetime.now(UTC)
    for sid, path in (("CAin", folder / "CAin.wav"), ("CAout", outside)):
        record = CallRecord(call_sid=sid, started_at=now, recording_path=str(path))
        await state.records.save(record)
    ok = await client.get("/console/api/records/CAin/recording")
    assert ok.status_code == 200 and ok.headers["content-type"] == "audio/wav"
    assert (await client.get("/console/api/records/CAout/recording")).status_code == 404
    assert (await client.get("/console/api/records/CAnone/recording")).status_code == 404


TWILIO_TOKEN = "twilio-auth-token-never-shown"


@pytest.mark.parametrize(
    "gateway_settings",
    [{"max_calls": 2, "admin_token": ADMIN, "twilio_auth_token": TWILIO_TOKEN}],
)
async def test_with_signed_carriers_the_phone_still_calls_and_no_secret_reaches_a_page(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    # The carrier route still wants Twilio's signature: the console opened no hole in it.
    with pytest.raises(InvalidStatus) as unsigned:
        async with connect(f"{gateway.server.ws_url}/twilio/media"):
            pass
    assert unsigned.value.response.status_code == 403

    csrf = await _login(client)
    call = (await client.post("/console/api/phone", json={}, headers={"X-CSRF-Token": csrf})).json()
    codec = TwilioCarrierCodec("MZconsole2")
    cookie = {"Cookie": f"{COOKIE}={client.cookies[COOKIE]}", "Origin": gateway.url}
    async with connect(call["stream_url"], additional_headers=cookie) as ws:
        await ws.send(CONNECTED)
        start = start_message(
            stream_sid=codec.stream_sid,
            call_sid=call["call_sid"],
            account_sid=call["account_sid"],
            custom_parameters=call["parameters"],
        )
        await ws.send(codec.encode(start))
        while not isinstance(codec.parse(await asyncio.wait_for(ws.recv(), 15)), PlayAudio):
            pass
        pages = [
            await client.get(path)
            for path in (
                "/console",
                "/console/api/session",
                "/console/api/calls",
                "/console/api/profiles",
                "/console/api/health",
                "/console/static/console.js",
                "/admin/calls",
            )
        ]
        await ws.send(codec.encode(Stop(codec.stream_sid, 2, call["call_sid"], "AC1")))
    for page in pages:
        assert page.status_code == 200, page.url
        assert ADMIN not in page.text and TWILIO_TOKEN not in page.text, page.url


async def test_too_many_wrong_tokens_close_the_login_for_a_while(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    gateway_state(gateway.app).console.throttle.failures = 2
    for _ in range(2):
        assert (await client.post("/console/login", data={"token": "guess"})).status_code == 401
    refused = await client.post("/console/login", data={"token": ADMIN})
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1


async def test_the_browser_phone_stream_is_refused_without_its_call_token(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    csrf = await _login(client)
    call = (await client.post("/console/api/phone", json={}, headers={"X-CSRF-Token": csrf})).json()
    codec = TwilioCarrierCodec("MZconsole3")
    headers = {"Cookie": f"{COOKIE}={client.cookies[COOKIE]}", "Origin": gateway.url}
    async with connect(call["stream_url"], additional_headers=headers) as ws:
        await ws.send(CONNECTED)
        forged = {**call["parameters"], "gateway_call_token": "v1.9999999999.forged"}
        start = start_message(
            stream_sid=codec.stream_sid,
            call_sid=call["call_sid"],
            account_sid=call["account_sid"],
            custom_parameters=forged,
        )
        await ws.send(codec.encode(start))
        await ws.wait_closed()
    assert ws.close_code is not None and ws.close_code != 1000
    assert "token" in (ws.close_reason or "")
    assert not gateway_state(gateway.app).calls
