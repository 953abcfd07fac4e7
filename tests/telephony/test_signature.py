"""X-Twilio-Signature for the webhook and the media-stream upgrade, and public URL rebuilding."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.telephony.signature import (
    public_url,
    sign,
    validate_webhook,
    validate_websocket_upgrade,
)

TOKEN = "12345"
# Twilio's documented example (security/signature_validation in TwilioDevEd/api-snippets).
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675310",
    "Digits": "1234",
    "From": "+14158675310",
    "To": "+18005551212",
}
DOC_SIGNATURE = "GvWf1cFY/Q7PnoempGyD5oXAezc="


def test_twilio_documented_example_validates() -> None:
    assert sign(TOKEN, DOC_URL, DOC_PARAMS) == DOC_SIGNATURE
    assert validate_webhook(TOKEN, DOC_URL, DOC_PARAMS, DOC_SIGNATURE)


@pytest.mark.parametrize(
    ("token", "url", "params", "signature"),
    [
        ("wrong", DOC_URL, DOC_PARAMS, DOC_SIGNATURE),
        (TOKEN, DOC_URL.replace("foo=1", "foo=2"), DOC_PARAMS, DOC_SIGNATURE),
        (TOKEN, DOC_URL.replace("https", "http"), DOC_PARAMS, DOC_SIGNATURE),
        (TOKEN, DOC_URL, {**DOC_PARAMS, "Digits": "9"}, DOC_SIGNATURE),
        (TOKEN, DOC_URL, {**DOC_PARAMS, "Extra": ""}, DOC_SIGNATURE),
        (TOKEN, DOC_URL, DOC_PARAMS, ""),
        (TOKEN, DOC_URL, DOC_PARAMS, None),
        (TOKEN, DOC_URL, DOC_PARAMS, DOC_SIGNATURE[:-2]),
    ],
    ids=["token", "query", "scheme", "value", "extra", "empty", "missing", "truncated"],
)
def test_any_difference_invalidates(
    token: str, url: str, params: dict[str, str], signature: str | None
) -> None:
    assert not validate_webhook(token, url, params, signature)


def test_repeated_form_fields() -> None:
    params = {"To": "+1", "Tag": ["b", "a"]}
    signature = sign(TOKEN, "https://gw.example.com/v", params)
    assert validate_webhook(
        TOKEN, "https://gw.example.com/v", {"Tag": ["a", "b"], "To": "+1"}, signature
    )
    assert not validate_webhook(
        TOKEN, "https://gw.example.com/v", {"Tag": "a", "To": "+1"}, signature
    )


@pytest.mark.parametrize(
    ("signed", "checked"),
    [
        ("https://gw.example.com:443/twilio/voice", "https://gw.example.com/twilio/voice"),
        ("https://gw.example.com/twilio/voice", "https://gw.example.com:443/twilio/voice"),
        ("http://gw.example.com:80/twilio/voice", "http://gw.example.com/twilio/voice"),
    ],
)
def test_webhook_default_port_variants(signed: str, checked: str) -> None:
    assert validate_webhook(TOKEN, checked, DOC_PARAMS, sign(TOKEN, signed, DOC_PARAMS))


def test_a_non_default_port_must_match() -> None:
    signature = sign(TOKEN, "https://gw.example.com:8443/twilio/voice", DOC_PARAMS)
    assert not validate_webhook(TOKEN, "https://gw.example.com/twilio/voice", DOC_PARAMS, signature)
    assert validate_webhook(
        TOKEN, "https://gw.example.com:8443/twilio/voice", DOC_PARAMS, signature
    )


@pytest.mark.parametrize(
    ("signed", "checked", "ok"),
    [
        ("wss://gw.example.com/twilio/media", "wss://gw.example.com/twilio/media", True),
        ("wss://gw.example.com:443/twilio/media", "wss://gw.example.com/twilio/media", True),
        ("wss://gw.example.com/twilio/media", "wss://gw.example.com:443/twilio/media", True),
        ("ws://127.0.0.1:80/twilio/media", "ws://127.0.0.1/twilio/media", True),
        ("ws://[::1]:8080/twilio/media", "ws://[::1]:8080/twilio/media", True),
        ("wss://gw.example.com/twilio/media", "https://gw.example.com/twilio/media", False),
        ("wss://gw.example.com/twilio/media", "wss://gw.example.com/twilio/media2", False),
        ("wss://gw.example.com:8443/twilio/media", "wss://gw.example.com/twilio/media", False),
    ],
)
def test_websocket_upgrade(signed: str, checked: str, ok: bool) -> None:
    assert validate_websocket_upgrade(TOKEN, checked, sign(TOKEN, signed)) is ok


def test_websocket_upgrade_signs_with_no_parameters() -> None:
    url = "wss://gw.example.com/twilio/media"
    assert sign(TOKEN, url) == sign(TOKEN, url, {})
    assert not validate_websocket_upgrade(TOKEN, url, sign(TOKEN, url, {"a": "b"}))
    assert not validate_websocket_upgrade(TOKEN, url, None)


def test_an_empty_token_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError):
        validate_webhook("", DOC_URL, DOC_PARAMS, DOC_SIGNATURE)
    with pytest.raises(ConfigError):
        sign("", DOC_URL)


def test_shared_key_sha256_signatures() -> None:
    from twilio.request_validator import RequestValidator

    url = "https://gw.example.com/twilio/voice"
    signature = RequestValidator(TOKEN).compute_signature(url, DOC_PARAMS, "HMAC_SHA256")
    settings = "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"
    assert validate_webhook(TOKEN, url, DOC_PARAMS, signature, signature_settings=settings)
    assert not validate_webhook(TOKEN, url, DOC_PARAMS, signature)


# --- public URLs --------------------------------------------------------------------------------

INTERNAL = "http://10.0.0.5:8080/twilio/voice?x=1"


def test_public_base_wins_and_maps_to_wss_for_the_socket() -> None:
    assert (
        public_url(
            request_url=INTERNAL,
            public_base="https://pub.example.com/",
            path="/twilio/media",
            websocket=True,
        )
        == "wss://pub.example.com/twilio/media"
    )
    assert (
        public_url(request_url=INTERNAL, public_base="https://pub.example.com/gw", query="x=1")
        == "https://pub.example.com/gw/twilio/voice?x=1"
    )


def test_without_a_public_base_the_request_url_is_used() -> None:
    assert public_url(request_url=INTERNAL) == "http://10.0.0.5:8080/twilio/voice"
    assert public_url(request_url=INTERNAL, query="x=1") == INTERNAL


def test_websocket_request_urls_map_back_to_http_for_webhooks() -> None:
    assert (
        public_url(request_url="wss://gw.example.com/a", websocket=False)
        == "https://gw.example.com/a"
    )
    assert public_url(request_url="ws://127.0.0.1:9/a", websocket=True) == "ws://127.0.0.1:9/a"


def test_a_bad_public_base_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="public base URL"):
        public_url(request_url=INTERNAL, public_base="gw.example.com")


def test_round_trip_through_a_proxy() -> None:
    """What Twilio signs (public) is what the app rebuilds from its internal view."""
    public = "wss://gw.example.com/twilio/media"
    signature = sign(TOKEN, public)
    rebuilt = public_url(
        request_url="ws://10.0.0.5:8080/twilio/media",
        public_base="https://gw.example.com",
        websocket=True,
    )
    assert validate_websocket_upgrade(TOKEN, rebuilt, signature)
