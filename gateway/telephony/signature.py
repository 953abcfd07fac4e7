"""``X-Twilio-Signature``: validate the webhook and the media-stream upgrade, sign for tests.

Twilio signs the full URL it requested (plus, for form POSTs, every parameter name and value in
sorted order) with HMAC-SHA1 keyed by the account's Auth Token (PROTOCOLS.md B5). The HMAC is
the ``twilio`` library's :class:`~twilio.request_validator.RequestValidator`; this module only
decides *which* URL to check, which is where deployments go wrong:

- behind a TLS-terminating proxy the app sees ``http://10.0.0.5:8080/...`` while Twilio signed
  ``https://gw.example.com/...``: configure the public base URL (required with an auth token,
  except for loopback hosts); a trusted proxy's ``X-Forwarded-*`` headers are otherwise the
  only way the request URL changes (:mod:`gateway.proxies`);
- the media stream is signed as the ``wss://`` URL Twilio connected to, with no parameters;
- Twilio may or may not include the default port; both forms are accepted (the library does
  this for ``https`` only, so the ``wss``/``ws`` variants are tried here too).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from twilio.request_validator import RequestValidator, get_signature_algorithm

from gateway.errors import ConfigError

__all__ = [
    "public_url",
    "sign",
    "validate_webhook",
    "validate_websocket_upgrade",
]

Params = Mapping[str, str] | Mapping[str, Sequence[str]]
"""Form parameters: one value per name, or several (repeated form fields)."""

_TO_WS = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_TO_HTTP = {"ws": "http", "wss": "https", "http": "http", "https": "https"}
_DEFAULT_PORT = {"http": 80, "ws": 80, "https": 443, "wss": 443}


class _MultiParams:
    """The ``getlist`` shape RequestValidator understands for repeated parameters."""

    def __init__(self, params: Params) -> None:
        self._values: dict[str, list[str]] = {
            name: [value] if isinstance(value, str) else list(value)
            for name, value in params.items()
        }

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def getlist(self, name: str) -> list[str]:
        return self._values[name]


def _validator(auth_token: str) -> RequestValidator:
    if not auth_token:
        raise ConfigError("the Twilio auth token is empty: set TWILIO_AUTH_TOKEN or unset it")
    return RequestValidator(auth_token)


def _port_variants(url: str) -> list[str]:
    """``url`` as given, without its port, and with the scheme's default port."""
    parts = urlsplit(url)
    variants = [url]
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    default = _DEFAULT_PORT.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        return variants
    if port is not None and port == default:
        variants.append(urlunsplit(parts._replace(netloc=prefix + host)))
    elif port is None and default is not None:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}")))
    return variants


def validate_webhook(
    auth_token: str,
    url: str,
    params: Params,
    signature: str | None,
    *,
    signature_settings: str | None = None,
) -> bool:
    """Whether ``signature`` signs this form POST; answer 403 when it does not.

    ``url`` is the public URL Twilio requested, query string included (see :func:`public_url`);
    ``params`` the decoded form fields. ``signature_settings`` is the
    ``X-Twilio-Webhooks-Signature-Settings`` header when present (shared-key HMAC-SHA256).
    """
    if not signature:
        return False
    validator = _validator(auth_token)
    algorithm = get_signature_algorithm(signature_settings)
    form = _MultiParams(params)
    return any(
        bool(validator.validate(variant, form, signature, algorithm))
        for variant in _port_variants(url)
    )


def validate_websocket_upgrade(auth_token: str, url: str, signature: str | None) -> bool:
    """Whether ``signature`` signs the media-stream upgrade to ``url`` (the ``wss://`` form).

    Refuse the upgrade (close 1008 / HTTP 403) when it does not.
    """
    if not signature:
        return False
    validator = _validator(auth_token)
    return any(bool(validator.validate(variant, {}, signature)) for variant in _port_variants(url))


def sign(auth_token: str, url: str, params: Params | None = None) -> str:
    """The ``X-Twilio-Signature`` Twilio would send for ``url`` and ``params`` (tests, load)."""
    signature: str = _validator(auth_token).compute_signature(
        url, _MultiParams(params) if params else {}
    )
    return signature


def public_url(
    *,
    request_url: str,
    public_base: str | None = None,
    path: str | None = None,
    websocket: bool = False,
    query: str = "",
) -> str:
    """The URL as the carrier sees it, for signature checks and for the TwiML stream URL.

    Scheme and host come from ``public_base`` (``https://gw.example.com[/prefix]``) when set,
    otherwise from ``request_url`` (build it from :func:`gateway.proxies.resolve`, which decides
    whether proxy headers count). ``path`` (default: the request's) is appended to the base's
    path prefix, ``query`` (no ``?``) is appended if not empty, and the scheme maps to
    ``ws``/``wss`` when ``websocket`` is true, to ``http``/``https`` when not.
    """
    request = urlsplit(request_url)
    scheme, netloc, prefix = request.scheme, request.netloc, ""
    if public_base:
        base = urlsplit(public_base)
        if base.scheme not in _TO_WS or not base.netloc:
            raise ConfigError(
                f"public base URL {public_base!r} must be absolute http(s):// or ws(s)://"
            )
        scheme, netloc, prefix = base.scheme, base.netloc, base.path.rstrip("/")
    scheme = (_TO_WS if websocket else _TO_HTTP).get(scheme, scheme)
    full_path = prefix + (request.path if path is None else path)
    return urlunsplit((scheme, netloc, full_path or "/", query, ""))
