"""Outbound calls end to end: ``POST /calls`` -> the gateway -> the Twilio REST stand-in, which
rings a simulated callee, fires the status and AMD callbacks, and streams into the gateway
(real emulator upstream, real HTTP and websockets on loopback). Plus the :class:`Dialer`'s own
rules, which need no network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from gateway.app import AMD_PATH, STATUS_PATH, gateway_state
from gateway.loadtest.script import Pause, Say, WaitForAnswer
from gateway.loadtest.twilio_api import Callee, TwilioApiStandIn
from gateway.numbers import parse_profiles
from gateway.outbound import Dialer, OutboundRefused, with_variables
from gateway.service import RunningGateway
from gateway.serving import RunningServer
from gateway.telephony.signature import sign
from tests.support import emulator_sessions, wait_until

pytestmark = pytest.mark.timeout(90)

ACCOUNT = "AC" + "0" * 32
TOKEN = "stand-in-auth-token"
ADMIN = "admin-token-for-outbound"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
FROM = "+15550100001"
HUMAN = "+15550200001"
MACHINE = "+15550200002"
BUSY = "+15550200003"
NO_ANSWER = "+15550200004"
FAILED = "+15550200005"
LOST = "+15550200006"
HANG_UP_PROFILE = "+15550009999"
ONE_AT_A_TIME = "+15550008888"
VOICEMAIL = "Hello, this is Example Dental about your appointment tomorrow. Please call us back."

PROFILES = f"""
default:
  instructions: "You call {{name}} about their appointment."
  voice: alloy
  greeting: "Say hello and name the appointment."
  outbound:
    speak_first: true
    on_machine: voicemail
    voicemail_message: "{VOICEMAIL}"
    detection_timeout_s: 3
    on_detection_lost: hang_up
numbers:
  "{HANG_UP_PROFILE}":
    outbound: {{on_machine: hang_up}}
  "{ONE_AT_A_TIME}":
    outbound: {{max_concurrent: 1}}
"""


def _beep() -> Say:
    t = np.arange(int(0.4 * 8000)) / 8000
    return Say.from_pcm16((np.sin(2 * np.pi * 1000 * t) * 12000).astype(np.int16), text="beep")


@pytest.fixture
async def twilio() -> AsyncIterator[tuple[TwilioApiStandIn, RunningServer]]:
    stand_in = TwilioApiStandIn(ACCOUNT, TOKEN)
    async with stand_in.serve() as server:
        yield stand_in, server


@pytest.fixture
def profiles_yaml() -> str:
    return PROFILES


@pytest.fixture
def gateway_settings(twilio: tuple[TwilioApiStandIn, RunningServer]) -> dict[str, Any]:
    return {
        "max_calls": 4,
        "admin_token": SecretStr(ADMIN),
        "twilio_account_sid": ACCOUNT,
        "twilio_auth_token": SecretStr(TOKEN),
        "twilio_api_base_url": twilio[1].url,
    }


async def _place(gw: RunningGateway, **body: Any) -> httpx.Response:
    body.setdefault("from", FROM)
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{gw.url}/calls", json=body, headers={"Authorization": f"Bearer {ADMIN}"}
        )


async def _view(gw: RunningGateway, call_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        resp = await http.get(
            f"{gw.url}/calls/{call_id}", headers={"Authorization": f"Bearer {ADMIN}"}
        )
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


async def _record(gw: RunningGateway, call_sid: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def saved() -> bool:
        async with httpx.AsyncClient() as http:
            resp = await http.get(
                f"{gw.url}/admin/records/{call_sid}", headers={"Authorization": f"Bearer {ADMIN}"}
            )
        if resp.status_code == 200:
            found.update(resp.json())
        return bool(found)

    await wait_until(saved, 10, what=f"the record of {call_sid}", interval=0.05)
    return found


async def test_human_answers_and_hears_the_assistant_after_the_verdict(
    gateway: RunningGateway, twilio: tuple[TwilioApiStandIn, RunningServer]
) -> None:
    stand_in, _ = twilio
    stand_in.callee(
        HUMAN,
        Callee(answered_by="human", amd_delay_s=0.5, script=(WaitForAnswer(timeout_ms=20_000),)),
    )
    resp = await _place(gateway, to=HUMAN, variables={"name": "Ada"})
    assert resp.status_code == 201, resp.text
    placed = resp.json()
    assert placed["call_sid"].startswith("CA") and placed["status"] == "queued"

    result = await stand_in.placed_call(placed["call_sid"])
    assert result is not None and result.ok, result and result.failure_detail
    first = next(e for e in result.timeline if e.kind == "assistant_start")
    assert first.t_ms >= 500  # nothing was said before who answered was known

    view = await _view(gateway, placed["id"])
    assert view["answered_by"] == "human"
    # The create's answer and the first callback race (both say queued); the order stands.
    statuses = [e["status"] for e in view["events"]]
    assert list(dict.fromkeys(statuses)) == ["queued", "ringing", "in-progress", "completed"]
    record = await _record(gateway, placed["call_sid"])
    assert record["direction"] == "outbound" and record["answered_by"] == "human"
    assert record["answered_by_ms"] >= 400 and record["voicemail_left"] is None
    [answered] = [a for a in record["actions"] if a["kind"] == "answered_by"]
    assert answered["answered_by"] == "human" and answered["decision"] == "converse"
    assert answered["delay_ms"] >= 400
    [session] = await emulator_sessions(gateway)
    assert session["session"]["instructions"].startswith("You call Ada about")
    # The stand-in's callbacks were signed and the gateway took every one.
    assert {c.status_code for c in stand_in.callbacks} == {204}


async def test_voicemail_message_is_heard_after_the_beep_then_the_call_ends(
    gateway: RunningGateway, twilio: tuple[TwilioApiStandIn, RunningServer]
) -> None:
    stand_in, _ = twilio
    greeting = Say.from_text("You have reached Ada. Leave a message after the tone.")
    beep = _beep()
    verdict_s = (greeting.duration_ms + beep.duration_ms) / 1000 + 0.1
    stand_in.callee(
        MACHINE,
        Callee(
            answered_by="machine_end_beep",
            amd_delay_s=verdict_s,
            script=(greeting, beep, Pause(30_000)),
        ),
    )
    resp = await _place(gateway, to=MACHINE)
    assert resp.status_code == 201, resp.text
    placed = resp.json()

    result = await stand_in.placed_call(placed["call_sid"])
    assert result is not None
    assert result.ended_by == "rest_hangup", (result.failure, result.failure_detail)
    heard = [e for e in result.timeline if e.kind == "assistant_start"]
    assert heard and heard[0].t_ms >= verdict_s * 1000  # after the beep, not over the greeting
    record = await _record(gateway, placed["call_sid"])
    kinds = {a["kind"]: a for a in record["actions"]}
    assert kinds["answered_by"]["decision"] == "voicemail"
    assert record["voicemail_left"] is True and record["answered_by"] == "machine_end_beep"
    assert kinds["hang_up"]["reason"] == "voicemail left"
    assert "forced_after_s" not in kinds["hang_up"]


async def test_machine_with_a_hang_up_rule_opens_no_upstream_session(
    gateway: RunningGateway, twilio: tuple[TwilioApiStandIn, RunningServer]
) -> None:
    stand_in, _ = twilio
    stand_in.callee(
        MACHINE, Callee(answered_by="machine_start", amd_delay_s=0.2, script=(Pause(30_000),))
    )
    resp = await _place(gateway, to=MACHINE, profile=HANG_UP_PROFILE)
    assert resp.status_code == 201, resp.text
    result = await stand_in.placed_call(resp.json()["call_sid"])
    assert result is not None and result.ended_by == "gateway"
    assert result.media_received == 0
    assert await emulator_sessions(gateway) == []
    record = await _record(gateway, resp.json()["call_sid"])
    assert record["outcome"] == "machine"


async def test_lost_amd_callback_applies_the_profile_rule(
    gateway: RunningGateway, twilio: tuple[TwilioApiStandIn, RunningServer]
) -> None:
    stand_in, _ = twilio
    stand_in.callee(LOST, Callee(amd_lost=True, script=(Pause(30_000),)))
    resp = await _place(gateway, to=LOST)
    result = await stand_in.placed_call(resp.json()["call_sid"])
    assert result is not None and result.ended_by == "gateway"
    record = await _record(gateway, resp.json()["call_sid"])
    assert record["outcome"] == "detection_lost"
    assert await emulator_sessions(gateway) == []


@pytest.mark.parametrize(
    ("number", "status"), [(BUSY, "busy"), (NO_ANSWER, "no-answer"), (FAILED, "failed")]
)
async def test_unanswered_calls_are_recorded_with_their_status_and_cost_nothing(
    gateway: RunningGateway,
    twilio: tuple[TwilioApiStandIn, RunningServer],
    number: str,
    status: str,
) -> None:
    stand_in, _ = twilio
    stand_in.callee(number, Callee(answer=status))  # type: ignore[arg-type]
    resp = await _place(gateway, to=number)
    assert resp.status_code == 201, resp.text
    placed = resp.json()
    assert await stand_in.placed_call(placed["call_sid"]) is None
    view = await _view(gateway, placed["id"])
    assert view["status"] == status
    record = await _record(gateway, placed["call_sid"])
    assert record["outcome"] == status and record["direction"] == "outbound"
    assert record["cost_usd"] == 0.0 and record["usage"]["audio_in"] == 0
    async with httpx.AsyncClient() as http:
        usage = (await http.get(f"{gateway.url}/admin/usage", headers=AUTH)).json()
        only_in = await http.get(f"{gateway.url}/admin/usage?direction=inbound", headers=AUTH)
        bad = await http.get(f"{gateway.url}/admin/usage?direction=sideways", headers=AUTH)
    assert usage["directions"]["outbound"]["calls"] == 1
    assert usage["directions"]["outbound"]["unpriced_calls"] == 0
    assert usage["directions"]["inbound"]["calls"] == 0
    assert only_in.json()["numbers"] == [] and list(only_in.json()["directions"]) == ["inbound"]
    assert bad.status_code == 422
    assert await emulator_sessions(gateway) == []
    state = gateway_state(gateway.app)
    assert state.admissions.load(state.wall_clock()) == 0  # the reserved slot is free again


async def test_two_requests_at_once_cannot_both_take_the_last_slot(
    gateway: RunningGateway, twilio: tuple[TwilioApiStandIn, RunningServer]
) -> None:
    stand_in, _ = twilio
    stand_in.callee(BUSY, Callee(answer="busy", ring_s=0.3))
    stand_in.callee(NO_ANSWER, Callee(answer="no-answer", ring_s=0.3))
    first, second = await asyncio.gather(
        _place(gateway, to=BUSY, profile=ONE_AT_A_TIME),
        _place(gateway, to=NO_ANSWER, profile=ONE_AT_A_TIME),
    )
    assert sorted([first.status_code, second.status_code]) == [201, 429]
    refused = first if first.status_code == 429 else second
    assert "already in progress" in refused.json()["error"] and refused.headers["retry-after"]
    placed = (second if refused is first else first).json()
    await stand_in.placed_call(placed["call_sid"])


async def test_a_forged_callback_is_refused_and_changes_nothing(
    gateway: RunningGateway, twilio: tuple[TwilioApiStandIn, RunningServer]
) -> None:
    stand_in, _ = twilio
    stand_in.callee(BUSY, Callee(answer="busy", ring_s=0.5))
    placed = (await _place(gateway, to=BUSY)).json()
    before = await _view(gateway, placed["id"])
    form = {"CallSid": placed["call_sid"], "CallStatus": "completed", "AnsweredBy": "human"}
    async with httpx.AsyncClient() as http:
        for path in (STATUS_PATH, AMD_PATH):
            url = f"{gateway.url}{path}?call={placed['id']}"
            forged = sign("not-the-token", url, form)
            resp = await http.post(url, data=form, headers={"X-Twilio-Signature": forged})
            assert resp.status_code == 403
            resp = await http.post(url, data=form)
            assert resp.status_code == 403
    after = await _view(gateway, placed["id"])
    assert after["answered_by"] is None
    assert after["events"][: len(before["events"])] == before["events"]
    assert "completed" not in [e["status"] for e in after["events"]]
    await stand_in.placed_call(placed["call_sid"])


async def test_bad_requests_are_refused_with_a_reason(
    gateway: RunningGateway, twilio: tuple[TwilioApiStandIn, RunningServer]
) -> None:
    bad_to = await _place(gateway, to="5551234")
    assert bad_to.status_code == 422 and "E.164" in bad_to.json()["error"]
    bad_from = await _place(gateway, to=HUMAN, **{"from": "nope"})
    assert bad_from.status_code == 422
    unknown = await _place(gateway, to=HUMAN, profile="+15557777777")
    assert unknown.status_code == 422 and "no profile" in unknown.json()["error"]
    bad_vars = await _place(gateway, to=HUMAN, variables={"not a name": "x"})
    assert bad_vars.status_code == 422
    async with httpx.AsyncClient() as http:
        anonymous = await http.post(f"{gateway.url}/calls", json={"to": HUMAN, "from": FROM})
    assert anonymous.status_code == 401
    assert twilio[0].requests == []  # nothing reached Twilio


async def test_without_twilio_credentials_placing_a_call_is_a_409(
    twilio: tuple[TwilioApiStandIn, RunningServer], tmp_path: Any
) -> None:
    from gateway.service import running_gateway
    from tests.support import settings

    async with running_gateway(settings(admin_token=SecretStr(ADMIN)), port=0) as gw:
        resp = await _place(gw, to=HUMAN)
    assert resp.status_code == 409
    assert "TWILIO_ACCOUNT_SID" in resp.json()["error"]


# --- the dialer's own rules ---------------------------------------------------------------------


def _profiles(outbound: str) -> Any:
    import yaml

    return parse_profiles(yaml.safe_load(f"default:\n  outbound: {outbound}\n"), source="test")


def test_the_concurrent_limit_refuses_with_429_until_a_call_is_over() -> None:
    profiles = _profiles("{max_concurrent: 1}")
    dialer = Dialer()
    profile = dialer.check(profiles, HUMAN, FROM, None, now=0.0)
    call = dialer.placing(HUMAN, FROM, profile, {}, now=0.0, wall=0.0)
    with pytest.raises(OutboundRefused) as refused:
        dialer.check(profiles, HUMAN, FROM, "default", now=0.0)
    assert refused.value.status == 429
    dialer.placed(call, "CA1", "queued", wall=0.0)
    assert dialer.status(call, {"CallStatus": "busy", "CallSid": "CA1"}, wall=1.0)
    dialer.check(profiles, HUMAN, FROM, "default", now=0.0)


def test_pacing_spaces_calls_by_the_profile_rate() -> None:
    profiles = _profiles("{calls_per_second: 2}")
    dialer = Dialer()
    for _ in range(2):  # a burst of max(1, rate)
        profile = dialer.check(profiles, HUMAN, FROM, None, now=10.0)
        dialer.placing(HUMAN, FROM, profile, {}, now=10.0, wall=0.0)
    with pytest.raises(OutboundRefused) as refused:
        dialer.check(profiles, HUMAN, FROM, None, now=10.0)
    assert refused.value.status == 429
    assert refused.value.retry_after_s == pytest.approx(0.5)
    dialer.check(profiles, HUMAN, FROM, None, now=10.5)


def test_a_late_status_after_the_final_one_changes_nothing() -> None:
    dialer = Dialer()
    profile = dialer.check(_profiles("{}"), HUMAN, FROM, None, now=0.0)
    call = dialer.placing(HUMAN, FROM, profile, {}, now=0.0, wall=0.0)
    dialer.placed(call, "CA1", "queued", wall=0.0)
    assert dialer.status(call, {"CallStatus": "no-answer"}, wall=1.0)
    assert not dialer.status(call, {"CallStatus": "ringing"}, wall=2.0)
    assert call.status == "no-answer"


def test_callbacks_that_beat_the_creates_answer_are_not_undone_by_it() -> None:
    dialer = Dialer()
    profile = dialer.check(_profiles("{}"), HUMAN, FROM, None, now=0.0)
    call = dialer.placing(HUMAN, FROM, profile, {}, now=0.0, wall=0.0)
    assert dialer.status(call, {"CallSid": "CA1", "CallStatus": "busy"}, wall=0.5)
    dialer.placed(call, "CA1", "queued", wall=1.0)  # Twilio's answer to the create, late
    assert call.status == "busy" and [e["status"] for e in call.events] == ["busy"]
    assert dialer.by_sid("CA1") is call


def test_only_calls_that_are_over_are_forgotten() -> None:
    dialer = Dialer(max_kept=2)
    profile = dialer.check(_profiles("{}"), HUMAN, FROM, None, now=0.0)
    live = dialer.placing(HUMAN, FROM, profile, {}, now=0.0, wall=0.0)
    over = dialer.placing(HUMAN, FROM, profile, {}, now=0.0, wall=0.0)
    dialer.placed(over, "CA2", "queued", wall=0.0)
    dialer.status(over, {"CallStatus": "busy"}, wall=1.0)
    newest = dialer.placing(HUMAN, FROM, profile, {}, now=0.0, wall=0.0)
    assert dialer.get(live.id) is live and dialer.get(newest.id) is newest
    assert dialer.get(over.id) is None and dialer.by_sid("CA2") is None


def test_variables_fill_placeholders_and_are_listed() -> None:
    profile = _profiles("{}").default.model_copy(update={"instructions": "Call {name} at {time}."})
    merged = with_variables(profile, {"name": "Ada", "time": "9:00"})
    assert merged.instructions.startswith("Call Ada at 9:00.")
    assert "- name: Ada" in merged.instructions


async def test_the_cli_places_a_call_and_follows_it_to_its_end(
    gateway: RunningGateway,
    twilio: tuple[TwilioApiStandIn, RunningServer],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app

    stand_in, _ = twilio
    stand_in.callee(BUSY, Callee(answer="busy"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", ADMIN)
    args = ["call", BUSY, "--from-number", FROM, "--var", "name=Ada", "--gateway", gateway.url]
    # The CLI blocks on its HTTP calls; the gateway it calls runs on this test's loop.
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("call OB") and "(Twilio CA" in lines[0]
    assert lines[-1].strip() == "busy"
    bad = await asyncio.to_thread(
        CliRunner().invoke, app, ["call", "555", "--from-number", FROM, "--gateway", gateway.url]
    )
    assert bad.exit_code == 1 and "E.164" in bad.output


async def test_an_opted_out_number_is_never_called(
    gateway: RunningGateway, twilio: tuple[TwilioApiStandIn, RunningServer]
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, headers=AUTH) as http:
        added = await http.put(f"/admin/opt-outs/{HUMAN}", json={"reason": "asked on a call"})
        assert added.status_code == 204
        assert (await http.put("/admin/opt-outs/12345")).status_code == 422
        listed = (await http.get("/admin/opt-outs")).json()["opt_outs"]
        assert [(o["number"], o["reason"]) for o in listed] == [(HUMAN, "asked on a call")]
        refused = await _place(gateway, to=HUMAN)
        assert refused.status_code == 403 and "opt-out" in refused.json()["error"]
        assert twilio[0].requests == []  # Twilio was never asked
        assert (await http.delete(f"/admin/opt-outs/{HUMAN}")).status_code == 204
        assert (await http.delete(f"/admin/opt-outs/{HUMAN}")).status_code == 404
