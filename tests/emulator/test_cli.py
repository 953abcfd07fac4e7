"""``emulator_command``: options, validation, and a real run in a subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest
import typer
from typer.testing import CliRunner

from gateway.emulator.cli import emulator_command

pytestmark = pytest.mark.timeout(60)

_SCRIPT = """
import typer
from gateway.emulator.cli import emulator_command
app = typer.Typer()
app.command()(emulator_command)
app()
"""


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(emulator_command)
    return app


def test_help_lists_the_knobs() -> None:
    result = CliRunner().invoke(cli(), ["--help"])
    assert result.exit_code == 0
    for option in (
        "--api-key",
        "--reply",
        "--latency-ms",
        "--event-log",
        "--tool-call",
        "--refuse-status",
    ):
        assert option in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--reply", "poem"],
        ["--refuse-status", "418"],
        ["--latency-ms", "-1"],
        ["--generation-speed", "0.5"],
    ],
)
def test_bad_options_are_refused(args: list[str]) -> None:
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 2, result.output


def test_runs_a_server_until_sigterm() -> None:
    env = {**os.environ, "OPENAI_API_KEY": "sk-from-env"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://\S+)/v1", line)
        assert match, line
        url = match.group(1)
        ok = httpx.post(
            f"{url}/v1/realtime/client_secrets",
            json={},
            headers={"Authorization": "Bearer sk-from-env"},
        )
        assert ok.status_code == 200
        bad = httpx.post(
            f"{url}/v1/realtime/client_secrets", json={}, headers={"Authorization": "Bearer other"}
        )
        assert bad.status_code == 401  # the key came from OPENAI_API_KEY
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert "emulator stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
