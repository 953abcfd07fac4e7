"""The carrier seam: the registry, and the Twilio-compatible carriers (Twilio, SignalWire)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from gateway.errors import Forbidden
from gateway.numbers import Fallback
from gateway.telephony.carriers import (
    StreamTarget,
    carrier_named,
    registry,
    xml_element,
    xml_parent,
)
from gateway.telephony.signature import sign
from gateway.telephony.twilio import TwilioCodec
from gateway.telephony.twilio_carrier import SIGNALWIRE, TWILIO
from tests import support

pytestmark = pytest.mark.timeout(10)


def test_every_carrier_has_its_own_routes() -> None:
    carriers = registry()
    assert list(carriers) == ["twilio", "signalwire", "telnyx", "plivo"]
    paths = [p for c in carriers.values() for p in (c.voice_path, c.media_path)]
    assert len(paths) == len(set(paths))
    assert all(p.startswith(f"/{name}/") for name, c in carriers.items() for p in (c.voice_path,))
    with pytest.raises(KeyError, match="known: twilio, signalwire"):
        carrier_named("vonage")


def test_each_carrier_reads_its_own_credential() -> None:
    settings = support.settings(
        twilio_auth_token="tw", signalwire_signing_key="sw", plivo_auth_token="pl"
    )
    assert {n: c.credential(settings) for n, c in registry().items()} == {
        "twilio": "tw",
        "signalwire": "sw",
        "telnyx": None,
        "plivo": "pl",
    }


def test_xml_helpers_escape() -> None:
    assert xml_element("Say", "a < b & c") == "<Say>a &lt; b &amp; c</Say>"
    assert xml_element("P", name='x"y', value=None) == "<P name='x\"y'/>"
    assert xml_parent("R", "<A/>", k="v") == '<R k="v"><A/></R>'


def test_signalwire_answers_the_same_cxml_as_twilios_twiml() -> None:
    target = StreamTarget("wss://gw/x/media", {"gateway_call_token": "t"}, "CA1")
    fallback = Fallback(message="Sorry")
    assert SIGNALWIRE.answer(target, fallback) == TWILIO.answer(target, fallback)
    root = ET.fromstring(TWILIO.answer(target, fallback).body)
    stream = root.find("./Connect/Stream")
    assert stream is not None and stream.get("url") == "wss://gw/x/media"
    assert isinstance(SIGNALWIRE.new_codec(support.settings(), {"q": "1"}), TwilioCodec)


def test_signalwire_upgrade_may_be_unsigned_but_not_badly_signed() -> None:
    url = "wss://gw.example.com/signalwire/media"
    SIGNALWIRE.check_upgrade("key", url, {})
    SIGNALWIRE.check_upgrade("key", url, {"x-signalwire-signature": sign("key", url)})
    with pytest.raises(Forbidden, match="X-SignalWire-Signature"):
        SIGNALWIRE.check_upgrade("key", url, {"x-signalwire-signature": "forged"})
    # Twilio signs every upgrade: an unsigned one is refused
    with pytest.raises(Forbidden, match="X-Twilio-Signature"):
        TWILIO.check_upgrade("key", url, {})
