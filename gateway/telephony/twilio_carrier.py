"""Twilio, and SignalWire's Twilio-compatible cXML, as two carriers of one class.

Both answer with ``<Response><Connect><Stream url><Parameter/>...</Stream></Connect>`` followed
by the profile's fallback (run when the stream ends), speak the Twilio media dialect
(:class:`~gateway.telephony.twilio.TwilioCodec`) and sign requests with the Twilio scheme
(:mod:`gateway.telephony.signature`: HMAC-SHA1 over the URL and sorted form). They differ in
the key (Twilio's auth token, SignalWire's signing key) and the header (SignalWire sends
``X-SignalWire-Signature``, and ``X-Twilio-Signature`` for compatibility).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

from gateway.errors import Forbidden
from gateway.telephony import signature
from gateway.telephony.carriers import Answer, IncomingCall, SignedRequest, StreamTarget
from gateway.telephony.twilio import TwilioCodec

if TYPE_CHECKING:
    from gateway.numbers import Fallback
    from gateway.settings import Settings

__all__ = ["SIGNALWIRE", "TWILIO", "TwilioCompatible", "fallback_twiml", "stream_twiml"]


def _fallback(resp: VoiceResponse, fallback: Fallback) -> VoiceResponse:
    if fallback.number:
        resp.dial(fallback.number)
    else:
        resp.say(fallback.message)
        resp.hangup()
    return resp


def fallback_twiml(fallback: Fallback) -> str:
    """``<Dial>`` the fallback number, or ``<Say>`` the message and ``<Hangup/>``."""
    return str(_fallback(VoiceResponse(), fallback))


def stream_twiml(target: StreamTarget, fallback: Fallback) -> str:
    """``<Connect><Stream>`` with the binding parameters, then the fallback: Twilio runs what
    follows ``<Connect>`` only when the stream ends."""
    resp = VoiceResponse()
    connect = Connect()
    stream = Stream(url=target.url)
    for name, value in target.parameters.items():
        stream.parameter(name=name, value=value)
    connect.append(stream)
    resp.append(connect)
    return str(_fallback(resp, fallback))


@dataclass(frozen=True, slots=True)
class TwilioCompatible:
    """A carrier speaking Twilio's webhooks, TwiML and media streams."""

    name: str
    voice_path: str
    media_path: str
    credential_setting: str
    signature_headers: tuple[str, ...]
    """Headers holding the signature; the first present one is checked."""
    _credential: Callable[[Settings], str | None]
    upgrade_signed: bool = True
    """Whether the carrier signs its media upgrade; when not documented, an unsigned upgrade
    passes (its call token still has to bind it) and a signed one must be valid."""

    @property
    def auth_scheme(self) -> str:
        return f"{self.signature_headers[0]} (HMAC-SHA1, Twilio's scheme)"

    def credential(self, settings: Settings) -> str | None:
        return self._credential(settings)

    def _signature(self, headers: Mapping[str, str]) -> str:
        names = (h.lower() for h in self.signature_headers)
        return next((headers[h] for h in names if h in headers), "")

    def check_webhook(self, credential: str, request: SignedRequest, settings: Settings) -> None:
        del settings
        sig = self._signature(request.headers)
        if not signature.validate_webhook(credential, request.url, request.form, sig):
            raise Forbidden(
                f"{self.signature_headers[0]} does not match the webhook request "
                f"(checked against {request.url})"
            )

    def check_upgrade(self, credential: str, url: str, headers: Mapping[str, str]) -> None:
        if not self.upgrade_signed and not self._signature(headers):
            return
        if not signature.validate_websocket_upgrade(credential, url, self._signature(headers)):
            raise Forbidden(
                f"{self.signature_headers[0]} does not match the media stream upgrade "
                f"(checked against {url})"
            )

    def incoming_call(self, form: Mapping[str, str]) -> IncomingCall:
        call_sid = form.get("CallSid", "")
        if not call_sid:
            raise ValueError("missing CallSid")
        return IncomingCall(call_sid, form.get("To"), form.get("From"))

    def answer(self, target: StreamTarget, fallback: Fallback) -> Answer:
        return Answer(stream_twiml(target, fallback))

    def fallback(self, fallback: Fallback) -> Answer:
        return Answer(fallback_twiml(fallback))

    def new_codec(self, settings: Settings, query: Mapping[str, str]) -> TwilioCodec:
        del query  # Twilio forbids a query string on the stream URL: <Parameter> carries all
        return TwilioCodec(max_message_bytes=settings.max_message_bytes)


def _twilio_token(settings: Settings) -> str | None:
    token = settings.twilio_auth_token
    return None if token is None else token.get_secret_value()


def _signalwire_key(settings: Settings) -> str | None:
    key = settings.signalwire_signing_key
    return None if key is None else key.get_secret_value()


TWILIO = TwilioCompatible(
    name="twilio",
    voice_path="/twilio/voice",
    media_path="/twilio/media",
    credential_setting="TWILIO_AUTH_TOKEN",
    signature_headers=("X-Twilio-Signature",),
    _credential=_twilio_token,
)

SIGNALWIRE = TwilioCompatible(
    name="signalwire",
    voice_path="/signalwire/voice",
    media_path="/signalwire/media",
    credential_setting="SIGNALWIRE_SIGNING_KEY",
    signature_headers=("X-SignalWire-Signature", "X-Twilio-Signature"),
    _credential=_signalwire_key,
    upgrade_signed=False,  # SignalWire documents webhook signatures, not the upgrade's
)
