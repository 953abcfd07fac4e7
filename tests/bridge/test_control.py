"""The call-control machine: tools, wrap-ups and their deadline, with an explicit clock."""

from __future__ import annotations

import json

import pytest

from gateway.bridge import control as c
from gateway.numbers import TransferTarget

SALES = TransferTarget(number="+15551230002", description="the sales team")


def machine(**kw: object) -> c.CallControl:
    return c.CallControl(end_call=True, transfer={"sales": SALES}, **kw)  # type: ignore[arg-type]


def kinds(actions: list[c.Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def tool(name: str, args: dict[str, object] | str, rid: str = "resp_1") -> c.ToolCalled:
    raw = args if isinstance(args, str) else json.dumps(args)
    return c.ToolCalled(rid, f"call_{name}", name, raw)


def test_tool_outputs_wait_for_the_response_that_asked() -> None:
    m = machine()
    assert m.handle(tool("end_call", {"reason": "caller said bye"}), 0.0) == []
    assert m.phase is c.Phase.ACTIVE
    acts = m.handle(c.ResponseFinished("resp_1"), 1.0)
    assert kinds(acts) == ["SendToolOutput", "Note", "RequestResponse"]
    out = acts[0]
    assert isinstance(out, c.SendToolOutput) and out.output["ok"] is True
    assert isinstance(acts[2], c.RequestResponse) and "goodbye" in (acts[2].instructions or "")
    assert m.phase is c.Phase.WRAPPING_UP and m.deadline == 1.0 + c.WRAP_UP_S


def test_end_call_hangs_up_only_after_the_farewell_was_heard() -> None:
    m = machine()
    m.handle(tool("end_call", {}), 0.0)
    m.handle(c.ResponseFinished("resp_1"), 0.0)
    # Quiet before the farewell even started: not yet.
    assert m.handle(c.AssistantQuiet(), 0.1) == []
    m.handle(c.ResponseStarted("resp_bye"), 0.2)
    assert m.handle(c.AssistantQuiet(), 0.3) == []  # still speaking
    m.handle(c.ResponseFinished("resp_bye"), 2.0)
    acts = m.handle(c.AssistantQuiet(), 3.0)
    assert kinds(acts) == ["Note", "HangUp"]
    hang = acts[1]
    assert isinstance(hang, c.HangUp) and hang.reason.startswith("assistant ended the call")
    assert m.phase is c.Phase.FINISHING
    assert m.handle(c.AssistantQuiet(), 4.0) == []  # once


def test_a_response_of_someone_else_does_not_count_as_the_farewell() -> None:
    m = machine()
    m.handle(c.ResponseStarted("resp_1"), 0.0)  # before the wrap-up: ignored
    m.handle(tool("end_call", {}), 0.0)
    m.handle(c.ResponseFinished("resp_1"), 0.5)
    assert m.handle(c.AssistantQuiet(), 0.6) == []


def test_the_deadline_forces_the_end_when_no_farewell_comes() -> None:
    m = machine(wrap_up_s=5.0)
    m.handle(tool("end_call", {}), 0.0)
    m.handle(c.ResponseFinished("resp_1"), 10.0)
    assert m.handle(c.Tick(), 14.9) == []
    acts = m.handle(c.Tick(), 15.0)
    assert kinds(acts) == ["Note", "HangUp"]
    note = acts[0]
    assert isinstance(note, c.Note) and note.entry["forced_after_s"] == 5.0
    assert m.deadline is None


def test_transfer_to_an_allowed_destination_by_name_or_number() -> None:
    for wanted in ("sales", "SALES", "+1 555 123 0002"):
        m = machine()
        m.handle(tool("transfer_call", {"destination": wanted}), 0.0)
        acts = m.handle(c.ResponseFinished("resp_1"), 0.0)
        assert kinds(acts) == ["SendToolOutput", "Note", "RequestResponse"]
        m.handle(c.ResponseStarted("resp_2"), 0.1)
        m.handle(c.ResponseFinished("resp_2"), 0.2)
        end = m.handle(c.AssistantQuiet(), 0.3)[-1]
        assert end == c.Transfer("sales", "+15551230002", "transferred to sales")


def test_transfer_off_the_allow_list_is_refused_and_the_model_is_told() -> None:
    m = machine()
    m.handle(tool("transfer_call", {"destination": "+15559999999"}), 0.0)
    acts = m.handle(c.ResponseFinished("resp_1"), 0.0)
    assert kinds(acts) == ["SendToolOutput", "Note", "RequestResponse"]
    out, note, again = acts
    assert isinstance(out, c.SendToolOutput) and out.output["ok"] is False
    assert "sales" in out.output["error"]
    assert isinstance(note, c.Note) and note.entry["ok"] is False
    assert again == c.RequestResponse(None)
    assert m.phase is c.Phase.ACTIVE


@pytest.mark.parametrize(
    ("name", "args"),
    [("transfer_call", {"destination": "sales"}), ("lookup_weather", {}), ("end_call", "{oops")],
)
def test_disabled_or_unknown_tools_get_an_error_output(name: str, args: object) -> None:
    m = c.CallControl(end_call=name == "end_call")  # no transfer destinations
    m.handle(tool(name, args), 0.0)  # type: ignore[arg-type]
    acts = m.handle(c.ResponseFinished("resp_1"), 0.0)
    out = acts[0]
    assert isinstance(out, c.SendToolOutput)
    if name == "end_call":  # malformed arguments still end the call (the reason is optional)
        assert out.output["ok"] is True
    else:
        assert out.output["ok"] is False and m.phase is c.Phase.ACTIVE


def test_a_second_end_while_ending_is_refused_without_a_new_response() -> None:
    m = machine()
    m.handle(tool("end_call", {}, "r1"), 0.0)
    m.handle(c.ResponseFinished("r1"), 0.0)
    m.handle(tool("transfer_call", {"destination": "sales"}, "r2"), 0.1)
    acts = m.handle(c.ResponseFinished("r2"), 0.2)
    assert kinds(acts) == ["SendToolOutput", "Note"]
    assert isinstance(acts[0], c.SendToolOutput) and acts[0].output["ok"] is False


def test_wrap_up_for_budget_asks_for_a_farewell_then_hangs_up() -> None:
    m = machine()
    acts = m.handle(c.WrapUp("cost budget reached", "Say goodbye now."), 5.0)
    assert kinds(acts) == ["Note", "AddSystemNote", "RequestResponse"]
    assert m.handle(c.WrapUp("again", "x"), 5.1) == []  # one wrap-up per call
    m.handle(c.ResponseStarted("bye"), 5.2)
    m.handle(c.ResponseFinished("bye"), 6.0)
    assert m.handle(c.AssistantQuiet(), 7.0)[-1] == c.HangUp("cost budget reached")


def test_several_tool_calls_in_one_response_get_one_reply() -> None:
    m = machine()
    m.handle(tool("lookup", {}), 0.0)
    m.handle(c.ToolCalled("resp_1", "call_2", "other", "{}"), 0.0)
    acts = m.handle(c.ResponseFinished("resp_1"), 0.0)
    assert kinds(acts).count("RequestResponse") == 1
    assert kinds(acts).count("SendToolOutput") == 2


def test_a_failed_transfer_returns_to_the_conversation() -> None:
    m = machine()
    m.handle(tool("transfer_call", {"destination": "sales"}), 0.0)
    m.handle(c.ResponseFinished("resp_1"), 0.0)
    m.handle(c.ResponseStarted("r2"), 0.1)
    m.handle(c.ResponseFinished("r2"), 0.2)
    assert isinstance(m.handle(c.AssistantQuiet(), 0.3)[-1], c.Transfer)
    acts = m.handle(c.TransferFailed("sales", "HTTP 500"), 0.4)
    assert kinds(acts) == ["Note", "AddSystemNote", "RequestResponse"]
    assert m.phase is c.Phase.ACTIVE and m.deadline is None
    # and the assistant can still end the call afterwards
    m.handle(tool("end_call", {}, "r3"), 1.0)
    assert kinds(m.handle(c.ResponseFinished("r3"), 1.1))[-1] == "RequestResponse"
    assert m.phase is c.Phase.WRAPPING_UP
    assert m.handle(c.TransferFailed("sales", "late"), 1.2) == []
