"""`.env.example` documents exactly the settings the code reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import AliasChoices

from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def env_names() -> set[str]:
    names = set()
    for name, f in Settings.model_fields.items():
        alias = f.validation_alias
        if isinstance(alias, AliasChoices):
            names.add(str(alias.choices[0]))
        else:
            names.add(f"GATEWAY_{name.upper()}")
    return names


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    assert listed == env_names()


def test_every_setting_has_a_comment() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[A-Z][A-Z0-9_]+=", line):
            assert i > 0 and lines[i - 1].startswith("#"), f"{line} has no comment above it"


def test_env_example_as_a_dotenv_loads_and_empty_means_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OPENAI_API_KEY", "GATEWAY_REALTIME_BASE_URL", "GATEWAY_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    example = Path(__file__).resolve().parents[1] / ".env.example"
    settings = Settings(_env_file=example)  # type: ignore[call-arg]
    assert settings.admin_token is None  # an empty value never becomes an empty secret
    assert settings.max_setup_rate is None
    assert settings.uses_embedded_emulator
