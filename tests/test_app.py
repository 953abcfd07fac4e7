"""The gateway's HTTP surface over a real loopback server: webhook TwiML, health, admin."""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

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


def _metric(text: str, result: str) -> float:
    line = f'gateway_webhooks_total{{result="{result}"}} '
    found = [ln for ln in text.splitlines() if ln.startswith(line)]
    return float(found[0][len(line) :]) if found else 0.0


async def test_a_replayed_signed_webhook_is_refused_after_the_token_expires() -> None:
    settings = support.settings(twilio_auth_token="s3cret", public_url="https://gw.example.com")
    app = create_app(settings, upstream=_no_upstream)
    state = gateway_state(app)
    now = [1_000_000.0]
    state.wall_clock = lambda: now[0]
    form = _form("CAcaptured")
    headers = {"X-Twilio-Signature": sign("s3cret", "https://gw.example.com/twilio/voice", form)}
    async with serve_app(app) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        first = await client.post("/twilio/voice", data=form, headers=headers)
        assert first.status_code == 200 and CALL_TOKEN_PARAM in first.text
        for later in (61.0, 3600.0, 23 * 3600.0):  # the token (60 s) is long gone
            now[0] = 1_000_000.0 + later
            replay = await client.post("/twilio/voice", data=form, headers=headers)
            assert replay.status_code == 403, later
            assert CALL_TOKEN_PARAM not in replay.text
        metrics = (await client.get("/metrics")).text
    assert _metric(metrics, "replayed") == 3.0
    assert _metric(metrics, "admitted") == 1.0
    assert state.admissions.load(now[0]) == 0


async def test_oversize_or_non_form_webhook_bodies_are_refused_before_parsing(
    server: RunningServer,
) -> None:
    # Anyone can send a body before the signature is checked: it must be capped, not parsed.
    big = {f"f{i}": "x" * 100_000 for i in range(3)}

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the cap still holds
        yield b"CallSid=CAbig&To=%2B15551230001&"
        for _ in range(40):
            yield b"pad=" + b"x" * 1000 + b"&"

    async with httpx.AsyncClient(base_url=server.url) as client:
        declared = await client.post("/twilio/voice", data=big)
        streamed = await client.post(
            "/twilio/voice",
            content=chunked(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        multipart = await client.post(
            "/twilio/voice", data=_form("CAm"), files={"f": ("a.bin", b"x" * 10)}
        )
        as_json = await client.post("/twilio/voice", json=_form("CAj"))
        fine = await client.post("/twilio/voice", data={**_form("CAok"), "pad": "x" * 8000})
        metrics = (await client.get("/metrics")).text
    assert declared.status_code == 413 and streamed.status_code == 413
    assert multipart.status_code == 415 and as_json.status_code == 415
    assert fine.status_code == 200 and CALL_TOKEN_PARAM in fine.text
    assert _metric(metrics, "too_large") == 2.0
    assert _metric(metrics, "unsupported_media_type") == 2.0
    assert _metric(metrics, "admitted") == 1.0


async def test_repeated_form_fields_are_all_signed() -> None:
    settings = support.settings(twilio_auth_token="s3cret", public_url="https://gw.example.com")
    app = create_app(settings, upstream=_no_upstream)
    form = {**_form("CArep"), "StirVerstat": ["a", "b"]}
    url = "https://gw.example.com/twilio/voice"
    async with serve_app(app) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        ok = await client.post(
            "/twilio/voice", data=form, headers={"X-Twilio-Signature": sign("s3cret", url, form)}
        )
    assert ok.status_code == 200


async def test_with_a_token_and_no_public_url_a_foreign_host_is_refused() -> None:
    # Signed for the host the request names: without GATEWAY_PUBLIC_URL the gateway must not
    # check against that host, nor point the stream at it.
    app = create_app(support.settings(twilio_auth_token="s3cret"), upstream=_no_upstream)
    form = _form("CAhost")
    evil = {
        "Host": "evil.example.com",
        "X-Twilio-Signature": sign("s3cret", "http://evil.example.com/twilio/voice", form),
    }
    async with serve_app(app) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        r = await client.post("/twilio/voice", data=form, headers=evil)
        assert r.status_code == 403 and "evil.example.com" not in r.text
        local = f"http://127.0.0.1:{srv.port}/twilio/voice"
        ok = await client.post(
            "/twilio/voice", data=form, headers={"X-Twilio-Signature": sign("s3cret", local, form)}
        )
    assert ok.status_code == 200
    assert f'url="ws://127.0.0.1:{srv.port}/twilio/media"' in ok.text


async def test_proxy_headers_from_an_untrusted_peer_change_nothing(server: RunningServer) -> None:
    spoofed = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example.com",
        "X-Forwarded-For": "203.0.113.9",
        "Forwarded": "for=203.0.113.9;proto=https;host=evil.example.com",
    }
    async with httpx.AsyncClient(base_url=server.url) as client:
        r = await client.post("/twilio/voice", data=_form("CAspoof"), headers=spoofed)
    # still the loopback client it is (admitted unsigned), and the stream URL is unchanged
    assert r.status_code == 200
    assert f'url="ws://127.0.0.1:{server.port}/twilio/media"' in r.text


async def test_a_trusted_proxy_speaks_for_its_client() -> None:
    settings = support.settings(trusted_proxies=["127.0.0.1"])
    app = create_app(settings, upstream=_no_upstream)
    async with serve_app(app) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        local = await client.post(
            "/twilio/voice",
            data=_form("CAlocal"),
            headers={"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "https"},
        )
        remote = await client.post(
            "/twilio/voice", data=_form("CAremote"), headers={"X-Forwarded-For": "203.0.113.9"}
        )
    assert local.status_code == 200
    assert f'url="wss://127.0.0.1:{srv.port}/twilio/media"' in local.text
    assert remote.status_code == 403  # unsigned from outside loopback, as the proxy says


async def test_a_real_key_without_a_carrier_token_refuses_unsigned_requests() -> None:
    # Behind a reverse proxy on the same host every request comes from loopback: with calls
    # that cost money, loopback alone must not let anyone in.
    app = create_app(support.settings(openai_api_key="sk-real"), upstream=_no_upstream)
    async with serve_app(app) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        r = await client.post("/twilio/voice", data=_form("CAnokey"))
        with pytest.raises(InvalidStatus) as refused:
            async with connect(srv.ws_url + "/twilio/media"):
                pass
        metrics = (await client.get("/metrics")).text
    assert r.status_code == 403 and CALL_TOKEN_PARAM not in r.text
    assert refused.value.response.status_code == 403
    assert _metric(metrics, "forbidden") == 1.0


async def test_the_development_switch_lets_unsigned_requests_in() -> None:
    settings = support.settings(openai_api_key="sk-real", allow_unsigned=True)
    app = create_app(settings, upstream=_no_upstream)
    async with serve_app(app) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        r = await client.post("/twilio/voice", data=_form("CAdev"))
    assert r.status_code == 200 and CALL_TOKEN_PARAM in r.text


def test_the_carrier_mode_follows_key_token_and_switch() -> None:
    assert support.settings().carrier_auth == "loopback"
    assert support.settings(openai_api_key="k").carrier_auth == "refused"
    assert support.settings(openai_api_key="k", allow_unsigned=True).carrier_auth == "unsigned"
    signed = support.settings(
        openai_api_key="k", allow_unsigned=True, twilio_auth_token="tw-s3cret"
    )
    assert signed.carrier_auth == "signed"
    summary, problems = signed.carrier_auth_report()
    assert "GATEWAY_PUBLIC_URL is unset" in summary and len(problems) == 2
    assert "tw-s3cret" not in " ".join([summary, *problems])


async def test_a_signature_mismatch_logs_the_url_it_was_checked_against(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = support.settings(twilio_auth_token="s3cret", public_url="https://gw.example.com/gw")
    app = create_app(settings, upstream=_no_upstream)
    form = _form("CAmismatch")
    wrong = sign("s3cret", "https://gw.example.com/twilio/voice", form)  # the prefix is missing
    with caplog.at_level(logging.WARNING, logger="gateway.app"):
        async with serve_app(app) as srv, httpx.AsyncClient(base_url=srv.url) as client:
            r = await client.post("/twilio/voice", data=form, headers={"X-Twilio-Signature": wrong})
    assert r.status_code == 403
    said = " ".join(rec.getMessage() for rec in caplog.records)
    assert "checked against https://gw.example.com/gw/twilio/voice" in said
    assert "s3cret" not in said


async def test_a_webhook_without_to_is_admitted_on_the_default_and_logged_in_words(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.app"):
        async with httpx.AsyncClient(base_url=server.url) as client:
            r = await client.post("/twilio/voice", data={"CallSid": "CAnoto", "From": "+1555"})
    assert r.status_code == 200 and "<Stream" in r.text
    said = " ".join(rec.getMessage() for rec in caplog.records if "CAnoto" in rec.getMessage())
    assert "admitted for an unnamed number" in said and "None" not in said


async def test_setups_over_the_rate_wait_their_turn_in_order_and_the_rest_get_the_fallback(
    tmp_path: Path,
) -> None:
    """Ten webhooks at once under 2 setups/s with 1 s of queue: two are answered at once, the
    next two in turn, 0.5 s apart (their streams, so their setups, follow), the other six get
    the fallback without waiting."""
    settings = support.settings(max_calls=20, max_setup_rate=2.0, setup_queue_s=1.0)
    app = create_app(settings, upstream=_no_upstream)
    async with serve_app(app) as srv, httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
        loop = asyncio.get_running_loop()
        sent = loop.time()

        async def call(i: int) -> tuple[bool, float]:
            r = await client.post("/twilio/voice", data=_form(f"CAq{i}"))
            return "<Connect>" in r.text, loop.time() - sent

        answers = await asyncio.gather(*(call(i) for i in range(10)))
        metrics = (await client.get("/metrics")).text
    connected = sorted(at for ok, at in answers if ok)
    refused = [at for ok, at in answers if not ok]
    assert len(connected) == 4
    assert len(refused) == 6 and max(refused) < 1.0  # refused at once, not after the queue
    for turn, at in enumerate(connected[2:], start=1):
        assert at >= turn * 0.5 - 0.05, f"queued call {turn} answered before its turn"
    assert 'gateway_webhooks_total{result="refused_capacity"} 6.0' in metrics
    assert "gateway_setup_queue_seconds_count 4.0" in metrics
