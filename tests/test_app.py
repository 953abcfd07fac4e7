"""The gateway's HTTP surface over a real loopback server: webhook TwiML, health, admin."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.app import CALL_TOKEN_PARAM, create_app, gateway_state
from gateway.bridge.call import UpstreamSession
from gateway.numbers import Profile, ProfileStore
from gateway.serving import RunningServer, serve_app
from gateway.telephony.signature import sign
from tests import support

PROFILES = """
numbers:
  "+15551230001":
    voice: cedar
    fallback: {number: "+15557654321"}
"""


def _no_upstream(_profile: Profile) -> UpstreamSession:
    raise AssertionError("the webhook must never open an upstream session")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    path = tmp_path / "profiles.yaml"
    path.write_text(PROFILES)
    settings = support.settings(max_calls=2, admin_token="adm1n", profiles_file=path)
    app = create_app(settings, upstream=_no_upstream)
    async with serve_app(app) as srv:
        yield srv


def _form(call_sid: str, to: str = "+15551230001") -> dict[str, str]:
    return {"CallSid": call_sid, "AccountSid": "AC1", "From": "+15550009999", "To": to}


async def test_webhook_answers_connect_stream_with_binding_and_fallback(
    server: RunningServer,
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        r = await client.post("/twilio/voice", data=_form("CA1"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(r.text)
    stream = root.find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url") == f"ws://127.0.0.1:{server.port}/twilio/media"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params[CALL_TOKEN_PARAM]
    assert params["gateway_number"] == "+15551230001"
    # the fallback follows <Connect>: this number dials a person
    children = [c.tag for c in root]
    assert children == ["Connect", "Dial"]
    assert root.findtext("Dial") == "+15557654321"


async def test_unknown_number_gets_default_profile_fallback(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        r = await client.post("/twilio/voice", data=_form("CA2", to="+19990000000"))
    root = ET.fromstring(r.text)
    assert [c.tag for c in root] == ["Connect", "Say", "Hangup"]


async def test_capacity_answers_fallback_and_readyz_503(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/readyz")).status_code == 200
        for sid in ("CA1", "CA2"):
            assert "<Connect>" in (await client.post("/twilio/voice", data=_form(sid))).text
        full = await client.post("/twilio/voice", data=_form("CA3"))
        assert "<Connect>" not in full.text and "<Dial>" in full.text
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert 'gateway_webhooks_total{result="refused_capacity"} 1.0' in metrics
    assert 'gateway_webhooks_total{result="admitted"} 2.0' in metrics


async def test_missing_call_sid_is_400(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        r = await client.post("/twilio/voice", data={"To": "+15551230001"})
    assert r.status_code == 400


async def test_signed_webhook_required_when_token_set() -> None:
    settings = support.settings(twilio_auth_token="s3cret", public_url="https://gw.example.com")
    app = create_app(settings, upstream=_no_upstream)
    async with serve_app(app) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        form = _form("CA9")
        unsigned = await client.post("/twilio/voice", data=form)
        assert unsigned.status_code == 403
        forged = await client.post(
            "/twilio/voice", data=form, headers={"X-Twilio-Signature": sign("nope", "x", form)}
        )
        assert forged.status_code == 403
        good_sig = sign("s3cret", "https://gw.example.com/twilio/voice", form)
        ok = await client.post("/twilio/voice", data=form, headers={"X-Twilio-Signature": good_sig})
        assert ok.status_code == 200
        assert 'url="wss://gw.example.com/twilio/media"' in ok.text
        assert gateway_state(app).admissions.load(0.0) <= 1


async def test_admin_requires_token_and_reloads(server: RunningServer, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.post("/admin/reload")).status_code == 401
        bad = await client.post("/admin/reload", headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401
        ok = await client.post("/admin/reload", headers={"Authorization": "Bearer adm1n"})
        assert ok.status_code == 200 and ok.json()["numbers"] == ["+15551230001"]
        calls = await client.get("/admin/calls", headers={"Authorization": "Bearer adm1n"})
        assert calls.json() == {"calls": [], "recent": []}


async def test_admin_reload_refuses_invalid_file_and_keeps_profiles(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PROFILES)
    store = ProfileStore(path)
    app = create_app(
        support.settings(admin_token="t", profiles_file=path), upstream=_no_upstream, profiles=store
    )
    async with serve_app(app) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        path.write_text(PROFILES.replace("cedar", "robot"))
        r = await client.post("/admin/reload", headers={"Authorization": "Bearer t"})
        assert r.status_code == 422 and "voice" in r.json()["error"]
    assert store.for_number("+15551230001").voice == "cedar"


async def test_admin_off_without_token() -> None:
    app = create_app(support.settings(), upstream=_no_upstream)
    async with serve_app(app) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        assert (await client.post("/admin/reload")).status_code == 404
