"""The simulated carrier's dialects: forms, signatures the gateway accepts, answer parsing."""

from __future__ import annotations

import base64
import time
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from gateway.loadtest.dialects import DIALECTS, dialect_named, stream_from_twiml
from gateway.loadtest.flow import CallFailed
from gateway.numbers import Fallback
from gateway.telephony import plivo, telnyx
from gateway.telephony.carriers import StreamTarget, registry
from gateway.telephony.signature import validate_webhook, validate_websocket_upgrade

pytestmark = pytest.mark.timeout(10)

WEBHOOK = "http://127.0.0.1:8080/x/voice"


def test_every_dialect_is_a_carrier_the_gateway_serves_on_the_same_route() -> None:
    carriers = registry()
    for name, dialect in DIALECTS.items():
        assert carriers[name].voice_path == dialect.voice_path
    with pytest.raises(ValueError, match="unknown carrier 'vonage'"):
        dialect_named("vonage")


@pytest.mark.parametrize("name", list(DIALECTS))
def test_each_dialect_reads_the_answer_the_gateway_writes(name: str) -> None:
    target = StreamTarget("ws://127.0.0.1:8080/m", {"gateway_call_token": "t"}, "C1")
    answer = registry()[name].answer(target, Fallback()).body
    url, params = dialect_named(name).stream_from_answer(answer, WEBHOOK)
    assert url.startswith("ws://127.0.0.1:8080/m")
    assert "gateway_call_token" in (params if name != "plivo" else url)


@pytest.mark.parametrize("name", list(DIALECTS))
def test_a_fallback_answer_is_a_refusal(name: str) -> None:
    answer = registry()[name].fallback(Fallback(message="Busy")).body
    with pytest.raises(CallFailed) as failed:
        dialect_named(name).stream_from_answer(answer, WEBHOOK)
    assert failed.value.reason == "webhook_refused"
    assert "Busy" in failed.value.detail


def test_relative_stream_urls_resolve_against_the_webhook() -> None:
    twiml = '<Response><Connect><Stream url="/twilio/media"/></Connect></Response>'
    assert stream_from_twiml(twiml, "https://gw.example.com/twilio/voice") == (
        "wss://gw.example.com/twilio/media",
        {},
    )


def test_signatures_are_ones_the_gateway_accepts() -> None:
    form = dialect_named("twilio").webhook_form("CA1", "AC1", "+1555", "+1666")
    body = urlencode(form).encode()
    for name in ("twilio", "signalwire"):
        headers = dialect_named(name).sign_webhook("secret", WEBHOOK, form, body)
        [sig] = headers.values()
        assert validate_webhook("secret", WEBHOOK, form, sig)
        [up] = dialect_named(name).sign_upgrade("secret", "ws://h/m").values()
        assert validate_websocket_upgrade("secret", "ws://h/m", up)
    key = Ed25519PrivateKey.generate()
    seed = base64.b64encode(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    headers = dialect_named("telnyx").sign_webhook(seed.decode(), WEBHOOK, form, body)
    telnyx.verify_webhook(
        public.decode(),
        body,
        headers["telnyx-signature-ed25519"],
        headers["telnyx-timestamp"],
        now=time.time(),
        tolerance_s=60,
    )
    pform = dialect_named("plivo").webhook_form("uuid-1", "", "+1555", "+1666")
    headers = dialect_named("plivo").sign_webhook("pl", WEBHOOK, pform, b"")
    assert plivo.validate_v3(
        "pl",
        WEBHOOK,
        headers["X-Plivo-Signature-V3-Nonce"],
        headers["X-Plivo-Signature-V3"],
        pform,
    )
    assert dialect_named("telnyx").sign_upgrade("x", "ws://h/m") == {}
