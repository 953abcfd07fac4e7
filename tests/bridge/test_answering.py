"""The answering gate: every ``AnsweredBy`` through the profile's rules, with made-up times."""

from __future__ import annotations

import pytest

from gateway.bridge.answering import (
    DETECTION_GRACE_S,
    AnswerGate,
    AnswerRules,
    Converse,
    HangUp,
    LeaveVoicemail,
)

pytestmark = pytest.mark.timeout(5)

VOICEMAIL = AnswerRules(
    speak_first=True, on_machine="voicemail", voicemail_message="Call us back.", on_fax="hang_up"
)


@pytest.mark.parametrize(
    ("answered_by", "expected"),
    [
        ("human", Converse(True, "human")),
        ("machine_start", LeaveVoicemail("Call us back.", "machine_start")),
        ("machine_end_beep", LeaveVoicemail("Call us back.", "machine_end_beep")),
        ("machine_end_silence", LeaveVoicemail("Call us back.", "machine_end_silence")),
        ("machine_end_other", LeaveVoicemail("Call us back.", "machine_end_other")),
        ("fax", HangUp("fax", "fax")),
        ("unknown", Converse(True, "unknown")),
        ("something_new", Converse(True, "something_new")),
    ],
)
def test_each_verdict_follows_the_profile_rule(answered_by: str, expected: object) -> None:
    gate = AnswerGate(VOICEMAIL, now=100.0)
    assert gate.answered_by(answered_by, now=102.5) == expected
    assert gate.decision == expected
    assert gate.delay_ms == 2500.0
    assert gate.deadline is None


def test_a_machine_is_hung_up_on_when_the_profile_says_so() -> None:
    gate = AnswerGate(AnswerRules(on_machine="hang_up"), now=0.0)
    assert gate.answered_by("machine_end_beep", now=1.0) == HangUp("machine", "machine_end_beep")


def test_a_human_waits_for_hello_unless_the_profile_speaks_first() -> None:
    gate = AnswerGate(AnswerRules(speak_first=False), now=0.0)
    assert gate.answered_by("human", now=1.0) == Converse(False, "human")


def test_the_first_verdict_decides_and_a_repeated_callback_changes_nothing() -> None:
    gate = AnswerGate(VOICEMAIL, now=0.0)
    first = gate.answered_by("human", now=1.0)
    assert gate.answered_by("machine_end_beep", now=2.0) is None
    assert gate.tick(now=1000.0) is None
    assert gate.decision == first


def test_no_verdict_by_the_deadline_applies_the_lost_rule() -> None:
    rules = AnswerRules(on_detection_lost="hang_up", detection_timeout_s=10.0)
    gate = AnswerGate(rules, now=0.0)
    assert gate.deadline == 10.0 + DETECTION_GRACE_S
    assert gate.tick(now=14.9) is None
    assert gate.tick(now=15.0) == HangUp("detection_lost", "lost")
    assert gate.answered_by("human", now=16.0) is None  # too late: the call already went on


def test_without_detection_a_human_is_assumed_at_once() -> None:
    gate = AnswerGate(AnswerRules(speak_first=True), now=5.0, detect=False)
    assert gate.decision == Converse(True, "not_detected")
    assert gate.delay_ms == 0.0
