"""Batches of outbound calls (``gateway call --csv``) against a real gateway and the Twilio
stand-in: paced by the gateway, one result row per number, resumable without calling twice."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from gateway.batch import Outcome, read_numbers, read_results, run_batch
from gateway.loadtest.twilio_api import Callee, TwilioApiStandIn
from gateway.service import RunningGateway
from gateway.serving import RunningServer

pytestmark = pytest.mark.timeout(90)

ACCOUNT = "AC" + "1" * 32
TOKEN = "batch-auth-token"
ADMIN = "batch-admin"
FROM = "+15550100001"
NUMBERS = ["+15550300001", "+15550300002", "+15550300003", "+15550300004"]


@pytest.fixture
async def api() -> AsyncIterator[tuple[TwilioApiStandIn, RunningServer]]:
    stand_in = TwilioApiStandIn(ACCOUNT, TOKEN)
    for number in NUMBERS:
        stand_in.callee(number, Callee(answer="busy", ring_s=0.01))
    async with stand_in.serve() as server:
        yield stand_in, server


@pytest.fixture
def twilio(api: tuple[TwilioApiStandIn, RunningServer]) -> TwilioApiStandIn:
    return api[0]


@pytest.fixture
def profiles_yaml() -> str:
    return "default:\n  outbound: {calls_per_second: 1}\n"


@pytest.fixture
def gateway_settings(api: tuple[TwilioApiStandIn, RunningServer]) -> dict[str, Any]:
    return {
        "admin_token": SecretStr(ADMIN),
        "twilio_account_sid": ACCOUNT,
        "twilio_auth_token": SecretStr(TOKEN),
        "twilio_api_base_url": api[1].url,
    }


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["number", "name"], *rows])
    return path


def _creates(stand_in: TwilioApiStandIn) -> list[str]:
    return [r.form["To"] for r in stand_in.requests if r.path.endswith("/Calls.json")]


async def _run(gw: RunningGateway, rows: Any, results: Path, **kw: Any) -> dict[str, Outcome]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=gw.url, headers=headers) as http:
        return await run_batch(
            http, rows, results, from_number=FROM, profile="default", poll_s=0.05, **kw
        )


async def test_a_batch_is_paced_recorded_and_never_calls_anyone_twice(
    gateway: RunningGateway, twilio: TwilioApiStandIn, tmp_path: Path
) -> None:
    source = _write_csv(
        tmp_path / "numbers.csv",
        [[n, f"name {i}"] for i, n in enumerate(NUMBERS)] + [["12345", "x"], [NUMBERS[0], "dup"]],
    )
    rows = read_numbers(source)
    assert rows[0].variables == {"name": "name 0"}
    results = tmp_path / "numbers.results.csv"

    # A first run that stops after two numbers (as if interrupted), then the whole list.
    first = await _run(gateway, rows[:2], results)
    assert [o.status for o in first.values()] == ["busy", "busy"]
    seen: list[str] = []
    loop = asyncio.get_running_loop()
    began = loop.time()
    outcomes = await _run(gateway, rows, results, concurrency=2, on_progress=seen.append)
    took = loop.time() - began

    assert sorted(_creates(twilio)) == sorted(NUMBERS)  # each number called exactly once
    assert {n: outcomes[n].status for n in NUMBERS} == dict.fromkeys(NUMBERS, "busy")
    assert outcomes["12345"].status == "invalid"
    assert len(seen) == 5  # two from the first run, two new calls, one invalid row
    assert took >= 0.9  # the second new call waited for the gateway's pace (1 per second)
    # The results file: one row per number, in input order.
    with results.open(newline="") as f:
        written = list(csv.DictReader(f))
    assert [r["number"] for r in written] == [*NUMBERS, "12345"]
    assert all(r["call_sid"].startswith("CA") for r in written[:4])

    again = await _run(gateway, rows, results)
    assert sorted(_creates(twilio)) == sorted(NUMBERS)  # a third run calls nobody
    assert again == read_results(results)


async def test_the_cli_runs_a_batch_with_a_result_file(
    gateway: RunningGateway,
    twilio: TwilioApiStandIn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app

    source = _write_csv(tmp_path / "list.csv", [[NUMBERS[0], "Ada"]])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", ADMIN)
    args = ["call", "--csv", str(source), "--from-number", FROM, "--gateway", gateway.url]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 0, result.output
    assert "busy 1" in result.output
    assert read_results(tmp_path / "list.results.csv")[NUMBERS[0]].status == "busy"
    both = await asyncio.to_thread(CliRunner().invoke, app, ["call", NUMBERS[0], *args[1:]])
    assert both.exit_code == 2  # a number and a list at once
