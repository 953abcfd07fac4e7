"""Carriers behind one seam: what differs at the edge is a :class:`Carrier` value, not a branch.

The app (:mod:`gateway.app`) serves, for every carrier in :data:`CARRIERS`, a webhook route
(validate, admit, answer) and a media route (authorize, run the call). Everything a carrier does
its own way is a method of its :class:`Carrier`:

- :meth:`Carrier.check_webhook` / :meth:`Carrier.check_upgrade` — its request authentication,
  called only when its credential is configured (without one the loopback-only rule applies,
  as for Twilio);
- :meth:`Carrier.incoming_call` — the call id and numbers in its webhook's form;
- :meth:`Carrier.answer` / :meth:`Carrier.fallback` — its answer document (TwiML, TeXML, Plivo
  XML), with the stream bound to the admitted call by the parameters the app supplies;
- :meth:`Carrier.new_codec` — its media dialect, one :class:`CarrierCodec` per stream.

Pure: no I/O, no clock (the webhook check is given the wall-clock time). Adding a carrier is a
new module with one ``Carrier`` and one line in :data:`CARRIERS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol
from xml.sax.saxutils import escape, quoteattr

if TYPE_CHECKING:
    from gateway.numbers import Fallback
    from gateway.settings import Settings
    from gateway.telephony.messages import CarrierCodec

__all__ = [
    "CALL_SID_PARAM",
    "CALL_TOKEN_PARAM",
    "PROFILE_PARAM",
    "Answer",
    "Carrier",
    "IncomingCall",
    "SignedRequest",
    "StreamTarget",
    "carrier_named",
    "registry",
    "served",
    "unsigned_upgrade",
    "xml_element",
    "xml_parent",
]

CALL_TOKEN_PARAM: Final = "gateway_call_token"
PROFILE_PARAM: Final = "gateway_number"
CALL_SID_PARAM: Final = "gateway_call_sid"
"""The call id the webhook admitted, for dialects whose stream names the call differently."""


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """What a carrier's webhook says about a new call."""

    call_sid: str
    called: str | None
    caller: str | None


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A webhook as its signature sees it: the public ``url`` the carrier requested (query
    included), the raw ``body`` and its decoded ``form``, headers with lower-case names, and
    the wall-clock time ``now`` (for schemes with a replay window)."""

    url: str
    method: str
    headers: Mapping[str, str]
    body: bytes
    form: Mapping[str, Sequence[str]]
    now: float


@dataclass(frozen=True, slots=True)
class StreamTarget:
    """Where the carrier must open the media stream, and the parameters that bind it to the
    admitted call (the carrier hands them back in its ``start``, or in the URL it connects to).
    ``call_sid`` is the call as the webhook named it: a dialect whose stream names the call
    otherwise passes it on as :data:`CALL_SID_PARAM`."""

    url: str
    parameters: Mapping[str, str]
    call_sid: str


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer document and its content type."""

    body: str
    media_type: str = "application/xml"


class Carrier(Protocol):
    """One carrier's edge. Stateless: one value serves every call."""

    @property
    def name(self) -> str:
        """Lower-case id, as profiles and ``check-config`` spell it (``twilio``, ``telnyx``)."""
        ...

    @property
    def voice_path(self) -> str: ...

    @property
    def media_path(self) -> str: ...

    @property
    def credential_setting(self) -> str:
        """The environment variable holding what signs its requests (for messages)."""
        ...

    @property
    def auth_scheme(self) -> str:
        """How its requests are signed, in a few words (``check-config``)."""
        ...

    def credential(self, settings: Settings) -> str | None:
        """The secret or key its requests are checked with; ``None`` when not configured."""
        ...

    def check_webhook(self, credential: str, request: SignedRequest, settings: Settings) -> None:
        """Raise :class:`~gateway.errors.Forbidden` unless ``request`` is the carrier's."""
        ...

    def check_upgrade(self, credential: str, url: str, headers: Mapping[str, str]) -> None:
        """Raise :class:`~gateway.errors.Forbidden` unless the media upgrade to ``url`` (the
        public ``ws(s)://`` form, query included) may go on. Carriers that do not sign their
        upgrade let it through: the call token in ``start`` still has to bind it."""
        ...

    def incoming_call(self, form: Mapping[str, str]) -> IncomingCall:
        """The call in a webhook's form; raise ``ValueError`` naming what is missing."""
        ...

    def answer(self, target: StreamTarget, fallback: Fallback) -> Answer:
        """Stream the call to ``target``; when the stream ends, play ``fallback``."""
        ...

    def fallback(self, fallback: Fallback) -> Answer:
        """The fallback alone: the gateway is full."""
        ...

    def new_codec(self, settings: Settings, query: Mapping[str, str]) -> CarrierCodec:
        """The codec for one stream; ``query`` is the media URL's query string, decoded."""
        ...


def xml_element(tag: str, text: str | None = None, /, **attrs: str | None) -> str:
    """``<tag a="v">text</tag>`` with escaping (attributes whose value is ``None`` left out)."""
    rendered = "".join(f" {k}={quoteattr(v)}" for k, v in attrs.items() if v is not None)
    if text is None:
        return f"<{tag}{rendered}/>"
    return f"<{tag}{rendered}>{escape(text)}</{tag}>"


def xml_parent(tag: str, inner: str, /, **attrs: str | None) -> str:
    """``<tag a="v">inner</tag>`` where ``inner`` is XML already rendered."""
    rendered = "".join(f" {k}={quoteattr(v)}" for k, v in attrs.items() if v is not None)
    return f"<{tag}{rendered}>{inner}</{tag}>"


def unsigned_upgrade(credential: str, url: str, headers: Mapping[str, str]) -> None:
    """For carriers that do not sign the media upgrade: nothing to check here."""
    del credential, url, headers


def registry() -> dict[str, Carrier]:
    """Every carrier the gateway serves, by name (imported late: the dialects import this)."""
    from gateway.telephony.plivo import PLIVO
    from gateway.telephony.telnyx import TELNYX
    from gateway.telephony.twilio_carrier import SIGNALWIRE, TWILIO

    carriers: tuple[Carrier, ...] = (TWILIO, SIGNALWIRE, TELNYX, PLIVO)
    return {c.name: c for c in carriers}


def served(settings: Settings) -> dict[str, Carrier]:
    """The carriers whose routes this gateway serves: Twilio always, every other carrier whose
    credential is set or that ``GATEWAY_CARRIERS`` names. A carrier nobody configured has no
    routes at all, so a leftover ``GATEWAY_ALLOW_UNSIGNED`` cannot open one."""
    named = set(settings.carriers)
    return {
        name: c
        for name, c in registry().items()
        if name == "twilio" or name in named or c.credential(settings) is not None
    }


def carrier_named(name: str) -> Carrier:
    """The carrier called ``name``; raise ``KeyError`` listing the known ones."""
    carriers = registry()
    try:
        return carriers[name]
    except KeyError:
        raise KeyError(f"unknown carrier {name!r}; known: {', '.join(carriers)}") from None
