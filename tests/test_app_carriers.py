"""Every carrier's webhook route over a real loopback server: answer document, binding,
signatures (valid, tampered, expired), the profile's carrier, the fallback when full."""

from __future__ import annotations

import base64
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.app import create_app
from gateway.bridge.call import UpstreamSession
from gateway.numbers import Profile
from gateway.serving import RunningServer, serve_app
from gateway.telephony import plivo, telnyx
from gateway.telephony.carriers import CALL_SID_PARAM, CALL_TOKEN_PARAM, registry
from gateway.telephony.signature import sign
from tests import support

pytestmark = pytest.mark.timeout(30)

PROFILES = """
numbers:
  "+15551230001":
    carrier: telnyx
  "+15551230002":
    fallback: {message: "All lines are busy."}
"""
KEY = Ed25519PrivateKey.generate()
PUBLIC = base64.b64encode(KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
FORMS = {
    "twilio": {"CallSid": "CA1", "AccountSid": "AC1", "From": "+15550009999", "To": "+1555"},
    "signalwire": {"CallSid": "sw-1", "AccountSid": "p1", "From": "+15550009999", "To": "+1555"},
    "telnyx": {"CallSid": "v3:tx1", "AccountSid": "a", "From": "+15550009999", "To": "+1555"},
    "plivo": {"CallUUID": "pl-1", "From": "+15550009999", "To": "+1555", "Direction": "inbound"},
}


def _no_upstream(_profile: Profile) -> UpstreamSession:
    raise AssertionError("a webhook must never open an upstream session")


@pytest.fixture
def settings_fields() -> dict[str, Any]:
    return {"carriers": ["signalwire", "telnyx", "plivo"]}  # served without their credentials


@pytest.fixture
async def server(tmp_path: Path, settings_fields: dict[str, Any]) -> AsyncIterator[RunningServer]:
    path = tmp_path / "profiles.yaml"
    path.write_text(PROFILES)
    settings = support.settings(max_calls=2, profiles_file=path, **settings_fields)
    async with serve_app(create_app(settings, upstream=_no_upstream)) as srv:
        yield srv


async def _post(
    server: RunningServer, path: str, form: dict[str, str], headers: dict[str, str] | None = None
) -> httpx.Response:
    body = urlencode(form).encode()
    async with httpx.AsyncClient(base_url=server.url) as client:
        return await client.post(
            path,
            content=body,
            headers={"content-type": "application/x-www-form-urlencoded", **(headers or {})},
        )


def _stream_binding(name: str, text: str) -> tuple[str, dict[str, str]]:
    """The stream URL and the binding parameters of a carrier's answer."""
    root = ET.fromstring(text)
    if name == "plivo":
        stream = root.find("Stream")
        assert stream is not None and stream.text
        url = urlsplit(stream.text)
        return url._replace(query="").geturl(), {k: v[0] for k, v in parse_qs(url.query).items()}
    stream = root.find("./Connect/Stream")
    assert stream is not None
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return stream.get("url", ""), params


@pytest.mark.parametrize("name", ["twilio", "signalwire", "telnyx", "plivo"])
async def test_each_carrier_answers_its_document_bound_to_the_admitted_call(
    server: RunningServer, name: str
) -> None:
    carrier = registry()[name]
    r = await _post(server, carrier.voice_path, FORMS[name])
    assert r.status_code == 200, r.text
    url, params = _stream_binding(name, r.text)
    assert url == f"ws://127.0.0.1:{server.port}{carrier.media_path}"
    assert params[CALL_TOKEN_PARAM]
    assert params["gateway_number"] == "+1555"
    if name in ("telnyx", "plivo"):  # their streams name the call otherwise
        assert params[CALL_SID_PARAM] == FORMS[name].get("CallSid", FORMS[name].get("CallUUID"))
    else:
        assert CALL_SID_PARAM not in params


@pytest.mark.parametrize("name", ["twilio", "signalwire", "telnyx", "plivo"])
async def test_a_webhook_without_its_call_id_is_a_bad_request(
    server: RunningServer, name: str
) -> None:
    form = {k: v for k, v in FORMS[name].items() if k not in ("CallSid", "CallUUID")}
    r = await _post(server, registry()[name].voice_path, form)
    assert r.status_code == 400


@pytest.mark.parametrize("settings_fields", [{"allow_unsigned": True}])
async def test_a_carrier_nobody_configured_has_no_routes(server: RunningServer) -> None:
    # Twilio only (no other credential, GATEWAY_CARRIERS empty): even with unsigned requests
    # allowed, the other carriers' doors do not exist.
    for name in ("signalwire", "telnyx", "plivo"):
        assert (await _post(server, registry()[name].voice_path, FORMS[name])).status_code == 404
    assert (await _post(server, "/twilio/voice", FORMS["twilio"])).status_code == 200


async def test_a_number_of_another_carrier_is_refused_on_this_route(server: RunningServer) -> None:
    form = {**FORMS["twilio"], "To": "+15551230001"}  # its profile says telnyx
    assert (await _post(server, "/twilio/voice", form)).status_code == 403
    form = {**FORMS["telnyx"], "To": "+15551230001"}
    assert (await _post(server, "/telnyx/voice", form)).status_code == 200


@pytest.mark.parametrize("name", ["telnyx", "plivo", "signalwire"])
async def test_when_full_the_fallback_comes_in_the_carriers_format(
    server: RunningServer, name: str
) -> None:
    path = registry()[name].voice_path
    for i in range(2):
        form = {**FORMS[name], "To": "+15551230002"}
        form["CallUUID" if name == "plivo" else "CallSid"] = f"full-{i}"
        assert (await _post(server, path, form)).status_code == 200
    form = {**FORMS[name], "To": "+15551230002"}
    form["CallUUID" if name == "plivo" else "CallSid"] = "one-too-many"
    r = await _post(server, path, form)
    assert r.status_code == 200
    root = ET.fromstring(r.text)
    assert root.find(".//Stream") is None
    said = root.findtext("Speak" if name == "plivo" else "Say")
    assert said == "All lines are busy."


# --- signatures -------------------------------------------------------------------------------


@pytest.mark.parametrize("settings_fields", [{"telnyx_public_key": PUBLIC}])
async def test_telnyx_webhook_needs_a_fresh_ed25519_signature(server: RunningServer) -> None:
    form = FORMS["telnyx"]
    body = urlencode(form).encode()
    now = int(time.time())

    async def post(headers: dict[str, str], content: bytes = body) -> int:
        async with httpx.AsyncClient(base_url=server.url) as client:
            r = await client.post(
                "/telnyx/voice",
                content=content,
                headers={"content-type": "application/x-www-form-urlencoded", **headers},
            )
        return r.status_code

    assert await post({}) == 403
    assert await post(telnyx.sign_webhook(KEY, body, now), body.replace(b"1555", b"1556")) == 403
    assert await post(telnyx.sign_webhook(KEY, body, now - 3600)) == 403  # expired
    assert await post(telnyx.sign_webhook(Ed25519PrivateKey.generate(), body, now)) == 403
    assert await post(telnyx.sign_webhook(KEY, body, now)) == 200
    # other carriers keep their own rule (no credential: loopback clients only)
    assert (await _post(server, "/twilio/voice", FORMS["twilio"])).status_code == 200


@pytest.mark.parametrize("settings_fields", [{"plivo_auth_token": "pl-secret"}])
async def test_plivo_webhook_needs_a_v3_signature(server: RunningServer) -> None:
    url = f"{server.url}/plivo/answer"
    form = FORMS["plivo"]
    assert (await _post(server, "/plivo/answer", form)).status_code == 403
    forged = plivo.sign_v3("wrong", url, form, "n1")
    assert (await _post(server, "/plivo/answer", form, forged)).status_code == 403
    tampered = {**form, "To": "+1556"}
    signed = plivo.sign_v3("pl-secret", url, form, "n1")
    assert (await _post(server, "/plivo/answer", tampered, signed)).status_code == 403
    assert (await _post(server, "/plivo/answer", form, signed)).status_code == 200


@pytest.mark.parametrize("settings_fields", [{"signalwire_signing_key": "sw-key"}])
async def test_signalwire_webhook_needs_its_twilio_compatible_signature(
    server: RunningServer,
) -> None:
    url = f"{server.url}/signalwire/voice"
    form = FORMS["signalwire"]

    def header(key: str) -> dict[str, str]:
        return {"X-SignalWire-Signature": sign(key, url, form)}

    assert (await _post(server, "/signalwire/voice", form)).status_code == 403
    assert (await _post(server, "/signalwire/voice", form, header("wrong"))).status_code == 403
    assert (await _post(server, "/signalwire/voice", form, header("sw-key"))).status_code == 200
    # the compatibility header is accepted too
    compat = {"X-Twilio-Signature": sign("sw-key", url, {**form, "CallSid": "sw-2"})}
    ok = await _post(server, "/signalwire/voice", {**form, "CallSid": "sw-2"}, compat)
    assert ok.status_code == 200
