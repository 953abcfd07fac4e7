"""One exception tree for the whole gateway, with blame separated.

::

    GatewayError
    ├── ConfigError                 the operator's settings or profiles are wrong
    ├── CarrierError                the carrier (or whoever speaks for it) misbehaved
    │   ├── CarrierProtocolError    a message we cannot parse or that breaks the protocol
    │   │   ├── MessageTooLarge     a frame above the configured size limit
    │   │   └── StartTimeout        the stream never sent ``start``
    │   ├── UnsupportedMediaFormat  `start.mediaFormat` is not 8 kHz mono μ-law
    │   ├── AudioFormatError        a payload that is not whole samples / not valid audio
    │   ├── Forbidden               bad or missing signature, unknown call, expired token
    │   └── CarrierApiError         the carrier's REST API refused or failed a call-control request
    ├── UpstreamError               the Realtime service refused, failed or went away
    │   ├── UpstreamRefused         HTTP error on session creation (401, 429, 5xx, ...)
    │   ├── UpstreamTimeout         ICE, DTLS, data channel or session.updated never came
    │   ├── UpstreamLost            the peer or data channel closed mid-call
    │   ├── UpstreamRejected        an ``error`` event refused what we sent (e.g. session.update)
    │   └── UpstreamProtocolError   an event we cannot make sense of
    ├── CapacityError               admission control said no (full, draining, rate limited)
    └── InternalError               our own bug; never the caller's or carrier's fault

Code that catches decides by branch, never by message text. :func:`close_code_for` is the one
place that maps an exception to a websocket close code and an operator-readable reason.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """Websocket close codes the gateway sends to the carrier (RFC 6455 + private range)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    # private range: the upstream (Realtime) side failed; the carrier should play its fallback
    UPSTREAM_UNAVAILABLE = 4502


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """Settings or per-number profiles are invalid; the message names the field at fault."""


class CarrierError(GatewayError):
    """The carrier side sent something we cannot accept."""


class CarrierProtocolError(CarrierError):
    """A carrier message is malformed or out of protocol."""


class MessageTooLarge(CarrierProtocolError):
    """A carrier frame exceeds the configured maximum size."""


class StartTimeout(CarrierProtocolError):
    """A media stream opened but never sent ``start``: the remote side's fault, not ours."""


class UnsupportedMediaFormat(CarrierError):
    """The stream announces an audio format the gateway does not transcode."""


class AudioFormatError(CarrierError):
    """Audio bytes that are not a whole number of samples, or otherwise not usable audio."""


class Forbidden(CarrierError):
    """Authentication or authorization failed (signature, call binding, token)."""


class CarrierApiError(CarrierError):
    """A request to the carrier's REST API (hang up, transfer) failed. ``str()`` is written for
    the operator; decide by the properties, which each dialect's client fills in."""

    @property
    def call_gone(self) -> bool:
        """The carrier says the call has already ended (or never existed): a hang-up of it is
        moot, not a failure."""
        return False


class UpstreamError(GatewayError):
    """The Realtime service failed; ``code`` is its error code or HTTP status when known."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def retryable(self) -> bool:
        """Whether another setup attempt may succeed (a timeout, a lost peer: yes)."""
        return True


class UpstreamRefused(UpstreamError):
    """Session creation was refused over HTTP."""

    def __init__(self, message: str, *, status: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status

    @property
    def retryable(self) -> bool:
        """429 and 5xx may succeed on a later attempt; 4xx otherwise will not."""
        return self.status == 429 or self.status >= 500


class UpstreamCodecRefused(UpstreamError):
    """The answer has none of the audio codecs the offer asked for (a G.711 leg the service
    does not offer): every later attempt would be answered the same way."""

    @property
    def retryable(self) -> bool:
        return False


class UpstreamTimeout(UpstreamError):
    """A setup phase did not finish in time."""


class UpstreamLost(UpstreamError):
    """The upstream connection went away mid-call."""


class UpstreamRejected(UpstreamError):
    """The service answered one of our events with an ``error`` (``param`` names the field)."""

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message, code=code)
        self.param = param


class UpstreamProtocolError(UpstreamError):
    """The upstream sent something that breaks the protocol as we know it."""


class CapacityError(GatewayError):
    """Admission control refused a call."""


class InternalError(GatewayError):
    """A bug in the gateway itself."""


def close_code_for(exc: BaseException) -> tuple[CloseCode, str]:
    """Map an exception to the websocket close code and a short reason (<= 123 bytes)."""
    code: CloseCode
    if isinstance(exc, MessageTooLarge):
        code = CloseCode.MESSAGE_TOO_BIG
    elif isinstance(exc, Forbidden):
        code = CloseCode.POLICY_VIOLATION
    elif isinstance(exc, UnsupportedMediaFormat | AudioFormatError):
        code = CloseCode.UNSUPPORTED_DATA
    elif isinstance(exc, CarrierProtocolError):
        code = CloseCode.PROTOCOL_ERROR
    elif isinstance(exc, UpstreamError):
        code = CloseCode.UPSTREAM_UNAVAILABLE
    elif isinstance(exc, CapacityError):
        code = CloseCode.TRY_AGAIN_LATER
    else:
        code = CloseCode.INTERNAL_ERROR
    reason = str(exc) if isinstance(exc, GatewayError) else "internal error"
    return code, _truncate_utf8(reason or type(exc).__name__, 123)


def _truncate_utf8(text: str, limit: int) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", errors="ignore") + "..."
