"""Call records and cost end to end: real calls through the gateway to the emulator, the record
in the database, its usage equal to what the emulator billed, the admin API over it, and the
per-profile budget ending a call politely."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.loadtest.caller import CallOptions, Pause, Say, SimulatedCall, WaitForAnswer
from gateway.records import PriceTable, Usage
from gateway.service import RunningGateway
from tests.support import wait_all_ended, wait_until

pytestmark = pytest.mark.timeout(120)

ADMIN = "admin-secret"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
BUDGET_LINE = "+15551230009"
PROFILES = f"""
default:
  greeting: "Say hello."
numbers:
  "{BUDGET_LINE}":
    greeting: "Say hello and ask how you can help."
    max_cost_usd: 0.0001
"""


@pytest.fixture
def gateway_settings(tmp_path: Path) -> dict[str, Any]:
    return {"admin_token": ADMIN, "records_path": tmp_path / "calls.sqlite3"}


@pytest.fixture
def profiles_yaml() -> str:
    return PROFILES


@pytest.fixture
def event_log(tmp_path: Path) -> Path:
    """Where the emulator logs every event it sends (what it billed is in there)."""
    return tmp_path / "events.jsonl"


@pytest.fixture
def emulator_options(event_log: Path) -> dict[str, object]:
    return {"latency_ms": 100.0, "event_log": event_log}


@pytest.fixture(scope="module")
def question() -> Say:
    return Say.from_text("What time do you open tomorrow?")


def _billed(log: Path) -> Usage:
    """What the emulator billed: the sum of its response.done usage."""
    total = Usage()
    for line in log.read_text().splitlines():
        entry: dict[str, Any] = json.loads(line)
        event = entry.get("event", entry)
        if event.get("type") == "response.done":
            total += Usage.from_realtime(event["response"].get("usage"))
    return total


async def _records(gw: RunningGateway, **params: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=gw.url, headers=AUTH) as client:
        resp = await client.get("/admin/records", params=params)
    assert resp.status_code == 200, resp.text
    records: list[dict[str, Any]] = resp.json()["records"]
    return records


async def _wait_written(gw: RunningGateway, n: int) -> list[dict[str, Any]]:
    """The writer saves off the call's path: poll the admin API until ``n`` records landed."""
    found: list[dict[str, Any]] = []

    async def written() -> bool:
        nonlocal found
        found = await _records(gw)
        return len(found) >= n

    await wait_until(written, what=f"{n} call records written")
    return found


async def test_a_call_leaves_a_record_with_the_usage_and_cost_the_emulator_billed(
    gateway: RunningGateway, event_log: Path, question: Say
) -> None:
    gw, log = gateway, event_log
    before = datetime.now(UTC) - timedelta(seconds=1)
    result = await SimulatedCall(
        [WaitForAnswer(), question, WaitForAnswer()],
        CallOptions(webhook_url=f"{gw.url}/twilio/voice", from_number="+15557654321"),
    ).run()
    assert result.ok, result.failure_detail
    await wait_all_ended(gw)
    [record] = await _wait_written(gw, 1)

    assert record["call_sid"] == result.call_sid
    assert record["stream_sid"] == result.stream_sid
    assert record["outcome"] == "completed"
    assert record["number"] == "+15550100002" and record["profile"] == "default"
    assert record["caller"] == "+1********21"  # masked, never the number itself
    assert record["upstream_call_id"].startswith("rtc_")
    assert record["turns"] >= 2 and record["setup_ms"] > 0
    assert before <= datetime.fromisoformat(record["started_at"]) <= datetime.now(UTC)
    assert 0 < record["duration_s"] < 60
    assert record["latency"]["response_ms_p50"] > 0
    assert record["latency"]["outbound_added_ms_p99"] is not None

    billed = _billed(log)
    assert Usage.from_dict(record["usage"]) == billed
    assert billed.audio_out > 0 and billed.audio_in > 0
    expected = PriceTable.default().cost_usd("gpt-realtime", billed)
    assert expected is not None and expected > 0
    assert record["cost_usd"] == pytest.approx(expected)

    async with httpx.AsyncClient(base_url=gw.url, headers=AUTH) as client:
        one = (await client.get(f"/admin/records/{result.call_sid}")).json()
        usage = (await client.get("/admin/usage")).json()
        metrics = (await client.get("/metrics")).text
    assert one == record
    assert usage["total"]["calls"] == 1
    assert usage["total"]["cost_usd"] == pytest.approx(expected, abs=1e-6)
    assert [n["number"] for n in usage["numbers"]] == ["+15550100002"]
    assert 'gateway_call_records_total{result="written"} 1.0' in metrics
    assert "gateway_upstream_cost_usd_total" in metrics


async def test_admin_filters_and_errors(gateway: RunningGateway, question: Say) -> None:
    gw = gateway
    for to in ("+15550100002", BUDGET_LINE):
        await SimulatedCall(
            [WaitForAnswer(), Pause(300)],
            CallOptions(webhook_url=f"{gw.url}/twilio/voice", to_number=to),
        ).run()
    await wait_all_ended(gw)
    both = await _wait_written(gw, 2)
    assert len(both) == 2
    assert both[0]["started_at"] >= both[1]["started_at"]  # newest first
    only = await _records(gw, number=BUDGET_LINE)
    assert [r["number"] for r in only] == [BUDGET_LINE]
    assert await _records(gw, since=(datetime.now(UTC) + timedelta(hours=1)).isoformat()) == []
    assert len(await _records(gw, until="2999-01-01T00:00:00Z", limit="1")) == 1
    assert await _records(gw, outcome="transferred") == []
    async with httpx.AsyncClient(base_url=gw.url) as client:
        assert (await client.get("/admin/records")).status_code == 401
        bad = await client.get("/admin/records", params={"since": "yesterday"}, headers=AUTH)
        assert bad.status_code == 422 and "ISO 8601" in bad.text
        missing = await client.get("/admin/records/CA404", headers=AUTH)
        assert missing.status_code == 404
        usage = (await client.get("/admin/usage", headers=AUTH)).json()
    assert sorted(n["number"] for n in usage["numbers"]) == sorted(["+15550100002", BUDGET_LINE])


async def test_a_call_over_budget_gets_a_farewell_and_ends(
    gateway: RunningGateway, event_log: Path
) -> None:
    gw, log = gateway, event_log
    # The greeting alone costs more than the line's budget: the assistant is asked to wrap up,
    # says goodbye, and the gateway ends the call (no REST API configured: it closes the stream).
    result = await SimulatedCall(
        [WaitForAnswer(), Pause(15_000)],
        CallOptions(webhook_url=f"{gw.url}/twilio/voice", to_number=BUDGET_LINE),
    ).run()
    assert result.ended_by == "gateway", result.timeline
    await wait_all_ended(gw)
    [record] = await _wait_written(gw, 1)
    assert record["end_reason"].startswith("cost budget reached")
    assert record["cost_usd"] >= 0.0001
    kinds = [a["kind"] for a in record["actions"]]
    assert kinds == ["wrap_up", "hang_up", "hang_up_request"], record["actions"]
    assert record["actions"][-1]["ok"] is True
    # Two responses: the greeting, then the farewell the wrap-up asked for (heard in full).
    creates = [
        json.loads(line).get("event", {})
        for line in log.read_text().splitlines()
        if '"response.create"' in line
    ]
    assert len(creates) == 2 and "goodbye" in json.dumps(creates[1])
    # ... and the farewell was heard to its end: nothing cleared, the stream closed after it.
    assert not [e for e in result.timeline if e.kind == "clear"], result.timeline
    closed = result.timeline[-1]
    assert closed.kind == "failed" and "closed" in closed.detail, result.timeline
    assert closed.t_ms >= result.assistant[-1].end_ms
