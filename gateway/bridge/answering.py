"""Who answered an outbound call, and what the assistant does about it. Pure (sans-I/O).

Twilio's answering machine detection runs asynchronously (``AsyncAmd=true``): the call
connects and streams at once, and the verdict (``AnsweredBy``) arrives later on its own
webhook. Until then the assistant must not speak — speaking into a machine's greeting is
wasted, and a human who hears a robot talk over their "hello" hangs up — so the call waits for
the verdict (the caller's audio meanwhile is buffered by the call core), then :class:`AnswerGate`
turns it into one :data:`Decision`::

    AnsweredBy               kind       the profile's rule decides
    human                    human      Converse (speak first, or wait for the hello)
    machine_start            machine    on_machine: LeaveVoicemail | HangUp
    machine_end_beep         machine    (the same; with DetectMessageEnd it comes after the beep)
    machine_end_silence      machine
    machine_end_other        machine
    fax                      fax        on_fax
    unknown / anything else  unknown    on_unknown
    (no verdict by deadline) lost       on_detection_lost

The first verdict decides; later ones are ignored (Twilio sends one, but a webhook may be
retried). Time comes in with every input; nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final, Literal

__all__ = [
    "ANSWERED_BY",
    "DETECTION_GRACE_S",
    "AnswerGate",
    "AnswerRules",
    "Converse",
    "Decision",
    "HangUp",
    "LeaveVoicemail",
    "Rule",
]

Rule = Literal["converse", "voicemail", "hang_up"]
Kind = Literal["human", "machine", "fax", "unknown", "lost"]

ANSWERED_BY: Final[dict[str, Kind]] = {
    "human": "human",
    "machine_start": "machine",
    "machine_end_beep": "machine",
    "machine_end_silence": "machine",
    "machine_end_other": "machine",
    "fax": "fax",
    "unknown": "unknown",
}
"""Twilio's ``AnsweredBy`` values by what they mean for the call; anything else is unknown."""

DETECTION_GRACE_S: Final = 5.0
"""Twilio answers ``unknown`` at its MachineDetectionTimeout; a verdict this much later than
that was lost on the way."""


_HANG_UP_OUTCOMES: Final[dict[Kind, str]] = {
    "human": "completed",
    "machine": "machine",
    "fax": "fax",
    "unknown": "unknown_answer",
    "lost": "detection_lost",
}


@dataclass(frozen=True, slots=True)
class AnswerRules:
    """A profile's outbound rules, as values (mapped from its ``outbound`` section)."""

    speak_first: bool = False
    on_machine: Literal["voicemail", "hang_up"] = "hang_up"
    on_fax: Rule = "hang_up"
    on_unknown: Rule = "converse"
    on_detection_lost: Rule = "converse"
    voicemail_message: str | None = None
    detection_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Converse:
    """Run the conversation; greet at once when ``speak_first``, else wait for the callee."""

    speak_first: bool
    answered_by: str
    kind: ClassVar[str] = "converse"


@dataclass(frozen=True, slots=True)
class LeaveVoicemail:
    """Say ``message`` once (the beep has passed), then hang up."""

    message: str
    answered_by: str
    kind: ClassVar[str] = "voicemail"


@dataclass(frozen=True, slots=True)
class HangUp:
    """End the call without a word; ``outcome`` is what the record says (``machine``, ...)."""

    outcome: str
    answered_by: str
    kind: ClassVar[str] = "hang_up"


Decision = Converse | LeaveVoicemail | HangUp


class AnswerGate:
    """One per outbound call, created when its stream starts (the call was answered).

    Feed :meth:`answered_by` with the AMD verdict and :meth:`tick` when :attr:`deadline`
    passes; the first of them that returns a :data:`Decision` is the call's, and
    :attr:`decision` keeps it. Without detection (``detect=False``) the decision is
    immediate: a human is assumed.
    """

    def __init__(self, rules: AnswerRules, now: float, *, detect: bool = True) -> None:
        self.rules = rules
        self.started_at = now
        self.decision: Decision | None = None
        self.decided_at: float | None = None
        self.deadline: float | None = now + rules.detection_timeout_s + DETECTION_GRACE_S
        if not detect:
            self._decide(Converse(rules.speak_first, "not_detected"), now)

    @property
    def delay_ms(self) -> float | None:
        """From the stream's start to the decision (what the callee waited in silence)."""
        if self.decided_at is None:
            return None
        return round((self.decided_at - self.started_at) * 1000, 1)

    def answered_by(self, value: str, now: float) -> Decision | None:
        """The AMD verdict arrived; returns the decision it makes, or None if already decided."""
        if self.decision is not None:
            return None
        kind = ANSWERED_BY.get(value, "unknown")
        rule: Rule
        if kind == "human":
            return self._decide(Converse(self.rules.speak_first, value), now)
        if kind == "machine":
            rule = self.rules.on_machine
        elif kind == "fax":
            rule = self.rules.on_fax
        else:
            rule = self.rules.on_unknown
        return self._decide(self._apply(rule, kind, value), now)

    def tick(self, now: float) -> Decision | None:
        """Time passes: past the deadline without a verdict, the ``on_detection_lost`` rule."""
        if self.decision is not None or self.deadline is None or now < self.deadline:
            return None
        return self._decide(self._apply(self.rules.on_detection_lost, "lost", "lost"), now)

    def _apply(self, rule: Rule, kind: Kind, value: str) -> Decision:
        if rule == "converse":
            return Converse(self.rules.speak_first, value)
        if rule == "voicemail" and self.rules.voicemail_message:
            return LeaveVoicemail(self.rules.voicemail_message, value)
        return HangUp(_HANG_UP_OUTCOMES[kind], value)

    def _decide(self, decision: Decision, now: float) -> Decision:
        self.decision, self.decided_at, self.deadline = decision, now, None
        return decision
