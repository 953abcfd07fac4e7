"""Spawned processes: CPU lists, and a stack leaves nothing behind in the temp dir."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import pytest

from gateway.loadtest.spawn import WORKER_HEADER, SpawnError, cpu_list, spawned_stack
from tests.support import wait_until

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


def test_the_worker_header_is_the_gateways() -> None:
    from gateway.service import WORKER_HEADER as SERVED

    assert WORKER_HEADER == SERVED


@pytest.mark.timeout(90)
async def test_a_stack_with_workers_is_ready_once_every_worker_answered(tmp_path: Path) -> None:
    env = {"GATEWAY_WORKERS": "2", "GATEWAY_LOG_LEVEL": "info"}
    async with spawned_stack(gateway_env=env, log_dir=tmp_path) as stack:
        # Both workers are up (each logs that it listens; the line may reach the file a moment
        # after the worker first answered, so it is waited for, not read once).
        log = tmp_path / "gateway.log"
        await wait_until(
            lambda: log.read_text().count("listening on") == 2, 10, what="both workers' lines"
        )
        assert stack.gateway_url.startswith("http://127.0.0.1:")
