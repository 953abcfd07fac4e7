"""Outbound calls: the requests to place them, their limits, and their progress. Pure.

``POST /calls`` asks the :class:`Dialer` whether a call may be placed (:meth:`Dialer.check`:
the number, the profile, its concurrent-call limit and its pacing), records it
(:meth:`Dialer.placing`, then :meth:`Dialer.placed` once Twilio gave it a SID), and from then on
feeds it what Twilio reports: :meth:`Dialer.status` (the status callback: initiated, ringing,
in-progress, then one final status) and :meth:`Dialer.amd` (the answering machine verdict).
The call's media stream, once it starts, listens for the verdict (:meth:`Dialer.stream_bound`)
and tells the dialer it ended. ``GET /calls/{id}`` reads :meth:`OutboundCall.view`.

Every method takes ``now`` (monotonic seconds, for pacing) or ``wall`` (epoch seconds, for
what is shown); nothing here reads a clock or does I/O. The table is per process: the media
stream of an outbound call must reach the replica that placed it (docs/outbound.md).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from gateway.bridge.answering import AnswerRules
from gateway.errors import GatewayError
from gateway.numbers import E164, Profile, Profiles

__all__ = [
    "FINAL_STATUSES",
    "MAX_KEPT",
    "Dialer",
    "OutboundCall",
    "OutboundRefused",
    "answer_rules",
    "with_variables",
]

FINAL_STATUSES: Final = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
MAX_KEPT: Final = 10_000
"""Finished outbound calls kept for ``GET /calls/{id}``, oldest forgotten first."""
MAX_VARIABLES: Final = 20
MAX_VARIABLE_CHARS: Final = 500


class OutboundRefused(GatewayError):
    """A call that may not be placed: ``status`` is the HTTP answer, the text says why."""

    def __init__(self, status: int, why: str, retry_after_s: float | None = None) -> None:
        super().__init__(why)
        self.status = status
        self.retry_after_s = retry_after_s


@dataclass
class OutboundCall:
    """One outbound call as the gateway knows it."""

    id: str
    to: str
    from_: str
    profile: str
    variables: dict[str, str]
    created_wall: float
    call_sid: str | None = None
    status: str = "placing"
    events: list[dict[str, Any]] = field(default_factory=list)
    answered_by: str | None = None
    detection_ms: int | None = None
    """Twilio's ``MachineDetectionDuration``: how long its detection listened."""
    streamed: bool = False
    stream_ended: bool = False
    error: str | None = None
    listener: Callable[[str], None] | None = field(default=None, repr=False)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def view(self) -> dict[str, Any]:
        """A JSON-able view for ``GET /calls/{id}`` (the callee's number is the caller's own
        input, so it is shown whole)."""
        return {
            "id": self.id,
            "call_sid": self.call_sid,
            "to": self.to,
            "from": self.from_,
            "profile": self.profile,
            "variables": dict(self.variables),
            "created_at": _iso(self.created_wall),
            "status": self.status,
            "events": list(self.events),
            "answered_by": self.answered_by,
            "detection_ms": self.detection_ms,
            "streamed": self.streamed,
            "error": self.error,
        }


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat()


def answer_rules(profile: Profile) -> AnswerRules:
    """The profile's outbound rules as the answering gate's values."""
    o = profile.outbound
    return AnswerRules(
        speak_first=o.speak_first,
        on_machine=o.on_machine,
        on_fax=o.on_fax,
        on_unknown=o.on_unknown,
        on_detection_lost=o.on_detection_lost,
        voicemail_message=o.voicemail_message,
        detection_timeout_s=float(o.detection_timeout_s),
    )


def with_variables(profile: Profile, variables: Mapping[str, str]) -> Profile:
    """The profile with the call's variables in its instructions: each ``{name}`` replaced,
    and all of them listed at the end, so the model has them even where the text names none."""
    if not variables:
        return profile
    text = profile.instructions
    for name, value in variables.items():
        text = text.replace("{" + name + "}", value)
    listed = "\n".join(f"- {name}: {value}" for name, value in variables.items())
    text = f"{text}\n\nDetails of this call:\n{listed}"
    return profile.model_copy(update={"instructions": text})


def check_variables(raw: object) -> dict[str, str]:
    """Validate per-call variables: names of letters, digits and ``_``, short string values."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise OutboundRefused(422, "variables must be an object of name: value strings")
    if len(raw) > MAX_VARIABLES:
        raise OutboundRefused(422, f"at most {MAX_VARIABLES} variables")
    out: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise OutboundRefused(422, f"variable name {name!r}: use letters, digits and '_'")
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise OutboundRefused(422, f"variable {name}: the value must be a string")
        text = str(value)
        if len(text) > MAX_VARIABLE_CHARS:
            raise OutboundRefused(422, f"variable {name}: longer than {MAX_VARIABLE_CHARS}")
        out[name] = text
    return out


@dataclass
class _Pacer:
    """A token bucket of ``rate`` calls per second holding ``max(1, rate)``."""

    rate: float
    tokens: float = -1.0
    at: float = 0.0

    def wait_s(self, now: float) -> float:
        """0 when a call may go now, else how long until one may."""
        burst = max(1.0, self.rate)
        if self.tokens < 0:
            self.tokens, self.at = burst, now
        self.tokens = min(burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self) -> None:
        self.tokens -= 1.0


class Dialer:
    """The outbound calls of this process, by id (``OB...``) and by Twilio call SID."""

    def __init__(self, *, max_kept: int = MAX_KEPT) -> None:
        self.max_kept = max_kept
        self._calls: OrderedDict[str, OutboundCall] = OrderedDict()
        self._by_sid: dict[str, str] = {}
        self._pacers: dict[str, _Pacer] = {}

    def get(self, call_id: str) -> OutboundCall | None:
        return self._calls.get(call_id)

    def by_sid(self, call_sid: str) -> OutboundCall | None:
        found = self._by_sid.get(call_sid)
        return None if found is None else self._calls.get(found)

    def active(self, profile: str) -> int:
        """Outbound calls of ``profile`` not yet over (no final status, no ended stream)."""
        return sum(
            1
            for c in self._calls.values()
            if c.profile == profile and not c.final and not c.stream_ended
        )

    # --- placing ------------------------------------------------------------------------------

    def check(
        self, profiles: Profiles, to: object, from_: object, profile_name: object, now: float
    ) -> Profile:
        """The profile a call to ``to`` would run with; raise :class:`OutboundRefused` (422 for
        bad input, 429 with ``retry_after_s`` past the profile's limits)."""
        if not isinstance(to, str) or not E164.match(to):
            raise OutboundRefused(422, f"to: {to!r} is not an E.164 number such as +15551234567")
        if not isinstance(from_, str) or not E164.match(from_):
            raise OutboundRefused(
                422, f"from: {from_!r} is not an E.164 number such as +15551234567"
            )
        name = "default" if profile_name is None else profile_name
        profile = profiles.named(name) if isinstance(name, str) else None
        if profile is None:
            known = ", ".join(["default", *sorted(profiles.numbers)])
            raise OutboundRefused(422, f"profile: no profile {name!r} (known: {known})")
        limit = profile.outbound.max_concurrent
        if limit is not None and self.active(profile.name) >= limit:
            raise OutboundRefused(
                429, f"profile {profile.name}: {limit} outbound call(s) already in progress", 1.0
            )
        rate = profile.outbound.calls_per_second
        if rate is not None:
            pacer = self._pacers.get(profile.name)
            if pacer is None or pacer.rate != rate:
                pacer = self._pacers[profile.name] = _Pacer(rate)
            wait = pacer.wait_s(now)
            if wait > 0:
                raise OutboundRefused(
                    429, f"profile {profile.name}: paced at {rate:g} call(s) per second", wait
                )
        return profile

    def placing(
        self,
        to: str,
        from_: str,
        profile: Profile,
        variables: dict[str, str],
        now: float,
        wall: float,
    ) -> OutboundCall:
        """Record a call about to be created (after :meth:`check` passed); spends its pace."""
        pacer = self._pacers.get(profile.name)
        if pacer is not None:
            pacer.wait_s(now)
            pacer.take()
        call = OutboundCall(
            id="OB" + secrets.token_hex(16),
            to=to,
            from_=from_,
            profile=profile.name,
            variables=variables,
            created_wall=wall,
        )
        self._calls[call.id] = call
        self._forget_old()
        return call

    def placed(self, call: OutboundCall, call_sid: str, status: str, wall: float) -> None:
        """Twilio created the call (``queued``). Its status callbacks may arrive before the
        create's answer does: then they already named the SID, and the status they brought
        (``ringing``, even ``busy``) is newer than the create's, so it stays."""
        if call.call_sid is not None:
            return
        call.call_sid = call_sid
        self._by_sid[call_sid] = call.id
        self._event(call, status, wall)

    def failed_to_place(self, call: OutboundCall, error: str, wall: float) -> None:
        call.error = error
        self._event(call, "failed", wall)

    # --- what Twilio reports ------------------------------------------------------------------

    def status(self, call: OutboundCall, form: Mapping[str, str], wall: float) -> bool:
        """A status callback; True when it is the call's final status and the call never
        streamed (nothing else will write its record)."""
        status = form.get("CallStatus", "")
        if not status or call.final:
            return False  # a retried or late callback changes nothing once the call is over
        if call.call_sid is None and form.get("CallSid"):
            self.placed(call, form["CallSid"], status, wall)
        else:
            self._event(call, status, wall, form.get("SequenceNumber"))
        if form.get("AnsweredBy") and call.answered_by is None:
            call.answered_by = form["AnsweredBy"]
        return call.status in FINAL_STATUSES and not call.streamed

    def amd(self, call: OutboundCall, form: Mapping[str, str]) -> None:
        """The answering machine verdict; handed to the call's stream if it listens."""
        answered_by = form.get("AnsweredBy", "")
        if not answered_by or call.answered_by is not None:
            return
        call.answered_by = answered_by
        duration = form.get("MachineDetectionDuration", "")
        call.detection_ms = int(duration) if duration.isdigit() else None
        if call.listener is not None:
            call.listener(answered_by)

    def stream_bound(self, call: OutboundCall, listener: Callable[[str], None]) -> str | None:
        """The call's stream started; ``listener`` gets the verdict. Returns the verdict if it
        came first."""
        call.streamed = True
        call.listener = listener
        return call.answered_by

    def stream_ended(self, call: OutboundCall) -> None:
        call.listener = None
        call.stream_ended = True

    def _event(
        self, call: OutboundCall, status: str, wall: float, sequence: str | None = None
    ) -> None:
        call.status = status
        entry: dict[str, Any] = {"status": status, "at": _iso(wall)}
        if sequence is not None:
            entry["sequence"] = sequence
        call.events.append(entry)

    def _forget_old(self) -> None:
        """Past ``max_kept``, forget the oldest calls that are over (never one in progress)."""
        excess = len(self._calls) - self.max_kept
        if excess <= 0:
            return
        over = [c for c in self._calls.values() if c.final or c.stream_ended][:excess]
        for old in over:
            del self._calls[old.id]
            if old.call_sid is not None:
                self._by_sid.pop(old.call_sid, None)
