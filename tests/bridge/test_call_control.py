"""Call control end to end: the model calls a built-in tool, the gateway executes it through
Twilio's REST API (a local stand-in of the Calls resource), the caller hears the farewell first.

Simulated Twilio caller (registered in the stand-in) -> real gateway (REST credentials set) ->
real emulator whose scripted model calls ``end_call`` or ``transfer_call`` after turn 1.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.app import gateway_state
from gateway.loadtest.caller import CallOptions, Pause, Say, SimulatedCall, WaitForAnswer
from gateway.loadtest.twilio_api import TwilioApiStandIn
from gateway.numbers import ProfileStore
from gateway.service import RunningGateway, running_gateway
from gateway.settings import Settings
from tests.support import wait_all_ended

pytestmark = pytest.mark.timeout(120)

ACCOUNT = "AC" + "3" * 32
TOKEN = "twilio-token-for-tests"
SALES = "+15551230002"
PROFILES = f"""
default:
  greeting: "Say hello."
  tools:
    end_call: true
    transfer_call:
      sales: {{number: "{SALES}", description: the sales team}}
"""


@pytest.fixture(scope="module")
def question() -> Say:
    return Say.from_text("Thanks, that is all, goodbye.")


@asynccontextmanager
async def gateway_with_tools(
    tmp_path: Path, tool: str, *, rest_url: str | None = None
) -> AsyncIterator[tuple[RunningGateway, Path]]:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(PROFILES)
    log = tmp_path / f"{tool}.jsonl"
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        profiles_file=profiles,
        twilio_auth_token=TOKEN,
        twilio_account_sid=ACCOUNT,
        twilio_api_base_url=rest_url or "http://127.0.0.1:9",
        records_url="off",
        carriers=["plivo"],  # served without its credential, for the test on another carrier
    )
    options = {"latency_ms": 100.0, "event_log": log, "tool_call": tool}
    async with running_gateway(
        settings, port=0, emulator_options=options, profiles=ProfileStore(profiles)
    ) as gw:
        yield gw, log


def _client_events(log: Path, kind: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("direction") == "client" and entry["event"].get("type") == kind:
            out.append(entry["event"])
    return out


async def _call(gw: RunningGateway, api: TwilioApiStandIn | None, say: Say) -> Any:
    options = CallOptions(
        webhook_url=f"{gw.url}/twilio/voice",
        auth_token=TOKEN,
        twilio_api=api,
        account_sid=ACCOUNT,
    )
    return await SimulatedCall([WaitForAnswer(), say, Pause(12_000)], options).run()


async def test_end_call_says_goodbye_then_hangs_up_through_the_rest_api(
    tmp_path: Path, question: Say
) -> None:
    api = TwilioApiStandIn(ACCOUNT, TOKEN)
    async with (
        api.serve() as rest,
        gateway_with_tools(tmp_path, "end_call", rest_url=rest.url) as (
            gw,
            log,
        ),
    ):
        result = await _call(gw, api, question)
        await wait_all_ended(gw)
        summary = gateway_state(gw.app).recent[-1]

    assert result.ended_by == "rest_hangup", result.timeline
    # The tools were declared to the model...
    [update] = _client_events(log, "session.update")
    names = [t["name"] for t in update["session"]["tools"]]
    assert names == ["end_call", "transfer_call"]
    # ... its call got an output, then a farewell was asked for and heard in full.
    [output] = [
        e for e in _client_events(log, "conversation.item.create")
        if e["item"]["type"] == "function_call_output"
    ]  # fmt: skip
    assert json.loads(output["item"]["output"])["ok"] is True
    creates = _client_events(log, "response.create")
    assert "goodbye" in json.dumps(creates[-1])
    assert not [e for e in result.timeline if e.kind == "clear"]
    hangup_at = next(e.t_ms for e in result.timeline if e.kind == "rest_hangup")
    assert result.assistant[-1].end_ms <= hangup_at
    # One authenticated REST request: Status=completed on this call.
    posts = [r for r in api.requests if r.method == "POST"]
    assert len(posts) == 1 and posts[0].auth_ok and posts[0].form == {"Status": "completed"}
    assert posts[0].path.endswith(f"/Calls/{result.call_sid}.json")
    # The call's summary tells the story.
    assert summary["outcome"] == "completed"
    assert summary["end_reason"].startswith("assistant ended the call")
    kinds = [(a["kind"], a.get("ok")) for a in summary["actions"]]
    assert kinds == [("end_call", True), ("hang_up", None), ("hang_up_request", True)]


async def test_transfer_call_dials_the_allowed_number(tmp_path: Path, question: Say) -> None:
    api = TwilioApiStandIn(ACCOUNT, TOKEN)
    async with (
        api.serve() as rest,
        gateway_with_tools(tmp_path, "transfer_call", rest_url=rest.url) as (gw, _),
    ):
        result = await _call(gw, api, question)
        await wait_all_ended(gw)
        summary = gateway_state(gw.app).recent[-1]
        metrics = gw.app.state.gateway.metrics.render().decode()
    assert result.ended_by == "rest_redirect", result.timeline
    assert result.dialed == [SALES]
    assert summary["outcome"] == "transferred"
    assert summary["end_reason"] == "transferred to sales"
    assert summary["actions"][0] == {**summary["actions"][0], "kind": "transfer_call", "ok": True}
    assert 'gateway_call_actions_total{kind="transfer",result="ok"} 1.0' in metrics
    assert 'gateway_calls_total{outcome="transferred"} 1.0' in metrics


async def test_a_refused_transfer_keeps_the_caller_with_the_assistant(
    tmp_path: Path, question: Say
) -> None:
    # The REST API answers 500 every time: the caller is not dropped; the assistant says so.
    api = TwilioApiStandIn(ACCOUNT, TOKEN)
    api.fail_next(500, times=10)
    async with (
        api.serve() as rest,
        gateway_with_tools(tmp_path, "transfer_call", rest_url=rest.url) as (gw, log),
    ):
        result = await _call(gw, api, question)
        await wait_all_ended(gw)
        summary = gateway_state(gw.app).recent[-1]
    assert result.ended_by == "caller" and result.ok, result.timeline
    kinds = [a["kind"] for a in summary["actions"]]
    assert kinds[:4] == ["transfer_call", "transfer", "transfer_request", "transfer_failed"]
    assert "HTTP 500" in summary["actions"][2]["error"]
    notes = [
        e["item"]["content"][0]["text"]
        for e in _client_events(log, "conversation.item.create")
        if e["item"].get("role") == "system"
    ]
    assert any("did not go through" in n for n in notes)
    assert summary["outcome"] == "completed"


async def test_without_rest_credentials_no_tools_are_offered(tmp_path: Path, question: Say) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(PROFILES)
    log = tmp_path / "events.jsonl"
    settings = Settings(_env_file=None, profiles_file=profiles, records_url="off")  # type: ignore[call-arg]
    async with running_gateway(
        settings,
        port=0,
        emulator_options={"latency_ms": 100.0, "event_log": log, "tool_call": "end_call"},
        profiles=ProfileStore(profiles),
    ) as gw:
        result = await SimulatedCall(
            [WaitForAnswer(), question, WaitForAnswer()],
            CallOptions(webhook_url=f"{gw.url}/twilio/voice"),
        ).run()
    assert result.ok and result.ended_by == "caller"
    [update] = _client_events(log, "session.update")
    assert "tools" not in update["session"]


async def test_a_call_on_another_carrier_is_offered_no_twilio_tools(
    tmp_path: Path, question: Say
) -> None:
    # Twilio's REST API is configured, but a Plivo call cannot be hung up through it: the model
    # gets no call-control tools, as on Twilio without REST credentials.
    async with gateway_with_tools(tmp_path, "end_call") as (gw, log):
        result = await SimulatedCall(
            [WaitForAnswer(), question, WaitForAnswer()],
            CallOptions(webhook_url=f"{gw.url}/plivo/answer", carrier="plivo"),
        ).run()
    assert result.ok and result.ended_by == "caller", (result.failure, result.failure_detail)
    [update] = _client_events(log, "session.update")
    assert "tools" not in update["session"]
