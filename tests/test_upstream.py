"""The composition root's map onto the Realtime client: settings to config, profile to session."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import SecretStr

from gateway.errors import UpstreamRefused
from gateway.numbers import Profile
from gateway.realtime.config import IceServer, RealtimeConfig, SetupTimeouts
from gateway.settings import Settings
from gateway.upstream import realtime_config, session_factory


def test_config_from_settings() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_api_key=SecretStr("sk-from-env"),
        realtime_base_url="https://rt.example.com/v1",
        realtime_auth="ephemeral",
        ice_servers=["stun:stun.example.net:3478", "turn:turn.example.net:3478"],
        ice_username="u",
        ice_credential=SecretStr("p"),
        setup_timeout_s=4,
    )
    cfg = realtime_config(settings)
    assert (cfg.base_url, cfg.api_key, cfg.auth) == (
        "https://rt.example.com/v1",
        "sk-from-env",
        "ephemeral",
    )
    assert cfg.ice_servers == (
        IceServer(("stun:stun.example.net:3478", "turn:turn.example.net:3478"), "u", "p"),
    )
    assert cfg.timeouts == SetupTimeouts(4, 4, 4, 4, 4)
    assert cfg.http_client is None


async def test_config_overrides_for_the_embedded_emulator() -> None:
    async with httpx.AsyncClient() as http:
        local = realtime_config(
            Settings(_env_file=None),  # type: ignore[call-arg]
            base_url="http://127.0.0.1:9/v1",
            api_key="emulator",
            http_client=http,
        )
        assert local.http_client is http
    assert (local.base_url, local.api_key, local.ice_servers) == (
        "http://127.0.0.1:9/v1",
        "emulator",
        (),
    )
    assert local.timeouts == SetupTimeouts()


async def test_session_factory_offers_the_profiles_session() -> None:
    posted: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        posted.append(request)
        return httpx.Response(503, json={"error": {"code": "busy", "message": "later"}})

    # Ephemeral auth: the session goes out first, as plain JSON with the client-secret request.
    config = RealtimeConfig(
        base_url="http://rt.test/v1",
        api_key="k",
        auth="ephemeral",
        transport=httpx.MockTransport(refuse),
    )
    profile = Profile(name="sales", voice="cedar", instructions="Sell kindly.")
    session = session_factory(config)(profile)
    with pytest.raises(UpstreamRefused):
        await session.open()
    [request] = posted
    assert json.loads(request.content)["session"] == profile.session_config()
    assert session.state == "closed"


def test_the_receive_buffer_setting_becomes_packets() -> None:
    for ms, packets in ((0, 0), (40, 2), (50, 2), (160, 8)):
        settings = Settings(_env_file=None, receive_buffer_ms=ms)  # type: ignore[call-arg]
        assert realtime_config(settings).receive_buffer_packets == packets


@pytest.mark.parametrize(
    ("own", "default", "codec"),
    [
        (None, "opus", "opus"),
        (None, "pcmu", "pcmu"),
        ("pcma", "pcmu", "pcma"),
        ("opus", "pcmu", "opus"),
    ],
)
def test_the_profiles_codec_wins_over_the_process_default(
    own: str | None, default: str, codec: str
) -> None:
    config = RealtimeConfig(base_url="http://rt.test/v1", api_key="k")
    profile = Profile(upstream_codec=own)  # type: ignore[arg-type]
    session = session_factory(config, default_codec=default)(profile)  # type: ignore[arg-type]
    assert session.codec == codec
    assert session.caller_track.codec == codec
    fmt = session._session_body["audio"]["input"].get("format")
    assert fmt == (None if codec == "opus" else {"type": f"audio/{codec}"})
