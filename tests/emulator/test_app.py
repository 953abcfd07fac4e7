"""The emulator's HTTP side on a loopback port: keys, the two call flows, errors, runtime faults,
hangup, the sessions listing and the event log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai.types.realtime.client_secret_create_response import ClientSecretCreateResponse
from pydantic import TypeAdapter

from gateway.emulator.app import _REFUSALS
from gateway.emulator.config import REFUSE_STATUSES, EmulatorConfig
from gateway.errors import UpstreamRefused
from gateway.realtime import events as rt
from gateway.realtime.session import RealtimeSession
from tests.emulator.emulator_support import KEY, SESSION, Recorder, running

pytestmark = pytest.mark.timeout(60)

OFFER = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_client_secret_mints_a_key_carrying_its_session() -> None:
    async with running() as emu, httpx.AsyncClient(base_url=emu.base_url) as http:
        body = {"expires_after": {"anchor": "created_at", "seconds": 60}, "session": SESSION}
        resp = await http.post("/realtime/client_secrets", json=body, headers=auth())
        assert resp.status_code == 200, resp.text
        minted = TypeAdapter(ClientSecretCreateResponse).validate_python(resp.json())
        assert minted.value.startswith("ek_")
        session = resp.json()["session"]
        assert session["id"].startswith("sess_") and session["object"] == "realtime.session"
        assert session["audio"]["output"]["voice"] == "cedar"
        # the key opens a call whose session is the one it was minted with
        s = RealtimeSession(emu.config(auth="ephemeral"), {"type": "realtime"})
        await s.open()
        try:
            [listed] = await emu.sessions()
            assert listed["session"]["audio"]["output"]["voice"] == "marin"  # the default
        finally:
            await s.close()
        # an ek_ key cannot mint more keys
        resp = await http.post("/realtime/client_secrets", json={}, headers=auth(minted.value))
        assert resp.status_code == 401


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"session": {"type": "realtime", "voice": "alloy"}}, "unknown_parameter", "session.voice"),
        ({"session": {"model": "gpt-realtime"}}, "missing_required_parameter", "session.type"),
        (
            {"expires_after": {"anchor": "now", "seconds": 60}},
            "invalid_value",
            "expires_after.anchor",
        ),
        ({"expires_after": {"seconds": 5}}, "invalid_value", "expires_after.seconds"),
        ({"ttl": 5}, "unknown_parameter", "ttl"),
    ],
)
async def test_client_secret_refuses_bad_requests(body: Any, code: str, param: str) -> None:
    async with running() as emu, httpx.AsyncClient(base_url=emu.base_url) as http:
        resp = await http.post("/realtime/client_secrets", json=body, headers=auth())
        assert resp.status_code == 400
        err = resp.json()["error"]
        assert (err["code"], err["param"], err["type"]) == (code, param, "invalid_request_error")


async def test_keys_are_checked() -> None:
    async with running() as emu, httpx.AsyncClient(base_url=emu.base_url) as http:
        for headers in ({}, auth("sk-wrong"), {"Authorization": "Basic abc"}):
            resp = await http.post(
                "/realtime/calls",
                content=OFFER,
                headers={**headers, "Content-Type": "application/sdp"},
            )
            assert resp.status_code == 401, headers
            assert resp.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")
            assert "sk-wrong" not in resp.text  # the key is never echoed whole
        resp = await http.post(
            "/realtime/calls",
            content=OFFER,
            headers={**auth("ek_unknown"), "Content-Type": "application/sdp"},
        )
        assert resp.status_code == 401


async def test_an_expired_ephemeral_key_is_refused() -> None:
    async with running() as emu, httpx.AsyncClient(base_url=emu.base_url) as http:
        resp = await http.post("/realtime/client_secrets", json={}, headers=auth())
        value = resp.json()["value"]
        emu.state.secrets[value].expires_at = 0.0  # as if its TTL had passed
        resp = await http.post(
            "/realtime/calls",
            content=OFFER,
            headers={**auth(value), "Content-Type": "application/sdp"},
        )
        assert resp.status_code == 401
        assert "expired" in resp.json()["error"]["message"]


async def test_without_a_configured_key_any_bearer_is_accepted() -> None:
    async with running(EmulatorConfig(api_key=None, latency_ms=50)) as emu:
        s = RealtimeSession(emu.config(api_key="anything-at-all"), SESSION)
        await s.open()
        await s.close()
        async with httpx.AsyncClient(base_url=emu.base_url) as http:
            resp = await http.post(
                "/realtime/calls", content=OFFER, headers={"Content-Type": "application/sdp"}
            )
            assert resp.status_code == 401  # but a bearer there must be


@pytest.mark.parametrize(
    ("content_type", "body", "code"),
    [
        ("application/sdp", "hello", "invalid_offer"),
        ("application/sdp", "v=0\r\nm=video 9 RTP/AVP 96\r\n", "invalid_offer"),
        ("application/sdp", OFFER, "invalid_offer"),  # no ICE or DTLS parameters
        ("text/plain", OFFER, "unsupported_content_type"),
    ],
)
async def test_bad_offers_are_refused_with_400(content_type: str, body: str, code: str) -> None:
    async with running() as emu, httpx.AsyncClient(base_url=emu.base_url) as http:
        resp = await http.post(
            "/realtime/calls", content=body, headers={**auth(), "Content-Type": content_type}
        )
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == code
        assert emu.state.calls == {}


async def test_a_bad_session_part_is_refused_with_the_ga_error() -> None:
    async with running() as emu, httpx.AsyncClient(base_url=emu.base_url) as http:
        for session, code in (
            ("{not json", "invalid_json"),
            (json.dumps({"type": "realtime", "turn_detection": None}), "unknown_parameter"),
            (json.dumps({"type": "realtime", "audio": {"output": {"speed": 3}}}), "invalid_value"),
        ):
            resp = await http.post(
                "/realtime/calls",
                files={
                    "sdp": (None, OFFER, "application/sdp"),
                    "session": (None, session, "application/json"),
                },
                headers=auth(),
            )
            assert resp.status_code == 400
            assert resp.json()["error"]["code"] == code


async def test_refusal_faults_refuse_the_first_calls_then_accept() -> None:
    async with running() as emu, httpx.AsyncClient(base_url=emu.server.url) as http:
        resp = await http.post("/emulator/faults", json={"refuse_status": 429, "refuse_count": 2})
        assert resp.status_code == 200
        for _ in range(2):
            with pytest.raises(UpstreamRefused) as refused:
                await RealtimeSession(emu.config(), SESSION).open()
            assert (refused.value.status, refused.value.code) == (429, "rate_limit_exceeded")
        s = RealtimeSession(emu.config(), SESSION)
        await s.open()
        await s.close()
        assert (await http.get("/emulator/faults")).json()["refused"] == 2
        for status, code in ((500, "server_error"), (401, "invalid_api_key")):
            await http.post("/emulator/faults", json={"refuse_status": status})
            with pytest.raises(UpstreamRefused) as refused:
                await RealtimeSession(emu.config(), SESSION).open()
            assert (refused.value.status, refused.value.code) == (status, code)
        resp = await http.post("/emulator/faults", json={"refuse_status": 418})
        assert resp.status_code == 400
        assert "refuse_status must be one of 400, 401" in resp.json()["error"]["message"]
        resp = await http.post("/emulator/faults", json={"explode": True})
        assert resp.status_code == 400
        assert "explode: Unexpected keyword argument" in resp.json()["error"]["message"]
        await http.post("/emulator/faults", json={})
        assert (await http.get("/emulator/faults")).json()["refuse_status"] is None


def test_every_refusable_status_has_an_error_body() -> None:
    assert sorted(_REFUSALS) == sorted(REFUSE_STATUSES)


async def test_refusal_configured_at_start() -> None:
    cfg = EmulatorConfig(api_key=KEY, refuse_status=503, refuse_count=1)
    async with running(cfg) as emu:
        with pytest.raises(UpstreamRefused) as refused:
            await RealtimeSession(emu.config(), SESSION).open()
        assert refused.value.status == 503
        s = RealtimeSession(emu.config(), SESSION)
        await s.open()
        await s.close()


async def test_hangup_ends_the_call() -> None:
    async with running() as emu:
        s = RealtimeSession(emu.config(), SESSION)
        await s.open()
        assert await s.hangup() is True
        [listed] = await emu.sessions()
        assert listed["state"] == "ended"
        assert listed["close_reason"] == "hung up via the API"
        assert listed["ended_at"] >= listed["created_at"]
        async with httpx.AsyncClient(base_url=emu.base_url) as http:
            resp = await http.post(f"/realtime/calls/{s.call_id}/hangup", headers=auth())
            assert resp.status_code == 404


async def test_event_log_records_both_directions(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    async with running(EmulatorConfig(api_key=KEY, latency_ms=50, event_log=log)) as emu:
        s = RealtimeSession(emu.config(), SESSION)
        await s.open()
        rec = Recorder(s)
        s.send(rt.response_cancel())
        await rec.wait_for("error")
        await s.close()
        await rec.aclose()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    got = [(r["direction"], r["event"]["type"]) for r in lines]
    assert got == [
        ("server", "session.created"),
        ("client", "session.update"),
        ("server", "session.updated"),
        ("client", "response.cancel"),
        ("server", "error"),
    ]
    assert {r["call_id"] for r in lines} == {s.call_id}
    assert all(isinstance(r["ts"], float) for r in lines)
