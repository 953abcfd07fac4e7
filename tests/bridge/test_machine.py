"""The barge-in state machine, driven without an event loop."""

from __future__ import annotations

import pytest

from gateway.bridge.machine import (
    TRANSITIONS,
    AssistantItem,
    AudioCleared,
    AudioStarted,
    AudioStopped,
    BargeIn,
    CancelResponse,
    CarrierDrained,
    ClearCarrier,
    ClearUpstreamAudio,
    Close,
    DropOutboundAudio,
    ResponseCreated,
    ResponseDone,
    SpeechStarted,
    State,
    TruncateToHeard,
    TurnMachine,
)


def speaking(truncate: bool = False) -> TurnMachine:
    m = TurnMachine(truncate_to_heard=truncate)
    assert m.handle(ResponseCreated("resp_1")) == []
    m.handle(AssistantItem("resp_1", "item_1"))
    assert m.handle(AudioStarted("resp_1")) == []
    assert m.state is State.SPEAKING
    return m


def test_a_plain_turn_goes_round_to_listening() -> None:
    m = speaking()
    m.handle(ResponseDone("resp_1", "completed"))
    assert m.state is State.SPEAKING and m.active_response is None
    m.handle(AudioStopped("resp_1"))
    assert m.state is State.DRAINING and m.assistant_audible
    m.handle(CarrierDrained())
    assert m.state is State.LISTENING and not m.assistant_audible
    assert m.ignored == 0


def test_barge_in_while_response_active_does_everything_in_order() -> None:
    m = speaking(truncate=True)
    actions = m.handle(SpeechStarted("server"))
    assert actions == [
        BargeIn("server", "resp_1"),
        ClearCarrier(),
        DropOutboundAudio(),
        CancelResponse("resp_1"),
        ClearUpstreamAudio(),
        TruncateToHeard("resp_1", "item_1"),
    ]
    assert m.state is State.INTERRUPTED
    assert not m.forwards_audio()
    assert m.barge_ins == 1


def test_no_cancel_once_the_response_is_done() -> None:
    m = speaking()
    m.handle(ResponseDone("resp_1", "completed"))
    actions = m.handle(SpeechStarted("local"))
    assert CancelResponse("resp_1") not in actions
    assert [type(a) for a in actions] == [
        BargeIn,
        ClearCarrier,
        DropOutboundAudio,
        ClearUpstreamAudio,
    ]


def test_barge_in_while_only_the_carrier_still_plays() -> None:
    m = speaking()
    m.handle(ResponseDone("resp_1", "completed"))
    m.handle(AudioStopped("resp_1"))
    actions = m.handle(SpeechStarted("server"))
    # upstream holds nothing any more: only the carrier and our own queue need clearing
    assert [type(a) for a in actions] == [BargeIn, ClearCarrier, DropOutboundAudio]


def test_speech_before_audio_cancels_without_clearing_the_carrier() -> None:
    m = TurnMachine()
    m.handle(ResponseCreated("resp_1"))
    actions = m.handle(SpeechStarted("server"))
    assert ClearCarrier() not in actions
    assert CancelResponse("resp_1") in actions


def test_speech_while_listening_is_just_a_turn() -> None:
    m = TurnMachine()
    assert m.handle(SpeechStarted("server")) == []
    assert m.state is State.LISTENING and m.barge_ins == 0


def test_local_then_server_speech_barges_in_once() -> None:
    m = speaking()
    first = m.handle(SpeechStarted("local"))
    assert first
    assert m.handle(SpeechStarted("server")) == []
    assert m.handle(AudioCleared("resp_1")) == []
    assert m.handle(ResponseDone("resp_1", "cancelled")) == []
    assert m.barge_ins == 1 and m.ignored == 0


def test_upstream_clear_without_our_request_clears_the_carrier() -> None:
    m = speaking()
    actions = m.handle(AudioCleared("resp_1"))
    assert ClearCarrier() in actions and DropOutboundAudio() in actions
    assert ClearUpstreamAudio() not in actions  # upstream already did it
    assert m.state is State.INTERRUPTED


def test_late_audio_of_the_cancelled_response_stays_muted() -> None:
    m = speaking()
    m.handle(SpeechStarted("server"))
    m.handle(AudioStarted("resp_1"))  # a late, duplicated start of the cancelled response
    assert m.state is State.INTERRUPTED and not m.forwards_audio()


def test_the_next_response_unmutes() -> None:
    m = speaking()
    m.handle(SpeechStarted("server"))
    m.handle(ResponseDone("resp_1", "cancelled"))
    m.handle(ResponseCreated("resp_2"))
    assert m.state is State.RESPONDING and m.forwards_audio()
    m.handle(AudioStarted("resp_2"))
    assert m.state is State.SPEAKING


def test_audio_of_a_new_response_unmutes_even_if_created_was_missed() -> None:
    m = speaking()
    m.handle(SpeechStarted("server"))
    m.handle(AudioStarted("resp_9"))
    assert m.state is State.SPEAKING


def test_no_truncate_without_a_known_item() -> None:
    m = TurnMachine(truncate_to_heard=True)
    m.handle(ResponseCreated("resp_1"))
    m.handle(AudioStarted("resp_1"))
    assert not any(isinstance(a, TruncateToHeard) for a in m.handle(SpeechStarted("server")))


def test_response_without_audio_returns_to_listening() -> None:
    m = TurnMachine()
    m.handle(ResponseCreated("resp_1"))
    m.handle(ResponseDone("resp_1", "completed"))
    assert m.state is State.LISTENING


def test_close_is_terminal() -> None:
    m = speaking()
    m.handle(Close())
    assert m.state is State.CLOSED
    assert m.handle(SpeechStarted("server")) == []
    assert m.handle(ResponseCreated("resp_2")) == []
    assert m.state is State.CLOSED and not m.forwards_audio()


def test_unexpected_pairs_are_counted_not_fatal() -> None:
    m = TurnMachine()
    assert m.handle(AudioStopped("x")) == []  # listed as expected
    before = m.ignored
    m.handle(CarrierDrained())
    assert m.ignored == before
    m.state = State.RESPONDING
    m.handle(AudioCleared("x"))  # not in the table
    assert m.ignored == before + 1


@pytest.mark.parametrize("state", [s for s in State if s is not State.CLOSED])
def test_every_live_state_can_close(state: State) -> None:
    assert (state, Close) in TRANSITIONS


def test_no_truncate_once_upstream_has_stopped_sending() -> None:
    m = speaking(truncate=True)
    m.handle(ResponseDone("resp_1", "completed"))
    m.handle(AudioStopped("resp_1"))
    actions = m.handle(SpeechStarted("server"))
    assert ClearCarrier() in actions
    assert not any(isinstance(a, TruncateToHeard) for a in actions)
