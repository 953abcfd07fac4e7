"""Process settings, read once from the environment and ``.env`` at start-up.

Every setting is a field below; ``.env.example`` documents each one (a test keeps them in sync).
Per-number behaviour does not live here: it is in the profiles file (:mod:`gateway.numbers`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.audio.format import UpstreamCodec
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.proxies import Network

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"

CarrierAuth = Literal["signed", "unsigned", "loopback", "refused"]
"""Which carrier requests are accepted:

- ``signed``: ``TWILIO_AUTH_TOKEN`` is set; a valid ``X-Twilio-Signature`` is required;
- ``refused``: a real ``OPENAI_API_KEY`` and no token: none (behind a reverse proxy on the same
  host every request comes from loopback, so loopback proves nothing where calls cost money);
- ``loopback``: neither key nor token (embedded emulator, demo, tests): unsigned, loopback only;
- ``unsigned``: no token and ``GATEWAY_ALLOW_UNSIGNED=true``: unsigned from anywhere
  (development, load tests), logged on every request.
"""


class Settings(BaseSettings):
    """The gateway's process-wide configuration. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # `GATEWAY_ADMIN_TOKEN=` in a .env means "not set", never "the empty token"
        env_ignore_empty=True,
        frozen=True,
        populate_by_name=True,
    )

    # --- upstream (OpenAI Realtime) -------------------------------------------------------
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "GATEWAY_OPENAI_API_KEY")
    )
    realtime_base_url: str | None = Field(
        default=None,
        description="Realtime API base URL; unset with no API key means the embedded emulator.",
    )
    realtime_auth: Literal["unified", "ephemeral"] = "unified"
    ice_servers: list[str] = Field(
        default_factory=list,
        description="STUN/TURN URLs for the upstream peer connection; empty means host candidates",
    )
    ice_username: str | None = None
    ice_credential: SecretStr | None = None
    setup_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # The longest wait for a missing model-audio packet; in-order audio is never held.
    receive_buffer_ms: int = Field(default=40, ge=0, le=160)
    upstream_codec: UpstreamCodec = Field(
        default="opus",
        description=(
            "Audio codec on the Realtime leg for profiles that do not set one: opus transcodes; "
            "pcmu/pcma pass the call's G.711 through (less CPU and delay, phone quality)"
        ),
    )
    session_max_age_s: float = Field(
        default=55 * 60,
        ge=60,
        description="Rotate to a fresh upstream session between turns after this age",
    )

    # --- carrier (Twilio) ----------------------------------------------------------------
    twilio_auth_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("TWILIO_AUTH_TOKEN", "GATEWAY_TWILIO_AUTH_TOKEN"),
    )
    public_url: str | None = Field(
        default=None, description="Public https base URL Twilio uses to reach the gateway"
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses/CIDR ranges of the proxies whose Forwarded/X-Forwarded-* "
        "headers are believed; empty: nobody's",
    )
    call_token_secret: SecretStr | None = Field(
        default=None,
        description="Shared by every replica: signs the per-call token binding webhook to stream",
    )
    allow_unsigned: bool = Field(
        default=False,
        description="Development only: with no TWILIO_AUTH_TOKEN, accept unsigned carrier "
        "requests from any address (logged on every request)",
    )
    twilio_account_sid: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TWILIO_ACCOUNT_SID", "GATEWAY_TWILIO_ACCOUNT_SID"),
        description="Account for the REST API calls of call control (end_call, transfer_call)",
    )
    twilio_api_key: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TWILIO_API_KEY", "GATEWAY_TWILIO_API_KEY"),
        description="API key SID (SK...) for the REST API instead of the auth token",
    )
    twilio_api_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("TWILIO_API_SECRET", "GATEWAY_TWILIO_API_SECRET"),
    )
    twilio_api_base_url: str = Field(
        default="https://api.twilio.com",
        description="Twilio REST API base URL (a regional edge, or a local stand-in in tests)",
    )

    # --- other carriers (docs/carriers.md) --------------------------------------------------
    carriers: list[Literal["twilio", "signalwire", "telnyx", "plivo"]] = Field(
        default_factory=list,
        description=(
            "Carriers served besides Twilio and those whose credential is set, e.g. telnyx for "
            "a credential-less loopback test; a carrier not served answers 404"
        ),
    )
    signalwire_signing_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SIGNALWIRE_SIGNING_KEY", "GATEWAY_SIGNALWIRE_SIGNING_KEY"),
        description="SignalWire Signing Key: checks X-SignalWire-Signature on /signalwire/*",
    )
    telnyx_public_key: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TELNYX_PUBLIC_KEY", "GATEWAY_TELNYX_PUBLIC_KEY"),
        description="Telnyx account public key (base64 Ed25519): checks "
        "telnyx-signature-ed25519 on /telnyx/voice",
    )
    telnyx_signature_tolerance_s: int = Field(
        default=300,
        ge=10,
        le=3600,
        description="Telnyx webhooks older or newer than this (telnyx-timestamp) are refused",
    )
    plivo_auth_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("PLIVO_AUTH_TOKEN", "GATEWAY_PLIVO_AUTH_TOKEN"),
        description="Plivo Auth Token: checks X-Plivo-Signature-V3 on /plivo/answer",
    )

    # --- service -------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    profiles_file: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="auto: JSON lines unless stderr is a terminal"
    )
    max_calls: int = Field(default=20, ge=1, le=10_000)
    max_setup_rate: float | None = Field(
        default=None,
        gt=0,
        description="New call setups per second (token bucket); unset: no limit",
    )
    setup_queue_s: float = Field(
        default=2.0,
        ge=0,
        le=10,
        description="Above max_setup_rate, how long a webhook may wait for its setup turn "
        "before the fallback answers",
    )
    carrier_idle_timeout_s: float = Field(
        default=30.0, gt=0, description="End a call when the carrier sends nothing for this long"
    )
    max_message_bytes: int = Field(default=64 * 1024, ge=1024)
    max_webhook_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest webhook body read; a Twilio voice webhook is a few kB",
    )
    setup_buffer_ms: int = Field(default=2000, ge=0, le=60_000)
    outbound_ring_timeout_s: int = Field(
        default=30, ge=5, le=600, description="How long an outbound call rings (Twilio Timeout)"
    )
    outbound_buffer_ms: int = Field(
        default=10_000,
        ge=0,
        le=60_000,
        description="Callee audio kept while an outbound call waits for the AMD verdict",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Time a client has to send a request head, from connecting (or from the "
        "first byte of its next request on a kept-alive connection)",
    )
    body_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="Time a client has to send a request body"
    )
    keep_alive_timeout_s: int = Field(
        default=5, ge=1, le=3600, description="Close an idle kept-alive HTTP connection after this"
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Open client connections (HTTP and websocket) in total; lowered at start-up "
        "to what the open-file limit allows",
    )
    max_connections_per_client: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description="Open connections per client address (IPv6: per /64), at most half of "
        "max_connections; trusted proxies are exempt",
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token for /admin endpoints; unset turns them off"
    )
    drain_timeout_s: float = Field(default=300.0, ge=0, le=86_400)
    workers: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Worker processes serving the one port (about one core each); above 1 a "
        "supervisor shares the listening socket, restarts a worker that dies and drains them "
        "all on SIGTERM. GATEWAY_MAX_CALLS and the connection limits apply per worker",
    )

    # --- call records, cost, recordings ---------------------------------------------------
    records_url: str | None = Field(
        default=None,
        description="Call-record database URL (postgresql://...); unset: SQLite at records_path;"
        " 'off': no records",
    )
    records_path: Path = Path("data/calls.sqlite3")
    prices: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="USD per 1M tokens by model, laid over the built-in price table (JSON)",
    )
    recordings_dir: Path = Path("data/recordings")
    recordings_retention_days: int = Field(
        default=30, ge=0, le=3650, description="Delete recordings older than this; 0 keeps them"
    )

    @field_validator("prices")
    @classmethod
    def _prices(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        from gateway.records.pricing import PriceTable

        PriceTable.default(v)  # a ValueError names the model and the field
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        from gateway.proxies import parse_networks

        parse_networks(v)  # a ValueError names the bad entry
        return v

    def trusted_proxy_networks(self) -> tuple[Network, ...]:
        from gateway.proxies import parse_networks

        return parse_networks(self.trusted_proxies)

    @field_validator("telnyx_public_key")
    @classmethod
    def _telnyx_key(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        import base64
        import binascii

        try:
            raw = base64.b64decode(v.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be the base64 public key from the Telnyx portal") from None
        if len(raw) != 32:
            raise ValueError(f"decodes to {len(raw)} bytes; an Ed25519 public key has 32")
        return v.strip()

    @field_validator("twilio_api_base_url")
    @classmethod
    def _strip_api_slash(cls, v: str) -> str:
        return _http_base_url(v)

    @field_validator("twilio_account_sid")
    @classmethod
    def _account_sid(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"AC[0-9a-fA-F]{32}", v):
            raise ValueError("must be an account SID: AC followed by 32 hex digits")
        return v

    @property
    def call_control_enabled(self) -> bool:
        """True when the REST API can be used: an account and a token or API key pair."""
        if self.twilio_account_sid is None:
            return False
        return self.twilio_auth_token is not None or (
            self.twilio_api_key is not None and self.twilio_api_secret is not None
        )

    def twilio_rest_credentials(self) -> tuple[str, str] | None:
        """(username, password) for the REST API: the API key pair if set, else the account."""
        if not self.call_control_enabled:
            return None
        assert self.twilio_account_sid is not None
        if self.twilio_api_key is not None and self.twilio_api_secret is not None:
            return self.twilio_api_key, self.twilio_api_secret.get_secret_value()
        assert self.twilio_auth_token is not None
        return self.twilio_account_sid, self.twilio_auth_token.get_secret_value()

    @property
    def records_enabled(self) -> bool:
        return (self.records_url or "").strip().lower() != "off"

    @field_validator("realtime_base_url", "public_url")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        return _http_base_url(v)

    @property
    def uses_embedded_emulator(self) -> bool:
        """True when neither a key nor a base URL is set: run the local emulator instead."""
        return self.openai_api_key is None and self.realtime_base_url is None

    def call_token_key(self) -> bytes | None:
        """The key for per-call tokens: the explicit secret, else one derived from the Twilio
        auth token (already shared by every replica), else ``None`` (a random per-process key:
        fine for one process, not for replicas behind a load balancer)."""
        import hashlib

        if self.call_token_secret is not None:
            return hashlib.sha256(
                b"call-token|" + self.call_token_secret.get_secret_value().encode()
            ).digest()
        if self.twilio_auth_token is not None:
            return hashlib.sha256(
                b"call-token|" + self.twilio_auth_token.get_secret_value().encode()
            ).digest()
        return None

    @property
    def carrier_auth(self) -> CarrierAuth:
        """Which Twilio requests (webhook, media stream) are accepted; see :data:`CarrierAuth`."""
        return self.carrier_auth_for(configured=self.twilio_auth_token is not None)

    def carrier_auth_for(self, *, configured: bool) -> CarrierAuth:
        """Which requests of a carrier whose credential is (or is not) ``configured`` are
        accepted: the same rule for every carrier."""
        if configured:
            return "signed"
        if self.allow_unsigned:
            return "unsigned"
        if self.openai_api_key is not None:
            return "refused"
        return "loopback"

    def carrier_auth_report(self) -> tuple[str, list[str]]:
        """What :attr:`carrier_auth` means for this configuration, in one line, and what is
        wrong with it: ``check-config`` prints both, ``serve`` logs both at start-up."""
        mode, warnings = self.carrier_auth, []
        if mode == "signed":
            if self.public_url is None:
                summary = (
                    "signed (X-Twilio-Signature), but only for requests addressed to a loopback "
                    "host: GATEWAY_PUBLIC_URL is unset"
                )
                warnings.append(
                    "TWILIO_AUTH_TOKEN is set without GATEWAY_PUBLIC_URL: requests addressed to "
                    "any other host are refused; set GATEWAY_PUBLIC_URL to the URL Twilio calls"
                )
            else:
                summary = f"signed (X-Twilio-Signature for {self.public_url})"
            if self.allow_unsigned:
                unsigned = [
                    name
                    for name, configured in (
                        ("SignalWire", self.signalwire_signing_key is not None),
                        ("Telnyx", self.telnyx_public_key is not None),
                        ("Plivo", self.plivo_auth_token is not None),
                    )
                    if not configured
                ]
                warnings.append(
                    "GATEWAY_ALLOW_UNSIGNED has no effect on Twilio: TWILIO_AUTH_TOKEN is set"
                    + (
                        f"; it still accepts UNSIGNED {', '.join(unsigned)} requests from any "
                        "address (their credentials are not set)"
                        if unsigned
                        else ""
                    )
                )
        elif mode == "unsigned":
            summary = "UNSIGNED from any address (GATEWAY_ALLOW_UNSIGNED=true)"
            warnings.append(
                "GATEWAY_ALLOW_UNSIGNED=true: anyone who reaches this gateway can place calls; "
                "development only, never on a gateway the internet can reach"
            )
        elif mode == "refused":
            summary = "refused: OPENAI_API_KEY is set but TWILIO_AUTH_TOKEN is not"
            warnings.append(
                "no TWILIO_AUTH_TOKEN with a real OPENAI_API_KEY: every carrier request is "
                "refused; set TWILIO_AUTH_TOKEN (GATEWAY_ALLOW_UNSIGNED=true for development)"
            )
        else:
            summary = "unsigned from loopback clients only (no OPENAI_API_KEY: emulator, demo)"
        return summary, warnings

    @property
    def effective_realtime_base_url(self) -> str:
        return self.realtime_base_url or OPENAI_DEFAULT_BASE_URL


def _http_base_url(v: str) -> str:
    if not v.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return v.rstrip("/")


REMOVED = {
    "GATEWAY_TRUST_PROXY_HEADERS": "set GATEWAY_TRUSTED_PROXIES to your proxies' addresses "
    "instead (and GATEWAY_PUBLIC_URL)",
}


def load_settings(**overrides: object) -> Settings:
    """Read settings once; raise :class:`ConfigError` listing *every* bad value."""
    import os

    from dotenv import dotenv_values

    env_file = overrides.get("_env_file", Settings.model_config.get("env_file"))
    dotenv = dotenv_values(env_file) if isinstance(env_file, str | Path) else {}
    gone = [
        f"  - {name}: no longer a setting; {how}"
        for name, how in REMOVED.items()
        if os.environ.get(name) or dotenv.get(name)
    ]
    if gone:
        raise ConfigError("\n".join([f"{len(gone)} invalid setting(s):", *gone]))
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix="GATEWAY_")) from None


def format_validation_error(exc: ValidationError, *, prefix: str = "") -> str:
    """Render a pydantic error as one readable line per problem, naming the setting."""
    lines = [f"{exc.error_count()} invalid setting(s):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        name = loc if loc.isupper() else f"{prefix}{loc.upper()}"
        given = err.get("input")
        shown = "" if isinstance(given, dict) or given is None else f" (got {given!r})"
        if "key" in loc.lower() or "token" in loc.lower() or "credential" in loc.lower():
            shown = ""  # never echo secrets
        lines.append(f"  - {name}: {err['msg']}{shown}")
    return "\n".join(lines)
