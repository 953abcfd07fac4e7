"""deploy/systemd/gateway.service agrees with the gateway it runs: the command exists, stopping
drains (SIGTERM, and systemd waits longer than the drain), reloading re-reads the profiles."""

from __future__ import annotations

import configparser
from pathlib import Path

import typer.main

from gateway.cli import app
from gateway.settings import Settings

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "gateway.service"


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read_string(UNIT.read_text(encoding="utf-8"))
    return unit


def test_the_unit_runs_a_real_subcommand() -> None:
    exec_start = _unit()["Service"]["ExecStart"].split()
    assert Path(exec_start[0]).name == "gateway"
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert exec_start[1] in commands


def test_stopping_drains_and_systemd_waits_for_the_drain() -> None:
    service = _unit()["Service"]
    assert service["KillSignal"] == "SIGTERM"  # what service.py drains on
    drain_s = Settings.model_fields["drain_timeout_s"].default
    assert float(service["TimeoutStopSec"]) > drain_s + 10
    assert service["ExecReload"].endswith("-HUP $MAINPID")  # SIGHUP reloads the profiles


def test_the_service_writes_only_its_state_directory() -> None:
    service = _unit()["Service"]
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == f"/var/lib/{service['StateDirectory']}"
    assert service["WorkingDirectory"] == service["ReadWritePaths"]
    # relative data paths (records, recordings) then land in the state directory
    assert not Settings.model_fields["records_path"].default.is_absolute()
