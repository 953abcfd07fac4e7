"""Spawned processes: CPU lists, and a stack leaves nothing behind in the temp dir."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import pytest

from gateway.loadtest.spawn import SpawnError, cpu_list, spawned_stack

pytestmark = pytest.mark.timeout(60)


def test_cpu_lists_name_cpus_this_process_may_use() -> None:
    first = min(os.sched_getaffinity(0))
    assert cpu_list(f"{first}") == {first}
    with pytest.raises(ValueError, match="not a number"):
        cpu_list("a-b")


def _start_a_failing_stack(log_dir: Path | None = None) -> None:
    async def start() -> None:
        async with spawned_stack(
            emulator_args=["--no-such-option"], log_dir=log_dir, start_timeout_s=30
        ):
            pass

    with pytest.raises(SpawnError, match="emulator exited"):
        asyncio.run(start())


def test_a_stack_removes_its_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _start_a_failing_stack()
    assert list(tmp_path.iterdir()) == []


def test_a_given_log_dir_is_kept(tmp_path: Path) -> None:
    _start_a_failing_stack(tmp_path / "logs")
    assert "no-such-option" in (tmp_path / "logs" / "emulator.log").read_text()
