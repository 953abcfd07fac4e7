"""Every test's gateway keeps its call records and recordings in the test's own folder.

A gateway started with default settings writes a SQLite file and recordings under ``data/``
in the working directory; tests must never leave those in the checkout.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _gateway_data_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_RECORDS_PATH", str(tmp_path / "data" / "calls.sqlite3"))
    monkeypatch.setenv("GATEWAY_RECORDINGS_DIR", str(tmp_path / "data" / "recordings"))
