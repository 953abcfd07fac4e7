"""Every test's gateway keeps its call records and recordings in the test's own folder, and the
tests that drive a whole gateway share one way to start it.

A gateway started with default settings writes a SQLite file and recordings under ``data/``
in the working directory; tests must never leave those in the checkout.

:func:`gateway` is a real gateway on a free loopback port with the Realtime emulator embedded.
A test module shapes it by overriding the fixtures it is built from::

    @pytest.fixture
    def gateway_settings() -> dict[str, Any]:
        return {"max_calls": 6}

    @pytest.fixture
    def profiles_yaml() -> str:
        return PROFILES
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.service import RunningGateway, running_gateway
from tests.support import settings


@pytest.fixture(autouse=True)
def _gateway_data_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_RECORDS_PATH", str(tmp_path / "data" / "calls.sqlite3"))
    monkeypatch.setenv("GATEWAY_RECORDINGS_DIR", str(tmp_path / "data" / "recordings"))


@pytest.fixture
def gateway_settings() -> dict[str, Any]:
    """:class:`~gateway.settings.Settings` fields of the :func:`gateway` (no ``.env`` read)."""
    return {"max_calls": 4}


@pytest.fixture
def profiles_yaml() -> str | None:
    """The number profiles the :func:`gateway` loads (written to the test's folder)."""
    return None


@pytest.fixture
def emulator_options() -> dict[str, object]:
    """:class:`~gateway.emulator.app.EmulatorConfig` fields of the embedded emulator."""
    return {"latency_ms": 100.0}


@pytest.fixture
def profiles_file(tmp_path: Path, profiles_yaml: str | None) -> Path | None:
    """:func:`profiles_yaml` as a file, for the gateway to load (and a test to rewrite)."""
    if profiles_yaml is None:
        return None
    path = tmp_path / "profiles.yaml"
    path.write_text(profiles_yaml)
    return path


@pytest.fixture
async def gateway(
    gateway_settings: dict[str, Any],
    profiles_file: Path | None,
    emulator_options: dict[str, object],
) -> AsyncIterator[RunningGateway]:
    """A whole gateway serving on a free loopback port, the emulator embedded as upstream."""
    fields = dict(gateway_settings)
    if profiles_file is not None:
        fields["profiles_file"] = profiles_file
    async with running_gateway(settings(**fields), port=0, emulator_options=emulator_options) as gw:
        yield gw
