"""Call control: the built-in tools, the cost budget and the polite end of a call.

Pure and synchronous (sans-I/O), like :mod:`gateway.bridge.machine`: :meth:`CallControl.handle`
takes one input and returns the actions the call runner must execute, in order. Time comes in
with the inputs; nothing here reads a clock.

Why a machine of its own: ending or transferring a call is a small protocol spread over many
upstream events. The model asks for a tool inside a response; its function-call output may only
be sent once that response is done (the service refuses a second active response); then the
assistant must *say* goodbye or "transferring you", and only once the caller has heard it is
the carrier told to hang up or dial. A budget or the maximum duration ends a call the same way.

Phases::

    ACTIVE       the conversation goes on; tool calls are collected per response
    WRAPPING_UP  an end is decided: waiting for the farewell response to finish and be heard
    FINISHING    the end action (hang up / transfer) was issued; the call is about to stop

A wrap-up always ends: ``deadline`` (``wrap_up_s`` after it began) forces the end action even if
the farewell never comes (the caller kept talking, the response failed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from gateway.numbers import END_CALL, TRANSFER_CALL, TransferTarget

WRAP_UP_S = 20.0
"""How long a farewell may take before the call is ended anyway."""


class Phase(Enum):
    ACTIVE = "active"
    WRAPPING_UP = "wrapping_up"
    FINISHING = "finishing"


# --- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolCalled:
    """A completed ``function_call`` item of a response (``response.output_item.done``)."""

    response_id: str
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    response_id: str


@dataclass(frozen=True, slots=True)
class ResponseFinished:
    response_id: str


@dataclass(frozen=True, slots=True)
class AssistantQuiet:
    """Nothing is audible to the caller and no response is active (the turn machine says so)."""


@dataclass(frozen=True, slots=True)
class WrapUp:
    """End the call politely for a reason outside the conversation (budget, maximum duration)."""

    reason: str
    farewell: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes; lets the wrap-up deadline fire."""


@dataclass(frozen=True, slots=True)
class TransferFailed:
    """The carrier refused the transfer: the caller is still on the line with the assistant."""

    destination: str
    error: str


Input = (
    ToolCalled
    | ResponseStarted
    | ResponseFinished
    | AssistantQuiet
    | WrapUp
    | Tick
    | TransferFailed
)

# --- actions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendToolOutput:
    """``conversation.item.create`` of a ``function_call_output`` with ``output`` as JSON."""

    call_id: str
    output: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AddSystemNote:
    """A system message item: context for the model that the caller did not say."""

    text: str


@dataclass(frozen=True, slots=True)
class RequestResponse:
    """``response.create``, with instructions for this response only when given."""

    instructions: str | None = None


@dataclass(frozen=True, slots=True)
class HangUp:
    reason: str


@dataclass(frozen=True, slots=True)
class Transfer:
    destination: str
    number: str
    reason: str


@dataclass(frozen=True, slots=True)
class Note:
    """Bookkeeping for the call record: what was asked, and what the gateway did about it."""

    entry: dict[str, Any]


Action = SendToolOutput | AddSystemNote | RequestResponse | HangUp | Transfer | Note


@dataclass
class CallControl:
    """One per call. ``end_call`` / ``transfer`` are what the profile enables (and the gateway
    can execute); calls to anything else are answered with an error the model can read."""

    end_call: bool = False
    transfer: Mapping[str, TransferTarget] = field(default_factory=dict)
    wrap_up_s: float = WRAP_UP_S
    phase: Phase = Phase.ACTIVE
    deadline: float | None = None
    """When the wrap-up is forced to its end action (None unless wrapping up)."""
    _calls: dict[str, list[ToolCalled]] = field(default_factory=dict)
    _pending: HangUp | Transfer | None = None
    # The farewell of the current wrap-up: the first response created after it began.
    _farewell_id: str | None = None
    _farewell_done: bool = False

    def handle(self, event: Input, now: float) -> list[Action]:
        """Apply one input at time ``now`` (seconds, any monotonic origin)."""
        if isinstance(event, ToolCalled):
            self._calls.setdefault(event.response_id, []).append(event)
            return []
        if isinstance(event, ResponseFinished):
            return self._on_response_finished(event.response_id, now)
        if isinstance(event, ResponseStarted):
            if self.phase is Phase.WRAPPING_UP and self._farewell_id is None:
                self._farewell_id = event.response_id
            return []
        if isinstance(event, WrapUp):
            if self.phase is not Phase.ACTIVE:
                return []
            return [
                Note({"kind": "wrap_up", "reason": event.reason}),
                AddSystemNote(event.farewell),
                *self._begin_wrap_up(HangUp(event.reason), now, instructions=event.farewell),
            ]
        if isinstance(event, TransferFailed):
            if self.phase is not Phase.FINISHING:
                return []
            # Back to the conversation: the assistant announced a transfer that did not happen.
            self.phase = Phase.ACTIVE
            return [
                Note({"kind": "transfer_failed", "destination": event.destination}),
                AddSystemNote(
                    f"The transfer to {event.destination} did not go through. Apologise "
                    "briefly, and offer to help the caller yourself or to try again later."
                ),
                RequestResponse(),
            ]
        if isinstance(event, AssistantQuiet):
            if self.phase is Phase.WRAPPING_UP and self._farewell_done:
                return self._finish()
            return []
        # Tick
        if self.phase is Phase.WRAPPING_UP and self.deadline is not None and now >= self.deadline:
            return self._finish(forced=True)
        return []

    # --- internals ---------------------------------------------------------------------------

    def _on_response_finished(self, response_id: str, now: float) -> list[Action]:
        if self._farewell_id == response_id:
            self._farewell_done = True
        calls = self._calls.pop(response_id, [])
        actions: list[Action] = []
        wants_reply = False
        for call in calls:
            then: list[Action] = []
            out, reply = self._execute(call, now, then)
            # The output first: the farewell response must see the tool's result.
            actions.append(SendToolOutput(call.call_id, out))
            actions.extend(then)
            wants_reply = wants_reply or reply
        if wants_reply and not any(isinstance(a, RequestResponse) for a in actions):
            actions.append(RequestResponse())
        return actions

    def _execute(
        self, call: ToolCalled, now: float, actions: list[Action]
    ) -> tuple[dict[str, Any], bool]:
        """Decide one tool call; append its actions; return its output and whether the model
        should speak again (it must: a function call output gets no reply on its own)."""
        args = _arguments(call.arguments)
        entry: dict[str, Any] = {"kind": call.name, "call_id": call.call_id}
        if self.phase is not Phase.ACTIVE:
            entry.update(ok=False, error="the call is already ending")
            actions.append(Note(entry))
            return {"ok": False, "error": "The call is already ending."}, False
        if call.name == END_CALL and self.end_call:
            reason = str(args.get("reason") or "the assistant ended the call")[:200]
            entry.update(ok=True, reason=reason)
            actions.append(Note(entry))
            actions.extend(
                self._begin_wrap_up(
                    HangUp(f"assistant ended the call: {reason}"),
                    now,
                    instructions="Say a short, friendly goodbye to the caller now. "
                    "Do not ask anything else.",
                )
            )
            return {"ok": True, "result": "The call ends after your goodbye."}, False
        if call.name == TRANSFER_CALL and self.transfer:
            wanted = str(args.get("destination") or "").strip()
            name = _lookup(self.transfer, wanted)
            if name is None:
                entry.update(ok=False, destination=wanted[:80], error="not on the allow list")
                actions.append(Note(entry))
                allowed = ", ".join(sorted(self.transfer))
                return {
                    "ok": False,
                    "error": f"{wanted or 'That destination'} is not a destination this line "
                    f"can transfer to. The destinations are: {allowed}.",
                }, True
            target = self.transfer[name]
            entry.update(ok=True, destination=name, number=target.number)
            actions.append(Note(entry))
            actions.extend(
                self._begin_wrap_up(
                    Transfer(name, target.number, f"transferred to {name}"),
                    now,
                    instructions=f"Tell the caller in one short sentence that you are "
                    f"transferring them to {name} now.",
                )
            )
            return {"ok": True, "result": f"Transferring the caller to {name}."}, False
        entry.update(ok=False, error="unknown or disabled tool")
        actions.append(Note(entry))
        return {"ok": False, "error": f"There is no tool named {call.name!r} on this line."}, True

    def _begin_wrap_up(
        self, end: HangUp | Transfer, now: float, *, instructions: str
    ) -> list[Action]:
        self.phase = Phase.WRAPPING_UP
        self._pending = end
        self.deadline = now + self.wrap_up_s
        self._farewell_id, self._farewell_done = None, False
        return [RequestResponse(instructions)]

    def _finish(self, *, forced: bool = False) -> list[Action]:
        """The end action, once the farewell was heard or (``forced``) the deadline passed."""
        end = self._pending
        assert end is not None
        self.phase = Phase.FINISHING
        self.deadline = None
        self._pending = None
        entry: dict[str, Any] = {
            "kind": "hang_up" if isinstance(end, HangUp) else "transfer",
            "reason": end.reason,
        }
        if forced:
            entry["forced_after_s"] = self.wrap_up_s
        return [Note(entry), end]


def _arguments(raw: str) -> dict[str, Any]:
    """The call's arguments object; a malformed one counts as empty (the model can retry)."""
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _lookup(targets: Mapping[str, TransferTarget], wanted: str) -> str | None:
    """The allow-list entry named ``wanted`` (any case), or whose number it is; else None."""
    folded = wanted.casefold()
    for name, target in targets.items():
        if name.casefold() == folded or target.number == wanted.replace(" ", ""):
            return name
    return None


__all__ = [
    "Action",
    "AddSystemNote",
    "AssistantQuiet",
    "CallControl",
    "HangUp",
    "Input",
    "Note",
    "Phase",
    "RequestResponse",
    "ResponseFinished",
    "ResponseStarted",
    "SendToolOutput",
    "Tick",
    "ToolCalled",
    "Transfer",
    "TransferFailed",
    "WrapUp",
]
