"""The decisions of one simulated call, with no I/O: :class:`CallFlow`.

The websocket layer (:class:`~gateway.loadtest.caller.SimulatedCall`) feeds it the clock and
the gateway's messages and sends what it returns; the flow never awaits::

    flow = CallFlow(script, options, result)
    flow.open(stream, epoch=now, ws_open_at=opened)    # once ``start`` is sent
    flow.tick(deadline, now, out)                      # every 20 ms: send ``out``
    flow.receive(raw, now, out)                        # each message: send ``out`` (mark echoes)
    ... until flow.hangup; then flow.finish(now)

A tick runs the playout buffer up to ``now``, the script (speech, DTMF, waits for answers) and
emits the slot's media frame; a received message goes into the Twilio-like playout buffer,
whose events are what the caller hears. A script that cannot go on (no answer) and a gateway
that breaks the protocol raise :class:`CallFailed`; the I/O layer records it with :meth:`fail`.
"""

from __future__ import annotations

import base64
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gateway.errors import CarrierError
from gateway.loadtest.carrier import (
    FRAME_MS,
    RATE,
    SILENCE_FRAME,
    AudioPlayed,
    CallerStream,
    MarkEchoed,
    PlayoutBuffer,
    PlayoutCleared,
    PlayoutEvent,
    Underrun,
    audible_table,
)
from gateway.loadtest.result import CallResult, Span, TimelineEntry, Turn
from gateway.loadtest.script import BargeIn, HangUp, Pause, PressDigits, Say, Step, WaitForAnswer
from gateway.telephony.messages import ClearAudio, Ignored, PlayAudio, PlayMark

if TYPE_CHECKING:
    from gateway.loadtest.caller import CallOptions
    from gateway.loadtest.twilio_api import CallUpdate

__all__ = ["CallFailed", "CallFlow"]

log = logging.getLogger("gateway.loadtest.caller")  # the logger failures always went to

FRAME_S = FRAME_MS / 1000
_SILENCE_B64 = base64.b64encode(SILENCE_FRAME).decode("ascii")


class CallFailed(Exception):
    """The call cannot go on; ``reason`` is the short key for :attr:`CallResult.failure`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class CallFlow:
    """One call's script, playout and measurements, fed with messages and ``now``.

    Times in are seconds of the caller's monotonic clock; :attr:`result` is filled as the call
    goes (readable meanwhile) and completed by :meth:`finish`.
    """

    def __init__(
        self,
        script: Sequence[Step],
        options: CallOptions,
        result: CallResult,
        on_event: Callable[[TimelineEntry], None] | None = None,
    ) -> None:
        self.script = list(script)
        self.options = options
        self.result = result
        self._on_event = on_event
        self._table = audible_table(options.audible_peak)
        self._merge_s = options.merge_ms / 1000
        # set when the stream starts
        self._stream: CallerStream | None = None
        self._playout: PlayoutBuffer | None = None
        self._epoch = 0.0
        self._ws_open_at = 0.0
        # script state
        self._step = 0
        self._step_began: float | None = None
        self._speech: deque[int] = deque()
        self._say: Say | None = None
        self._turn: Turn | None = None
        self._barge_started = False
        self._digits: deque[str] = deque()
        self._next_digit_at = 0.0
        self._hangup = False
        self._script_done = False
        self._rest_update: CallUpdate | None = None
        # what has been heard
        self._last_turn_end: float | None = None  # media-clock seconds since epoch
        self._answer_at: float | None = None
        self._last_audible_end: float | None = None
        self._caller_audio = bytearray()
        self._assistant_audio = bytearray()

    @property
    def hangup(self) -> bool:
        """The caller has sent (or is sending with this tick's frames) ``stop``."""
        return self._hangup

    @property
    def script_done(self) -> bool:
        return self._script_done

    @property
    def ended_by_rest(self) -> bool:
        """A REST update ended (or is ending) the stream."""
        return self._rest_update is not None

    def open(self, stream: CallerStream, epoch: float, ws_open_at: float) -> None:
        """The stream has started: ``start`` was sent at ``epoch``, media clock 0."""
        self._stream = stream
        self._epoch = epoch
        self._ws_open_at = ws_open_at
        self._playout = PlayoutBuffer(epoch, gap_ms=self.options.gap_ms)

    def receive(self, raw: str | bytes, now: float, out: list[str]) -> None:
        """A message from the gateway at ``now``; replies (mark echoes) are appended to ``out``."""
        stream = self._stream
        playout = self._playout
        assert stream is not None and playout is not None
        result = self.result
        if result.setup_ms is None and self.options.ready_on == "message":
            result.setup_ms = (now - self._ws_open_at) * 1000
        try:
            msg = stream.parse(raw)
        except CarrierError as exc:
            raise CallFailed("gateway_protocol_error", str(exc)) from None
        if type(msg) is PlayAudio:
            result.media_received += 1
            events = playout.push_audio(msg.payload, now)
        elif type(msg) is PlayMark:
            result.marks_received += 1
            events = playout.push_mark(msg.name, now)
        elif type(msg) is ClearAudio:
            result.clears_received += 1
            events = playout.clear(now)
        else:
            assert isinstance(msg, Ignored)
            result.ignored_received += 1
            return
        if events:
            self._on_playout(events, out)

    def rest_update(self, update: CallUpdate) -> bool:
        """The stand-in's REST update of this call: a hang-up, or new TwiML replacing the
        ``<Connect><Stream>``; both end the stream (``stop``) on the next tick. ``False`` when
        the stream is already ending (then the update changes nothing)."""
        if self._hangup or self._rest_update is not None:
            return False
        result = self.result
        if update.action == "hangup":
            result.ended_by = "rest_hangup"
        else:
            result.ended_by = "rest_redirect"
            result.redirect_twiml = update.twiml
            result.dialed = update.dialed
        self._rest_update = update
        return True

    def closed(self, now: float, text: str) -> None:
        """The websocket closed after the caller's ``stop``."""
        self._emit(now - self._epoch, "closed", text)

    # --- one 20 ms tick --------------------------------------------------------------------------

    def tick(self, deadline: float, now: float, out: list[str]) -> None:
        """Everything due at ``deadline``: playout, script, then this slot's media frame."""
        stream = self._stream
        playout = self._playout
        assert stream is not None and playout is not None
        events = playout.advance(now)
        if events:
            self._on_playout(events, out)
        t = deadline - self._epoch  # end of this frame's slot on the media clock
        if self._rest_update is None:
            self._run_script(t, out)
        else:
            self._end_by_rest(t)
        if self._hangup:
            out.append(stream.stop())
            self._emit(t, "hangup")
            return
        if self._speech:
            say = self._say
            assert say is not None
            index = self._speech.popleft()
            out.append(stream.media(say.frames[index]))
            self._on_speech_frame(say, index, t)
            if self.options.record_audio:
                self._caller_audio += base64.b64decode(say.frames[index])
        else:
            out.append(stream.media(_SILENCE_B64))
            if self.options.record_audio:
                self._caller_audio += SILENCE_FRAME
        self.result.frames_sent += 1

    def _end_by_rest(self, t: float) -> None:
        """A REST update ended the stream: this tick sends ``stop`` instead of the script."""
        update = self._rest_update
        assert update is not None
        if update.action == "hangup":
            self._emit(t, "rest_hangup")
        else:
            self._emit(t, "rest_redirect", ", ".join(self.result.dialed) or update.url or "")
        self._hangup = True

    def _on_speech_frame(self, say: Say, index: int, t: float) -> None:
        turn = self._turn
        assert turn is not None
        first, last = say.voiced or (0, len(say.frames) - 1)
        if index == first:
            turn.onset_ms = (t - FRAME_S) * 1000
            if self._playout is not None:
                self._playout.end_speech()
            if turn.barge_in:
                turn.assistant_audible_at_onset = self._audible_near(t - FRAME_S)
            self._emit(t - FRAME_S, "caller_start", say.text)
        if index == last:
            turn.end_ms = t * 1000
            self._last_turn_end = t
            self._answer_at = None
            self._emit(t, "caller_end", say.text)

    def _run_script(self, t: float, out: list[str]) -> None:
        while self._step < len(self.script):
            step = self.script[self._step]
            if self._step_began is None:
                self._step_began = t
                self._enter(step, t)
            if not self._progress(step, t, self._step_began, out):
                return
            self._step += 1
            self._step_began = None
            self._barge_started = False
            if self._hangup:
                break
        self._script_done = True
        self._hangup = True

    def _enter(self, step: Step, t: float) -> None:
        if isinstance(step, Say):
            self._speak(step, barge_in=False)
        elif isinstance(step, PressDigits):
            self._digits = deque(step.digits)
            self._next_digit_at = t
        elif isinstance(step, HangUp):
            self._hangup = True

    def _progress(self, step: Step, t: float, began: float, out: list[str]) -> bool:
        """Whether ``step`` is complete at ``t``; may start speech or send DTMF."""
        if isinstance(step, Say):
            return not self._speech
        if isinstance(step, WaitForAnswer):
            if self._answer_at is None:
                if (t - began) * 1000 > step.timeout_ms:
                    raise CallFailed("no_answer", self._no_answer_text(step.timeout_ms))
                return False
            last = self._last_audible_end or self._answer_at
            return (t - last) * 1000 >= step.quiet_ms
        if isinstance(step, Pause):
            return (t - began) * 1000 >= step.ms
        if isinstance(step, BargeIn):
            if not self._barge_started:
                if self._answer_at is None:
                    if (t - began) * 1000 > step.timeout_ms:
                        raise CallFailed("no_answer", self._no_answer_text(step.timeout_ms))
                    return False
                if (t - self._answer_at) * 1000 < step.after_ms:
                    return False
                self._barge_started = True
                self._speak(step.say, barge_in=True)
            return not self._speech
        if isinstance(step, PressDigits):
            stream = self._stream
            assert stream is not None
            while self._digits and t >= self._next_digit_at:
                digit = self._digits.popleft()
                out.append(stream.dtmf(digit))
                self.result.dtmf_sent += 1
                self._emit(t, "dtmf", digit)
                self._next_digit_at = t + step.gap_ms / 1000
            return not self._digits
        return True  # HangUp

    def _speak(self, say: Say, *, barge_in: bool) -> None:
        self._say = say
        self._speech = deque(range(len(say.frames)))
        self._turn = Turn(index=len(self.result.turns), text=say.text, barge_in=barge_in)
        self.result.turns.append(self._turn)

    def _no_answer_text(self, timeout_ms: float) -> str:
        after = "the greeting" if self._last_turn_end is None else f"turn {len(self.result.turns)}"
        return f"no audible assistant audio within {timeout_ms:g} ms (waiting for {after})"

    # --- what the caller hears -------------------------------------------------------------------

    def _on_playout(self, events: list[PlayoutEvent], out: list[str]) -> None:
        result = self.result
        stream = self._stream
        assert stream is not None
        for event in events:
            kind = type(event)
            if kind is AudioPlayed:
                assert isinstance(event, AudioPlayed)
                self._on_played(event)
            elif kind is MarkEchoed:
                assert isinstance(event, MarkEchoed)
                out.append(stream.mark(event.name))
                result.marks_echoed += 1
            elif kind is Underrun:
                assert isinstance(event, Underrun)
                result.gaps_ms.append(event.ms)
                self._emit(event.start - self._epoch, "gap", f"{event.ms:.0f} ms")
            elif kind is PlayoutCleared:
                assert isinstance(event, PlayoutCleared)
                t = event.at - self._epoch
                turn = self._turn
                if turn is not None and turn.barge_in and turn.clear_ms is None:
                    turn.clear_ms = t * 1000
                self._emit(t, "clear", f"{event.dropped_bytes // 8} ms dropped")

    def _on_played(self, event: AudioPlayed) -> None:
        result = self.result
        result.bytes_played += len(event.payload)
        if self.options.record_audio:
            audio = self._assistant_audio
            if len(audio) < event.sample:
                audio += b"\xff" * (event.sample - len(audio))
            audio[event.sample : event.sample + len(event.payload)] = event.payload
        levels = event.payload.translate(self._table)
        first = levels.find(1)
        if first < 0:
            return
        last = levels.rfind(1)
        start = (event.sample + first) / RATE
        end = (event.sample + last + 1) / RATE
        spans = result.assistant
        if spans and start - spans[-1].end_ms / 1000 <= self._merge_s:
            spans[-1].end_ms = end * 1000
        else:
            if spans:
                self._emit(spans[-1].end_ms / 1000, "assistant_end")
            spans.append(Span(start * 1000, end * 1000))
            self._emit(start, "assistant_start")
            if self._answer_at is None and (
                self._last_turn_end is None or start >= self._last_turn_end
            ):
                self._answer_at = start
                if self._last_turn_end is not None and self.result.turns:
                    turn = self._last_answered_turn()
                    if turn is not None:
                        turn.answer_ms = start * 1000
            if result.setup_ms is None and self.options.ready_on == "audio":
                result.setup_ms = (self._epoch + start - self._ws_open_at) * 1000
        self._last_audible_end = end

    def _last_answered_turn(self) -> Turn | None:
        for turn in reversed(self.result.turns):
            if turn.end_ms is not None:
                return turn if turn.answer_ms is None else None
        return None

    def _audible_near(self, t: float) -> bool:
        """Whether the assistant was heard at ``t`` or within a between-words pause before it."""
        end = self._last_audible_end
        return end is not None and t - end <= self._merge_s

    # --- the end ---------------------------------------------------------------------------------

    def finish(self, now: float) -> None:
        result = self.result
        playout = self._playout
        if playout is not None:
            # Whatever was still queued at hang-up was never heard; account for what was.
            self._on_playout(playout.advance(now), [])
            result.bytes_received = playout.bytes_received
            result.bytes_cleared = playout.bytes_dropped
        if result.assistant:
            self._emit(result.assistant[-1].end_ms / 1000, "assistant_end")
        for turn in result.turns:
            if turn.barge_in and turn.onset_ms is not None:
                span = _span_at(result.assistant, turn.onset_ms, self.options.merge_ms)
                if span is not None:
                    turn.stop_ms = span.end_ms
        if result.failure is None:
            result.outcome = "completed"
        else:
            result.outcome = "failed"
            self._emit(result.duration_ms / 1000, "failed", result.failure)  # _emit takes s
        result.timeline.sort(key=lambda e: e.t_ms)
        if self.options.record_audio:
            result.caller_audio = bytes(self._caller_audio)
            result.assistant_audio = bytes(self._assistant_audio)

    def fail(self, reason: str, detail: str) -> None:
        if self.result.failure is None:
            self.result.failure = reason
            self.result.failure_detail = detail
            log.info("call %s failed: %s %s", self.result.call_sid, reason, detail)

    def _emit(self, t: float, kind: str, detail: str = "") -> None:
        entry = TimelineEntry(round(t * 1000, 1), kind, detail)
        self.result.timeline.append(entry)
        if self._on_event is not None:
            self._on_event(entry)


def _span_at(spans: list[Span], t_ms: float, merge_ms: float) -> Span | None:
    """The utterance being heard at ``t_ms`` (or paused between words just before it)."""
    for span in spans:
        if span.start_ms <= t_ms <= span.end_ms + merge_ms:
            return span
    return None
