"""Where settings and number profiles meet the Realtime client (the composition root's map).

:mod:`gateway.realtime` knows nothing of :class:`~gateway.settings.Settings` or
:class:`~gateway.numbers.Profile`: it takes a :class:`~gateway.realtime.config.RealtimeConfig`
per process and a session body per call. :func:`realtime_config` builds the first from the
settings, :func:`session_factory` turns a profile into the second, for the bridge.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from gateway.audio.format import FRAME_MS, UpstreamCodec
from gateway.errors import UpstreamTimeout
from gateway.numbers import Profile
from gateway.realtime.config import IceServer, RealtimeConfig, SetupTimeouts
from gateway.realtime.session import RealtimeSession
from gateway.realtime.signalling import Signalling, http_client
from gateway.settings import Settings

__all__ = ["probe", "realtime_config", "session_factory"]


def realtime_config(
    settings: Settings,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    http_client: httpx.AsyncClient | None = None,
) -> RealtimeConfig:
    """The config ``gateway serve`` uses: URL, key, auth mode, ICE servers, setup budget.

    ``base_url`` and ``api_key`` override the settings (the embedded emulator's address and
    a placeholder key); ``http_client`` is the process's pooled client, which the caller
    closes. Every phase timeout is capped at ``setup_timeout_s``; the caller still enforces
    that budget for the whole of :meth:`RealtimeSession.open`.
    """
    if api_key is None:
        secret = settings.openai_api_key
        api_key = secret.get_secret_value() if secret is not None else ""
    ice: tuple[IceServer, ...] = ()
    if settings.ice_servers:
        credential = settings.ice_credential
        ice = (
            IceServer(
                urls=tuple(settings.ice_servers),
                username=settings.ice_username,
                credential=credential.get_secret_value() if credential is not None else None,
            ),
        )
    budget = settings.setup_timeout_s
    d = SetupTimeouts()
    return RealtimeConfig(
        base_url=base_url or settings.effective_realtime_base_url,
        api_key=api_key,
        auth=settings.realtime_auth,
        ice_servers=ice,
        timeouts=SetupTimeouts(
            sdp_exchange=min(d.sdp_exchange, budget),
            ice_dtls=min(d.ice_dtls, budget),
            data_channel=min(d.data_channel, budget),
            session_created=min(d.session_created, budget),
            session_updated=min(d.session_updated, budget),
        ),
        receive_buffer_packets=round(settings.receive_buffer_ms / FRAME_MS),
        http_client=http_client,
    )


def session_factory(
    config: RealtimeConfig,
    *,
    on_caller_audio_handoff: Callable[[float], None] | None = None,
    on_caller_audio_drop: Callable[[], None] | None = None,
    call_control: bool = False,
    default_codec: UpstreamCodec = "opus",
) -> Callable[[Profile], RealtimeSession]:
    """A per-call constructor for the bridge: the profile's GA session on the shared config.

    ``call_control``: the gateway can act on calls (carrier REST API configured), so profiles'
    built-in tools are declared to the model. ``default_codec`` is the Realtime leg's codec for
    profiles that do not choose one (``GATEWAY_UPSTREAM_CODEC``).
    """

    def create(profile: Profile) -> RealtimeSession:
        codec = profile.codec(default_codec)
        return RealtimeSession(
            config,
            profile.session_config(call_control=call_control, codec=codec),
            codec=codec,
            on_caller_audio_handoff=on_caller_audio_handoff,
            on_caller_audio_drop=on_caller_audio_drop,
        )

    return create


async def probe(
    config: RealtimeConfig, profile: Profile, *, default_codec: UpstreamCodec = "opus"
) -> str:
    """Check that ``config``'s key may open Realtime sessions, without placing a call.

    Mints a short-lived client secret for ``profile``'s session (``POST
    /realtime/client_secrets``): authenticated, validated like a real session, billed nothing.
    Returns what was checked; raises :class:`~gateway.errors.UpstreamError` (its message says
    what to fix: a wrong key, a model the key cannot use, an unreachable API).
    """
    signalling = Signalling(
        config.base_url, config.api_key, safety_identifier=config.safety_identifier
    )
    try:
        async with http_client(
            config.http_client, transport=config.transport, timeout_s=config.timeouts.sdp_exchange
        ) as client:
            session = profile.session_config(codec=profile.codec(default_codec))
            await signalling.client_secret(client, session, ttl_s=10)
    except httpx.HTTPError as exc:
        raise UpstreamTimeout(
            f"the Realtime API at {config.base_url} did not answer: {type(exc).__name__}"
        ) from None
    return f"the key may open {profile.model} sessions at {config.base_url} (no call placed)"
