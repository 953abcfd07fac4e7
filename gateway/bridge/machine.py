"""The per-call turn-taking state machine: who is audible, and what a barge-in must do.

Pure and synchronous (sans-I/O): :meth:`TurnMachine.handle` takes one input and returns the
actions the call runner must execute, in order. Every transition is in :data:`TRANSITIONS`, one
table; a pair that is not in the table changes nothing and is counted in ``ignored`` (upstream
events can race, and a late or duplicated event must never end a call).

States::

    LISTENING    nothing is playing; the caller has the floor
    RESPONDING   a response is active upstream, no audio yet
    SPEAKING     upstream is streaming assistant audio to us
    DRAINING     upstream finished sending, the carrier is still playing what we forwarded
    INTERRUPTED  the caller barged in: late frames of the cancelled response are muted
    CLOSED       the call is over; everything is ignored

One barge-in policy for every speech source (:class:`SpeechStarted`'s ``source``): the caller
talking is a barge-in while the assistant is audible (SPEAKING, DRAINING) or about to be
(RESPONDING). Server VAD and the keypad are certain the caller means it, so they interrupt a
response that has not started playing; the local VAD judges 100 ms of audio and can fire on
line noise, so it interrupts only audio the caller can actually hear (see :data:`INTERRUPTS`).

A barge-in (caller speech while the assistant is audible or about to be) yields, in this order:
carrier ``clear``; drop queued outbound audio; ``response.cancel`` only while a response is active;
``output_audio_buffer.clear`` while upstream holds audio; and, when asked, a truncate of the
assistant item to what the carrier reported as played (never beyond it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal


class State(Enum):
    LISTENING = "listening"
    RESPONDING = "responding"
    SPEAKING = "speaking"
    DRAINING = "draining"
    INTERRUPTED = "interrupted"
    CLOSED = "closed"


SpeechSource = Literal["server", "local", "dtmf"]


# --- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    response_id: str


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response_id: str
    status: str


@dataclass(frozen=True, slots=True)
class AssistantItem:
    """``response.output_item.added`` for an assistant message: the item a truncate names."""

    response_id: str
    item_id: str


@dataclass(frozen=True, slots=True)
class AudioStarted:
    response_id: str | None


@dataclass(frozen=True, slots=True)
class AudioStopped:
    response_id: str | None


@dataclass(frozen=True, slots=True)
class AudioCleared:
    """``output_audio_buffer.cleared``: upstream dropped its buffer (server-side interruption)."""

    response_id: str | None


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The caller started talking (or typing), as one of the sources judged it."""

    source: SpeechSource


@dataclass(frozen=True, slots=True)
class CarrierDrained:
    """The carrier has played everything we sent (mark ledger's buffered audio is zero)."""


@dataclass(frozen=True, slots=True)
class Close:
    pass


Input = (
    ResponseCreated
    | ResponseDone
    | AssistantItem
    | AudioStarted
    | AudioStopped
    | AudioCleared
    | SpeechStarted
    | CarrierDrained
    | Close
)

# --- actions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClearCarrier:
    """Send the carrier's ``clear`` so it drops the audio it buffered."""


@dataclass(frozen=True, slots=True)
class DropOutboundAudio:
    """Drop assistant audio queued in the gateway and reset the outbound transcoder."""


@dataclass(frozen=True, slots=True)
class CancelResponse:
    response_id: str


@dataclass(frozen=True, slots=True)
class ClearUpstreamAudio:
    """Send ``output_audio_buffer.clear`` (WebRTC: the server owns the output buffer)."""


@dataclass(frozen=True, slots=True)
class TruncateToHeard:
    """Truncate ``item_id`` to what the caller heard; the runner asks the mark ledger for ms."""

    response_id: str
    item_id: str


@dataclass(frozen=True, slots=True)
class BargeIn:
    """Bookkeeping: a barge-in happened (metrics, call record)."""

    source: Literal["server", "local", "dtmf", "upstream"]
    response_id: str | None


Action = (
    ClearCarrier
    | DropOutboundAudio
    | CancelResponse
    | ClearUpstreamAudio
    | TruncateToHeard
    | BargeIn
)


INTERRUPTS: dict[SpeechSource, frozenset[State]] = {
    "server": frozenset({State.RESPONDING, State.SPEAKING, State.DRAINING}),
    "dtmf": frozenset({State.RESPONDING, State.SPEAKING, State.DRAINING}),
    "local": frozenset({State.SPEAKING, State.DRAINING}),
}
"""In which states caller speech from each source is a barge-in; elsewhere it changes nothing."""


@dataclass
class TurnMachine:
    """One per call. Feed it inputs with :meth:`handle`; execute the returned actions in order."""

    truncate_to_heard: bool = False
    state: State = State.LISTENING
    active_response: str | None = None
    audible_response: str | None = None
    muted_response: str | None = None
    assistant_items: dict[str, str] = field(default_factory=dict)
    barge_ins: int = 0
    ignored: int = 0

    def forwards_audio(self) -> bool:
        """Whether decoded upstream audio may go to the carrier (False while muted / closed)."""
        return self.state not in (State.INTERRUPTED, State.CLOSED)

    @property
    def assistant_audible(self) -> bool:
        """The caller can hear the assistant (or the carrier still holds its audio)."""
        return self.state in (State.SPEAKING, State.DRAINING)

    @property
    def assistant_quiet(self) -> bool:
        """The caller hears nothing from the assistant and no response is on its way."""
        return self.state in (State.LISTENING, State.INTERRUPTED) and self.active_response is None

    @property
    def forwards_silence(self) -> bool:
        """Whether a silent upstream frame is worth sending to the carrier.

        Only inside an answer: between answers the carrier plays silence by itself, and
        forwarding the upstream's comfort silence would keep its buffer (and so "assistant
        audible") from ever emptying.
        """
        return self.state in (State.RESPONDING, State.SPEAKING)

    def interrupts(self, source: SpeechSource) -> bool:
        """Whether caller speech from ``source`` would be a barge-in now."""
        return self.state in INTERRUPTS[source]

    def handle(self, event: Input) -> list[Action]:
        """Apply one input; return the actions to execute now, in order."""
        # Data that every state tracks, whatever the transition.
        if isinstance(event, ResponseCreated):
            self.active_response = event.response_id
        elif isinstance(event, ResponseDone) and event.response_id == self.active_response:
            self.active_response = None
        elif isinstance(event, AssistantItem):
            self.assistant_items[event.response_id] = event.item_id
            return []
        elif isinstance(event, AudioStarted) and event.response_id is not None:
            self.audible_response = event.response_id

        handler = TRANSITIONS.get((self.state, type(event)))
        if handler is None:
            self.ignored += 1
            return []
        new_state, actions = handler(self, event)
        self.state = new_state
        return actions

    def _barge_in(self, source: Literal["server", "local", "dtmf", "upstream"]) -> list[Action]:
        self.barge_ins += 1
        self.muted_response = self.active_response or self.audible_response
        audible = self.state in (State.SPEAKING, State.DRAINING)
        actions: list[Action] = [BargeIn(source, self.active_response or self.audible_response)]
        if audible:
            actions.append(ClearCarrier())
        actions.append(DropOutboundAudio())
        if self.active_response is not None:
            actions.append(CancelResponse(self.active_response))
        if source != "upstream" and self.state in (State.SPEAKING, State.RESPONDING):
            actions.append(ClearUpstreamAudio())
        heard = self.audible_response
        # Only while upstream is still sending: once it has stopped (DRAINING) the item is
        # complete and the carrier holds only its last moments, and what the ledger counts
        # as played includes the track's trailing silence, which can exceed the item's audio
        # (the service then refuses the truncate).
        if self.truncate_to_heard and self.state is State.SPEAKING and heard is not None:
            item = self.assistant_items.get(heard)
            if item is not None:
                actions.append(TruncateToHeard(heard, item))
        return actions


Handler = Callable[[TurnMachine, Input], tuple[State, list[Action]]]


def _goto(state: State) -> Handler:
    def go(_m: TurnMachine, _e: Input) -> tuple[State, list[Action]]:
        return state, []

    return go


def _on_speech(m: TurnMachine, e: Input) -> tuple[State, list[Action]]:
    assert isinstance(e, SpeechStarted)
    if not m.interrupts(e.source):
        return m.state, []
    return State.INTERRUPTED, m._barge_in(e.source)


def _on_cleared(m: TurnMachine, _e: Input) -> tuple[State, list[Action]]:
    # Upstream dropped its buffer on its own (server VAD interruption): the carrier must too.
    return State.INTERRUPTED, m._barge_in("upstream")


def _on_stopped(m: TurnMachine, _e: Input) -> tuple[State, list[Action]]:
    return State.DRAINING, []


def _on_done_without_audio(m: TurnMachine, e: Input) -> tuple[State, list[Action]]:
    # A response that ends before any audio started (text-only, cancelled, failed).
    return (State.LISTENING if m.active_response is None else State.RESPONDING), []


def _stay(m: TurnMachine, _e: Input) -> tuple[State, list[Action]]:
    return m.state, []


def _on_audio_after_barge_in(m: TurnMachine, e: Input) -> tuple[State, list[Action]]:
    # Audio of a *new* response unmutes; the cancelled one's stays muted.
    assert isinstance(e, AudioStarted)
    fresh = e.response_id is not None and e.response_id != m.muted_response
    return (State.SPEAKING if fresh else State.INTERRUPTED), []


def _on_close(_m: TurnMachine, _e: Input) -> tuple[State, list[Action]]:
    return State.CLOSED, []


L, R, S, D, I, C = (  # noqa: E741 - table abbreviations
    State.LISTENING,
    State.RESPONDING,
    State.SPEAKING,
    State.DRAINING,
    State.INTERRUPTED,
    State.CLOSED,
)

TRANSITIONS: dict[tuple[State, type], Handler] = {
    # a response begins (or a new one replaces a draining/interrupted one: unmute)
    (L, ResponseCreated): _goto(R),
    (D, ResponseCreated): _goto(R),
    (I, ResponseCreated): _goto(R),
    # audio starts flowing upstream -> us
    (L, AudioStarted): _goto(S),
    (R, AudioStarted): _goto(S),
    (D, AudioStarted): _goto(S),
    # upstream finished sending; the carrier may still be playing
    (S, AudioStopped): _on_stopped,
    (D, CarrierDrained): _goto(L),
    (R, ResponseDone): _on_done_without_audio,
    # the caller talks over the assistant (or over a response about to speak)
    (R, SpeechStarted): _on_speech,
    (S, SpeechStarted): _on_speech,
    (D, SpeechStarted): _on_speech,
    # upstream cleared its buffer without us asking (server-side interruption)
    (S, AudioCleared): _on_cleared,
    (D, AudioCleared): _on_cleared,
    # expected events that change nothing
    (L, SpeechStarted): _stay,
    (L, ResponseDone): _stay,
    (L, AudioStopped): _stay,
    (L, AudioCleared): _stay,
    (L, CarrierDrained): _stay,
    (R, CarrierDrained): _stay,
    (S, ResponseDone): _stay,
    (S, CarrierDrained): _stay,
    (D, ResponseDone): _stay,
    (D, AudioStopped): _stay,
    (I, SpeechStarted): _stay,
    (I, ResponseDone): _stay,
    (I, AudioStopped): _stay,
    (I, AudioCleared): _stay,
    (I, CarrierDrained): _stay,
    (I, AudioStarted): _on_audio_after_barge_in,
    # end of call from anywhere
    (L, Close): _on_close,
    (R, Close): _on_close,
    (S, Close): _on_close,
    (D, Close): _on_close,
    (I, Close): _on_close,
}
