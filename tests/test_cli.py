"""The `gateway` command line."""

from __future__ import annotations

import asyncio
import os
import sys
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway import __version__
from gateway.cli import app
from tests.emulator.emulator_support import KEY, running

runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("GATEWAY_") or name in {"OPENAI_API_KEY", "TWILIO_AUTH_TOKEN"}:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_every_subcommand_has_help() -> None:
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    import typer.main

    group = typer.main.get_command(app)
    names = sorted(group.commands)  # type: ignore[attr-defined]
    assert "version" in names and "check-config" in names
    for name in names:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Usage" in result.output


def test_help_paragraphs_reflow_to_a_narrow_terminal() -> None:
    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    text = " ".join(result.output.split())  # rich's line breaks become spaces
    # a paragraph broken at the docstring's source lines leaves a short line in the middle
    assert "runs embedded on loopback. SIGTERM/SIGINT drain" in text
    lines = [line.strip() for line in result.output.splitlines()]
    assert "loopback. SIGTERM/SIGINT drain (live calls finish, up to" not in lines


def test_check_config_good_and_bad(tmp_path: Path) -> None:
    good = tmp_path / "p.yaml"
    good.write_text('numbers:\n  "+15551230001": {voice: cedar, upstream_codec: pcmu}\n')
    result = runner.invoke(app, ["check-config", str(good)])
    assert result.exit_code == 0, result.output
    assert "+15551230001" in result.output and "cedar" in result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if "│" in line}
    assert "pcmu" in rows["+15551230001"] and "opus" in rows["default"]
    bad = tmp_path / "bad.yaml"
    bad.write_text('numbers:\n  "+15551230001": {voice: robot}\n')
    result = runner.invoke(app, ["check-config", str(bad)])
    assert result.exit_code == 1
    assert "numbers.+15551230001.voice" in result.output


def test_check_config_warns_about_tools_without_rest_credentials_and_masks_the_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profiles = tmp_path / "p.yaml"
    profiles.write_text("default: {tools: {end_call: true}, max_cost_usd: 0.5}\n")
    monkeypatch.setenv("GATEWAY_RECORDS_URL", "postgresql://gw:hunter2@db:5432/calls")
    for name in ("TWILIO_ACCOUNT_SID", "GATEWAY_TWILIO_ACCOUNT_SID"):
        monkeypatch.delenv(name, raising=False)
    result = runner.invoke(app, ["check-config", str(profiles)])
    assert result.exit_code == 0, result.output
    assert "warning: profile(s) default enable call-control tools" in result.output
    assert "hunter2" not in result.output and "postgresql://gw:***@db:5432/calls" in result.output
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC" + "0" * 32)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "token")
    monkeypatch.setenv("GATEWAY_PUBLIC_URL", "https://gw.example.com")
    result = runner.invoke(app, ["check-config", str(profiles)])
    assert result.exit_code == 0 and "warning" not in result.output


SIGNED = {"TWILIO_AUTH_TOKEN": "tw-s3cret", "GATEWAY_PUBLIC_URL": "https://gw.example.com"}


@pytest.mark.parametrize(
    ("env", "says", "warns"),
    [
        ({}, "carrier requests: unsigned from loopback clients only", False),
        ({"OPENAI_API_KEY": "sk-x"}, "carrier requests: refused", True),
        ({"OPENAI_API_KEY": "sk-x", "GATEWAY_ALLOW_UNSIGNED": "true"}, "UNSIGNED from any", True),
        ({"TWILIO_AUTH_TOKEN": "tw-s3cret"}, "only for requests addressed to a loopback", True),
        (SIGNED, "carrier requests: signed (X-Twilio-Signature for https://gw.example.com)", False),
    ],
)
def test_check_config_says_which_carrier_requests_are_accepted(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str, warns: bool
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = runner.invoke(app, ["check-config"])
    assert result.exit_code == 0, result.output
    assert says in result.output
    assert ("warning:" in result.output) == warns
    assert "tw-s3cret" not in result.output


def test_bad_settings_exit_2_with_every_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "-1")
    monkeypatch.setenv("GATEWAY_LOG_LEVEL", "loud")
    result = runner.invoke(app, ["check-config"])
    assert result.exit_code == 2
    assert "GATEWAY_PORT" in result.output and "GATEWAY_LOG_LEVEL" in result.output


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("key", "ok"), [(KEY, True), ("sk-wrong", False)])
async def test_check_config_probe_asks_the_realtime_api_about_the_key(
    tmp_path: Path, key: str, ok: bool
) -> None:
    async with running() as emu:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENAI_"))}
        env.update(OPENAI_API_KEY=key, GATEWAY_REALTIME_BASE_URL=emu.base_url)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "check-config", "--probe",
            cwd=tmp_path, env=env, stdout=PIPE, stderr=PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        sessions = await emu.sessions()
    text = out.decode() + err.decode()
    if ok:
        assert proc.returncode == 0, text
        assert f"probe ok: the key may open gpt-realtime sessions at {emu.base_url}" in text
    else:
        assert proc.returncode == 1, text
        assert "probe failed: Realtime API refused the client secret request: HTTP 401" in text
        assert "sk-wrong" not in text  # the key itself is never printed
    assert sessions == []  # no call was placed


def test_check_config_probe_with_the_emulator_has_nothing_to_ask() -> None:
    result = runner.invoke(app, ["check-config", "--probe"])
    assert result.exit_code == 0, result.output
    assert "probe: nothing to ask" in result.output


@pytest.mark.timeout(30)
def test_check_config_lists_every_carrier_and_its_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLIVO_AUTH_TOKEN", "pl-secret")
    monkeypatch.setenv("GATEWAY_CARRIERS", '["telnyx"]')
    result = runner.invoke(app, ["check-config"])
    assert result.exit_code == 0, result.output
    assert "carrier twilio: POST /twilio/voice, WS /twilio/media" in result.output
    assert "carrier plivo: POST /plivo/answer, WS /plivo/media; signed (X-Plivo" in result.output
    assert "carrier telnyx: POST /telnyx/voice, WS /telnyx/media; unsigned from loopback" in (
        result.output
    )
    assert "carrier signalwire: not served (set SIGNALWIRE_SIGNING_KEY, or name it in" in (
        result.output
    )


def test_serve_takes_a_worker_count_of_at_least_one(monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(app, ["serve", "--workers", "0"])
    assert result.exit_code == 2 and "--workers" in result.output
    monkeypatch.setenv("GATEWAY_WORKERS", "0")
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2 and "GATEWAY_WORKERS" in result.output
