"""The simulated carrier's dialects: what differs per carrier on the caller's side of a call.

:class:`~gateway.loadtest.caller.SimulatedCall` plays any carrier of :data:`DIALECTS`: the
webhook's form and signature, how the answer document names the stream, whether the upgrade
is signed, and the carrier-side codec (``TwilioCarrierCodec``, ``TelnyxCarrierCodec``,
``PlivoCarrierCodec``). Pure functions; the caller does the I/O.

The secret each dialect signs with is :attr:`CallOptions.auth_token`: Twilio's auth token,
SignalWire's signing key, Plivo's auth token, and for Telnyx the base64 32-byte Ed25519
*private* seed whose public key the gateway has as ``TELNYX_PUBLIC_KEY``.
"""

from __future__ import annotations

import base64
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urljoin, urlsplit, urlunsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.loadtest.carrier import CarrierSideCodec
from gateway.loadtest.flow import CallFailed
from gateway.telephony import plivo, telnyx
from gateway.telephony.messages import Connected
from gateway.telephony.plivo import PlivoCarrierCodec
from gateway.telephony.signature import sign
from gateway.telephony.telnyx import TelnyxCarrierCodec
from gateway.telephony.twilio import TwilioCarrierCodec

__all__ = ["DIALECTS", "Dialect", "dialect_named", "stream_from_twiml", "websocket_url"]

Form = dict[str, str]


@dataclass(frozen=True, slots=True)
class Dialect:
    """One carrier as the simulated caller speaks it."""

    name: str
    voice_path: str
    connected: Connected | None
    """The first frame of a stream (``None``: the carrier sends none)."""
    codec: Callable[[str], CarrierSideCodec]
    webhook_form: Callable[[str, str, str, str], Form]
    """``(call_sid, account_sid, from, to)`` -> the webhook's form fields."""
    sign_webhook: Callable[[str, str, Form, bytes], dict[str, str]]
    """``(secret, url, form, body)`` -> the signature headers."""
    sign_upgrade: Callable[[str, str], dict[str, str]]
    stream_from_answer: Callable[[str, str], tuple[str, dict[str, str]]]
    """``(answer, webhook_url)`` -> the media URL and the parameters ``start`` carries."""


def websocket_url(url: str) -> str:
    """``url`` with ``http``/``https`` turned into ``ws``/``wss`` (other schemes kept)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit(parts._replace(scheme=scheme))


def _absolute(url: str, webhook_url: str) -> str:
    if urlsplit(url).scheme:
        return url
    base = urlsplit(websocket_url(webhook_url))
    return urljoin(urlunsplit((base.scheme, base.netloc, base.path, "", "")), url)


def _root(text: str) -> ET.Element:
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise CallFailed("webhook_bad_twiml", f"{exc}: {text[:120]!r}") from None


def _refused(root: ET.Element, what: str) -> CallFailed:
    said = " ".join(t.strip() for t in root.itertext() if t.strip())
    return CallFailed("webhook_refused", f"answer without {what}: {said[:160]!r}")


def stream_from_twiml(text: str, webhook_url: str) -> tuple[str, dict[str, str]]:
    """The ``<Connect><Stream>`` URL and ``<Parameter>`` pairs of a TwiML (or TeXML) answer."""
    root = _root(text)
    stream = root.find("./Connect/Stream")
    if root.tag != "Response" or stream is None:
        raise _refused(root, "<Connect><Stream>")
    url = stream.get("url", "")
    if not url:
        raise CallFailed("webhook_bad_twiml", "<Stream> without a url")
    parameters = {
        p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter") if p.get("name")
    }
    return _absolute(url, webhook_url), parameters


def _stream_from_plivo_xml(text: str, webhook_url: str) -> tuple[str, dict[str, str]]:
    """Plivo's ``<Stream>url</Stream>``: the binding travels in the URL's query."""
    root = _root(text)
    stream = root.find("Stream")
    if root.tag != "Response" or stream is None or not (stream.text or "").strip():
        raise _refused(root, "<Stream>")
    if stream.get("bidirectional") != "true":
        raise CallFailed("webhook_bad_twiml", "<Stream> is not bidirectional")
    return _absolute((stream.text or "").strip(), webhook_url), {}


def _twilio_form(call_sid: str, account_sid: str, from_: str, to: str) -> Form:
    return {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": from_,
        "To": to,
    }


def _plivo_form(call_sid: str, account_sid: str, from_: str, to: str) -> Form:
    del account_sid
    return {
        "CallUUID": call_sid,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": from_,
        "To": to,
    }


def _twilio_signer(header: str) -> Callable[[str, str, Form, bytes], dict[str, str]]:
    def signer(secret: str, url: str, form: Form, body: bytes) -> dict[str, str]:
        del body
        return {header: sign(secret, url, form)}

    return signer


def _twilio_upgrade(header: str) -> Callable[[str, str], dict[str, str]]:
    return lambda secret, url: {header: sign(secret, url)}


def _telnyx_signer(secret: str, url: str, form: Form, body: bytes) -> dict[str, str]:
    del url, form
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(secret))
    return telnyx.sign_webhook(key, body, int(time.time()))


def _plivo_signer(secret: str, url: str, form: Form, body: bytes) -> dict[str, str]:
    del body
    return plivo.sign_v3(secret, url, form, uuid.uuid4().hex)


def _unsigned(secret: str, url: str) -> dict[str, str]:
    del secret, url
    return {}


DIALECTS: Final[dict[str, Dialect]] = {
    d.name: d
    for d in (
        Dialect(
            "twilio",
            "/twilio/voice",
            Connected("Call", "1.0.0"),
            TwilioCarrierCodec,
            _twilio_form,
            _twilio_signer("X-Twilio-Signature"),
            _twilio_upgrade("X-Twilio-Signature"),
            stream_from_twiml,
        ),
        Dialect(
            "signalwire",
            "/signalwire/voice",
            Connected("Call", "1.0.0"),
            TwilioCarrierCodec,
            _twilio_form,
            _twilio_signer("X-SignalWire-Signature"),
            _twilio_upgrade("X-SignalWire-Signature"),
            stream_from_twiml,
        ),
        Dialect(
            "telnyx",
            "/telnyx/voice",
            Connected("", "1.0.0"),
            TelnyxCarrierCodec,
            _twilio_form,  # TeXML webhooks carry Twilio's field names
            _telnyx_signer,
            _unsigned,
            stream_from_twiml,
        ),
        Dialect(
            "plivo",
            "/plivo/answer",
            None,
            PlivoCarrierCodec,
            _plivo_form,
            _plivo_signer,
            _unsigned,
            _stream_from_plivo_xml,
        ),
    )
}


def dialect_named(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown carrier {name!r}; known: {', '.join(DIALECTS)}") from None
