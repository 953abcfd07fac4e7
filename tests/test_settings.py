"""Settings: read from the environment once, every bad value reported together."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("GATEWAY_") or name in {"OPENAI_API_KEY", "TWILIO_AUTH_TOKEN"}:
            monkeypatch.delenv(name)
    monkeypatch.chdir(str(tmp_path))  # no stray .env


def test_defaults_mean_the_embedded_emulator() -> None:
    s = load_settings()
    assert s.uses_embedded_emulator
    assert s.effective_realtime_base_url == "https://api.openai.com/v1"


def test_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tok")
    monkeypatch.setenv("GATEWAY_REALTIME_BASE_URL", "http://127.0.0.1:8765/v1/")
    monkeypatch.setenv("GATEWAY_ICE_SERVERS", '["stun:stun.example.net:3478"]')
    s = load_settings()
    assert not s.uses_embedded_emulator
    assert s.openai_api_key is not None and s.openai_api_key.get_secret_value() == "sk-test"
    assert s.realtime_base_url == "http://127.0.0.1:8765/v1"
    assert s.ice_servers == ["stun:stun.example.net:3478"]


def test_all_problems_reported_at_once_without_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "99999")
    monkeypatch.setenv("GATEWAY_MAX_CALLS", "zero")
    monkeypatch.setenv("GATEWAY_REALTIME_BASE_URL", "ftp://nope")
    with pytest.raises(ConfigError) as err:
        load_settings()
    text = str(err.value)
    assert "3 invalid setting(s)" in text
    assert "GATEWAY_PORT" in text and "GATEWAY_MAX_CALLS" in text
    assert "GATEWAY_REALTIME_BASE_URL" in text


def test_dotenv_file_is_read(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    Path(str(tmp_path), ".env").write_text("GATEWAY_MAX_CALLS=7\n")
    assert load_settings().max_calls == 7


def test_trusted_proxies_are_checked_and_the_old_switch_is_refused(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("GATEWAY_TRUSTED_PROXIES", '["10.0.0.0/8", "::1"]')
    assert [str(n) for n in load_settings().trusted_proxy_networks()] == ["10.0.0.0/8", "::1/128"]
    monkeypatch.setenv("GATEWAY_TRUSTED_PROXIES", '["10.0.0.0/33"]')
    with pytest.raises(ConfigError, match="GATEWAY_TRUSTED_PROXIES"):
        load_settings()
    monkeypatch.delenv("GATEWAY_TRUSTED_PROXIES")
    monkeypatch.setenv("GATEWAY_TRUST_PROXY_HEADERS", "true")
    with pytest.raises(ConfigError, match="GATEWAY_TRUST_PROXY_HEADERS: no longer a setting"):
        load_settings()
    monkeypatch.delenv("GATEWAY_TRUST_PROXY_HEADERS")
    (tmp_path / ".env").write_text("GATEWAY_TRUST_PROXY_HEADERS=true\n")
    monkeypatch.chdir(tmp_path)  # a .env that still has it says so too, not only the environment
    with pytest.raises(ConfigError, match="GATEWAY_TRUST_PROXY_HEADERS: no longer a setting"):
        load_settings()
