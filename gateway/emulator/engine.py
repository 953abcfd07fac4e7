"""One emulated Realtime session: the sans-I/O state machine behind a call. No awaits, no sockets.

The runner feeds it what arrives and executes what comes out:

inputs
    :meth:`Engine.start` when the data channel opens; :meth:`Engine.receive_event` for each
    data-channel message; :meth:`Engine.receive_audio` for each 20 ms frame of caller audio
    (24 kHz mono int16, decoded from RTP); :meth:`Engine.reply_rendered` when a reply's audio
    (asked for by a :class:`Render` action) is ready; :meth:`Engine.tick` at least every 20 ms
    for timers.
outputs
    :meth:`Engine.next_output_frame` is the server's output audio buffer: the runner's outbound
    track calls it once per 20 ms of real time and sends what it returns on RTP (None =
    silence). :meth:`Engine.events_to_send` drains the server events to send on the data
    channel, in order. :meth:`Engine.actions` drains :class:`Render` and :class:`Close`.

Every input takes ``now`` (monotonic seconds); the engine has no clock of its own. Caller audio
time (``audio_start_ms`` and friends) counts the samples received, as the real service does.

Response timeline (audio replies): ``response.created`` and ``rate_limits.updated`` at once; the
first output (item, content part, first transcript delta) ``latency_ms`` after the end of the
turn, or when the synthesized audio is ready if that is later; playback starts with it
(``output_audio_buffer.started`` when the first frame is taken); the model "generates" audio
``generation_speed`` times faster than real time, so ``response.done`` comes while the audio is
still playing and ``output_audio_buffer.stopped`` when the buffer has drained.

The engine holds the session's state and emits every event; the parts that only compute live
beside it: ``turns`` (the input audio buffer and the VAD), ``items`` (conversation items),
``responses`` (a response's record and wire objects), ``replies`` (what the assistant says) and
``usage`` (token accounting).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import random
import string
import warnings
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from gateway.emulator.config import EngineConfig
from gateway.emulator.items import find_item, previous_id, public, require_item, validate_item
from gateway.emulator.replies import chunks, example_arguments, reply_phrases
from gateway.emulator.responses import ResponseState, assistant_item, response_object, sent_text
from gateway.emulator.schema import (
    SessionError,
    apply_session,
    check_media_format,
    vad_settings,
)
from gateway.emulator.turns import InputBuffer, SpeechStarted, SpeechStopped, TurnDetector
from gateway.emulator.usage import AUDIO_TOKEN_SAMPLES, input_usage, rate_limits, response_usage
from gateway.emulator.voice import FRAME_SAMPLES, MS_SAMPLES, SAMPLE_RATE, ReplyRequest

__all__ = [
    "FRAME_SAMPLES",
    "Close",
    "Engine",
    "Render",
    "SessionStats",
]

_MIN_COMMIT_MS: Final = 100  # GA refuses to commit less than this
_ID_CHARS: Final = string.ascii_letters + string.digits
_CLIENT_EVENTS: Final = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "output_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
)
_RESPONSE_FIELDS: Final = frozenset(
    {
        "instructions",
        "tools",
        "tool_choice",
        "output_modalities",
        "audio",
        "max_output_tokens",
        "conversation",
        "input",
        "metadata",
        "prompt",
        "reasoning",
    }
)
_KEEP_RESPONSES: Final = 16


@dataclass(frozen=True, slots=True)
class Render:
    """Render ``request`` (CPU work: do it off the event loop), then call
    :meth:`Engine.reply_rendered` with ``response_id`` and the audio."""

    response_id: str
    request: ReplyRequest


@dataclass(frozen=True, slots=True)
class Close:
    """End the call: flush the events to send, then close the data channel and the peer."""

    reason: str


Action = Render | Close


@dataclass(slots=True)
class SessionStats:
    """Counters shown by ``GET /emulator/sessions``."""

    turns: int = 0
    responses: int = 0
    cancelled_responses: int = 0
    events_received: Counter[str] = field(default_factory=Counter)
    events_sent: int = 0
    errors_sent: int = 0


class Engine:
    """One session's state. Create it per call; feed it; drain it (see the module docstring)."""

    def __init__(
        self,
        session: Mapping[str, Any],
        *,
        config: EngineConfig,
        now: float,
        rng: random.Random | None = None,
    ) -> None:
        self.session: dict[str, Any] = dict(session)
        self.config = config
        self.media_codec: str | None = None
        """The audio codec negotiated in SDP (``audio/opus``, ``audio/pcmu``): session formats
        are checked against it (:func:`~gateway.emulator.schema.check_media_format`)."""
        self.stats = SessionStats()
        self.conversation_id = ""
        self._rng = rng or random.Random()
        self.conversation_id = self._id("conv_")
        self._created_at = now
        self._started = False
        self._closed = False
        self._out: list[dict[str, Any]] = []
        self._actions: list[Action] = []
        self._items: list[dict[str, Any]] = []
        self._item_audio_ms: dict[str, int] = {}  # assistant item id -> audio length
        self._audio_produced = False
        # caller audio
        self._input = InputBuffer()
        self._append_rest = np.zeros(0, dtype=np.int16)
        self._turns = TurnDetector()
        self._speech_item: str | None = None  # the item id of the turn being spoken
        self._vad_cfg = vad_settings(self.session)
        self._append_resampler: Any = None
        self._last_turn_ms = 0.0
        # responses
        self._active: ResponseState | None = None
        self._playout: deque[ResponseState] = deque()  # audio in the output buffer; head plays
        self.last_output: tuple[str, int] | None = None
        self._responses: dict[str, ResponseState] = {}
        self._tool_called = False
        self._idle_deadline: float | None = None
        self._requests_used = 0
        self._tokens_used = 0
        self._prev_input_tokens = 0

    # ------------------------------------------------------------------ outputs

    def events_to_send(self) -> list[dict[str, Any]]:
        """Server events produced since the last call, in order; send each as one message."""
        out, self._out = self._out, []
        return out

    def actions(self) -> list[Action]:
        """Actions produced since the last call, in order."""
        out, self._actions = self._actions, []
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def response_active(self) -> bool:
        return self._active is not None

    @property
    def held_audio_s(self) -> float:
        """Seconds of reply audio held in memory: only answers still generating or playing."""
        held = sum(r.audio.size for r in self._responses.values() if r.audio is not None)
        return held / SAMPLE_RATE

    # ------------------------------------------------------------------ inputs

    def start(self, now: float) -> None:
        """The data channel is open: send ``session.created``. Call once."""
        if self._started:
            return
        self._started = True
        self._emit("session.created", session=self.session)
        self.tick(now)

    def tick(self, now: float) -> None:
        """Advance timers: response generation, idle timeout, the maximum session duration."""
        if self._closed or not self._started:
            return
        if now - self._created_at >= self.config.max_session_s:
            minutes = self.config.max_session_s / 60
            self._error(
                "session_expired",
                f"Your session hit the maximum duration of {minutes:g} minutes.",
            )
            self.close("session expired")
            return
        self._advance(now)
        if self._idle_deadline is not None and now >= self._idle_deadline:
            self._idle_deadline = None
            self._idle_timeout(now)

    def close(self, reason: str) -> None:
        """End the session from the server side (fault injection, expiry): a :class:`Close`."""
        if not self._closed:
            self._closed = True
            self._actions.append(Close(reason))

    def inject_error(self, code: str = "server_error", message: str | None = None) -> None:
        """Send a ``server_error`` event, as the service does when the model fails mid-call."""
        self._error(
            code,
            message or "The server had an error while processing your request. Sorry about that!",
            etype="server_error",
        )

    def receive_event(self, raw: str | bytes, now: float) -> None:
        """One data-channel message from the client; replies and errors go to the outbox."""
        if self._closed:
            return
        try:
            event = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            self._error(
                "invalid_json",
                f"We could not parse the JSON body of your request. ({exc})",
            )
            return
        if not isinstance(event, dict):
            self._error("invalid_json", "The event must be a JSON object.")
            return
        client_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        kind = event.get("type")
        if not isinstance(kind, str):
            self._error(
                "missing_required_parameter",
                "Missing required parameter: 'type'.",
                param="type",
                event_id=client_id,
            )
            return
        self.stats.events_received[kind] += 1
        if kind not in _CLIENT_EVENTS:
            self._error(
                "invalid_value",
                f"Invalid value: '{kind}'. Supported values are: "
                + ", ".join(f"'{k}'" for k in _CLIENT_EVENTS)
                + ".",
                param="type",
                event_id=client_id,
            )
            return
        handler = getattr(self, "_on_" + kind.replace(".", "_"))
        try:
            handler(event, now)
        except SessionError as exc:
            self._error(
                exc.code, exc.error["message"], param=exc.error["param"], event_id=client_id
            )
        self._advance(now)

    def receive_audio(self, frame: npt.NDArray[np.int16], now: float) -> None:
        """One 20 ms frame (480 samples, 24 kHz mono int16) of caller audio, in order.

        Audio before :meth:`start` is ignored: the session does not exist for the caller yet.
        """
        if self._closed or not self._started:
            return
        self._input.append(frame)
        if self._vad_cfg is not None:
            self._vad(frame, self._vad_cfg, now)
        self._advance(now)

    def reply_rendered(self, response_id: str, audio: npt.NDArray[np.int16], now: float) -> None:
        """The audio a :class:`Render` asked for; ignored if the response ended meanwhile."""
        r = self._responses.get(response_id)
        if r is None or not r.needs_render:
            return
        r.needs_render = False
        cap = r.max_output_tokens
        if isinstance(cap, int) and audio.size > cap * AUDIO_TOKEN_SAMPLES:
            # One audio token per 50 ms: the reply stops where the token budget runs out, and
            # so does its transcript (proportionally).
            keep = cap * AUDIO_TOKEN_SAMPLES
            r.words = r.words[: max(1, len(r.words) * keep // audio.size)]
            r.text = " ".join(r.words)
            audio = audio[:keep]
            r.out_of_tokens = True
        r.audio = audio
        r.limit = audio.size
        self._advance(now)

    def next_output_frame(self, now: float) -> npt.NDArray[np.int16] | None:
        """The next 20 ms of assistant audio to send on RTP, or None for silence.

        Call exactly once per 20 ms of real time (the outbound track's pace): what this returns
        is by definition what has been played, which truncation and usage rely on. After the
        call, :attr:`last_output` is ``(response_id, frame index)`` of the returned audio (None
        for silence), for a runner that sends pre-encoded frames of the reply.
        """
        self.last_output = None
        if self._closed or not self._started:
            return None
        self._advance(now)
        if not self._playout:
            return None
        r = self._playout[0]
        if r.audio is None or r.first_at is None:
            return None
        # Audio plays only once it exists: generation runs ahead of real time from first_at.
        available = r.limit
        if r.status == "in_progress":
            produced = math.floor((now - r.first_at) * self.config.generation_speed * SAMPLE_RATE)
            available = min(available, FRAME_SAMPLES + produced)
        if r.played >= r.limit:
            # Everything generated has played; "stopped" waits for the response to end, so it
            # always follows response.done.
            if r.status != "in_progress":
                self._stop_playout(r, now)
            return None
        if r.played + FRAME_SAMPLES > available and available < r.limit:
            return None  # generation has not caught up (only at the very start)
        if not r.playout_started:
            r.playout_started = True
            self._audio_produced = True
            self._emit("output_audio_buffer.started", response_id=r.id)
        self.last_output = (r.id, r.played // FRAME_SAMPLES)
        chunk = r.audio[r.played : min(r.played + FRAME_SAMPLES, r.limit)]
        r.played += chunk.size
        if chunk.size < FRAME_SAMPLES:
            chunk = np.concatenate((chunk, np.zeros(FRAME_SAMPLES - chunk.size, np.int16)))
        if r.played >= r.limit and r.status != "in_progress":
            self._stop_playout(r, now)
        return chunk

    # ------------------------------------------------------------------ client events

    def _on_session_update(self, event: dict[str, Any], now: float) -> None:
        self._check_fields(event, ("session",))
        if "session" not in event:
            raise SessionError(
                "missing_required_parameter", "Missing required parameter: 'session'.", "session"
            )
        updated = apply_session(self.session, event["session"], audio_produced=self._audio_produced)
        check_media_format(updated, self.media_codec)
        self.session = updated
        self._vad_cfg = vad_settings(self.session)
        self._emit("session.updated", session=self.session)

    def _on_input_audio_buffer_append(self, event: dict[str, Any], now: float) -> None:
        self._check_fields(event, ("audio",))
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise SessionError(
                "missing_required_parameter", "Missing required parameter: 'audio'.", "audio"
            )
        try:
            raw = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise SessionError(
                "invalid_value", "Invalid 'audio': expected base64-encoded audio.", "audio"
            ) from None
        fmt = self.session["audio"]["input"]["format"]["type"]
        if fmt == "audio/pcm":
            pcm = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2").astype(np.int16)
        else:
            from gateway.audio.resample import StreamResampler

            decoded = _g711_decode(raw, alaw=fmt == "audio/pcma")
            if self._append_resampler is None:
                self._append_resampler = StreamResampler(8000, SAMPLE_RATE)
            pcm = self._append_resampler.process(decoded)
        pcm = np.concatenate((self._append_rest, pcm))
        whole = pcm.size // FRAME_SAMPLES * FRAME_SAMPLES
        self._append_rest = pcm[whole:].copy()
        for i in range(0, whole, FRAME_SAMPLES):
            self.receive_audio(pcm[i : i + FRAME_SAMPLES], now)

    def _on_input_audio_buffer_commit(self, event: dict[str, Any], now: float) -> None:
        self._check_fields(event, ())
        start = self._input.start
        if self._turns.speaking:
            start = self._turns.speech_start
        ms = (self._input.samples_in - start) / MS_SAMPLES
        if ms < _MIN_COMMIT_MS:
            self._error(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{_MIN_COMMIT_MS}ms of audio, but buffer only has {ms:.2f}ms of audio.",
                event_id=event.get("event_id"),
            )
            return
        item_id = self._speech_item or self._id("item_")
        self._turns.reset()
        self._speech_item = None
        self._commit(item_id, start, self._input.samples_in, now)
        # A manual commit never creates a response by itself (GA: send response.create).

    def _on_input_audio_buffer_clear(self, event: dict[str, Any], now: float) -> None:
        self._check_fields(event, ())
        self._input.clear(at=self._input.samples_in)
        self._turns.reset()
        self._speech_item = None
        self._emit("input_audio_buffer.cleared")

    def _on_output_audio_buffer_clear(self, event: dict[str, Any], now: float) -> None:
        self._check_fields(event, ())
        if not self._playout:
            # Nothing is playing; the service still acknowledges the clear.
            last = next(reversed(self._responses.values()), None)
            if last is not None:
                self._emit("output_audio_buffer.cleared", response_id=last.id)
            return
        self._clear_playout(now)

    def _on_conversation_item_create(self, event: dict[str, Any], now: float) -> None:
        self._check_fields(event, ("item", "previous_item_id"))
        item = event.get("item")
        if not isinstance(item, dict):
            raise SessionError(
                "missing_required_parameter", "Missing required parameter: 'item'.", "item"
            )
        stored = validate_item(item, lambda: self._id("item_"))
        previous = event.get("previous_item_id")
        index = len(self._items)
        if previous is not None:
            if previous == "root":
                index = 0
            else:
                found = find_item(self._items, previous)
                if found is None:
                    raise SessionError(
                        "item_not_found",
                        f"Item with item_id '{previous}' not found in the conversation.",
                        "previous_item_id",
                    )
                index = self._items.index(found) + 1
        if find_item(self._items, stored["id"]) is not None:
            raise SessionError(
                "invalid_value",
                f"Item with item_id '{stored['id']}' already exists in the conversation.",
                "item.id",
            )
        prev_id = self._items[index - 1]["id"] if index > 0 else None
        self._items.insert(index, stored)
        if stored["type"] == "message" and stored["role"] == "user":
            self.stats.turns += 1
        self._emit("conversation.item.added", previous_item_id=prev_id, item=stored)
        self._emit("conversation.item.done", previous_item_id=prev_id, item=stored)

    def _on_conversation_item_retrieve(self, event: dict[str, Any], now: float) -> None:
        self._check_fields(event, ("item_id",))
        item = require_item(self._items, event)
        self._emit("conversation.item.retrieved", item=item)

    def _on_conversation_item_delete(self, event: dict[str, Any], now: float) -> None:
        self._check_fields(event, ("item_id",))
        item = require_item(self._items, event)
        self._items.remove(item)
        self._emit("conversation.item.deleted", item_id=item["id"])

    def _on_conversation_item_truncate(self, event: dict[str, Any], now: float) -> None:
        self._check_fields(event, ("item_id", "content_index", "audio_end_ms"))
        item = require_item(self._items, event)
        end_ms = event.get("audio_end_ms")
        index = event.get("content_index")
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            raise SessionError(
                "invalid_value",
                "Invalid 'audio_end_ms': expected a non-negative integer.",
                "audio_end_ms",
            )
        if item.get("role") != "assistant" or item["id"] not in self._item_audio_ms:
            raise SessionError(
                "invalid_value",
                "Only assistant messages with audio can be truncated.",
                "item_id",
            )
        if index != 0:
            raise SessionError(
                "invalid_value",
                "Invalid 'content_index': the item has one part (0).",
                "content_index",
            )
        length = self._item_audio_ms[item["id"]]
        if end_ms > length:
            raise SessionError(
                "invalid_value",
                f"Audio content of {length}ms is already shorter than {end_ms}ms",
                "audio_end_ms",
            )
        self._item_audio_ms[item["id"]] = end_ms
        for r in self._playout:
            if r.item_id == item["id"]:
                # audio past the truncation point is no longer the item's: do not play it
                r.limit = max(r.played, min(r.limit, end_ms * MS_SAMPLES))
        self._emit(
            "conversation.item.truncated",
            item_id=item["id"],
            content_index=0,
            audio_end_ms=end_ms,
        )

    def _on_response_create(self, event: dict[str, Any], now: float) -> None:
        self._check_fields(event, ("response",))
        params = event.get("response") or {}
        if not isinstance(params, dict):
            raise SessionError(
                "invalid_type", "Invalid type for 'response': expected an object.", "response"
            )
        for key in params:
            if key not in _RESPONSE_FIELDS:
                raise SessionError(
                    "unknown_parameter", f"Unknown parameter: 'response.{key}'.", f"response.{key}"
                )
        if self._active is not None:
            self._error(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self._active.id}. "
                "Wait until the response is finished before creating a new one.",
                event_id=event.get("event_id"),
            )
            return
        self._create_response(now, params, trigger="client")

    def _on_response_cancel(self, event: dict[str, Any], now: float) -> None:
        self._check_fields(event, ("response_id",))
        r = self._active
        wanted = event.get("response_id")
        if r is None or (wanted is not None and wanted != r.id):
            self._error(
                "response_cancel_not_active",
                "Cancellation failed: no active response found",
                event_id=event.get("event_id"),
            )
            return
        self._cancel(r, now, "client_cancelled")

    # ------------------------------------------------------------------ turn detection

    def _vad(self, frame: npt.NDArray[np.int16], vad: dict[str, Any], now: float) -> None:
        turn = self._turns.feed(frame, vad, self._input)
        if isinstance(turn, SpeechStarted):
            self._speech_item = self._id("item_")
            self._idle_deadline = None
            self._emit(
                "input_audio_buffer.speech_started",
                audio_start_ms=turn.start // MS_SAMPLES,
                item_id=self._speech_item,
            )
            if vad["interrupt_response"]:
                self._interrupt(now)
        elif isinstance(turn, SpeechStopped):
            item_id = self._speech_item or self._id("item_")
            self._speech_item = None
            end = turn.end
            self._emit(
                "input_audio_buffer.speech_stopped", audio_end_ms=end // MS_SAMPLES, item_id=item_id
            )
            self._last_turn_ms = max(0.0, turn.spoken_s * 1000)
            audio = self._commit(item_id, turn.start, end, now)
            if vad["create_response"] and self._active is None:
                self._create_response(now, {}, trigger="turn", echo=audio)

    def _interrupt(self, now: float) -> None:
        """Speech started with ``interrupt_response``: cancel and cut off the assistant."""
        r = self._active
        if r is not None and r.in_conversation:
            self._cancel(r, now, "turn_detected")
        if self._playout:
            self._clear_playout(now)

    def _commit(self, item_id: str, start: int, end: int, now: float) -> npt.NDArray[np.int16]:
        """Make caller audio [start, end) (session samples) a user item; return that audio."""
        audio = self._input.audio(start, end)
        self._input.clear(at=end)
        prev_id = self._items[-1]["id"] if self._items else None
        item: dict[str, Any] = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        item["_audio_ms"] = (end - start) // MS_SAMPLES
        self._items.append(item)
        self.stats.turns += 1
        self._emit("input_audio_buffer.committed", previous_item_id=prev_id, item_id=item_id)
        self._emit("conversation.item.added", previous_item_id=prev_id, item=item)
        self._emit("conversation.item.done", previous_item_id=prev_id, item=item)
        transcription = self.session["audio"]["input"].get("transcription")
        if transcription:
            seconds = (end - start) / SAMPLE_RATE
            # No speech recognition offline: the transcript says what was heard, not the words.
            transcript = f"[{seconds:.1f} seconds of caller audio]"
            item["content"][0]["transcript"] = transcript
            self._emit(
                "conversation.item.input_audio_transcription.delta",
                item_id=item_id,
                content_index=0,
                delta=transcript,
            )
            self._emit(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=transcript,
                usage={"type": "duration", "seconds": round(seconds, 3)},
            )
        return audio

    def _idle_timeout(self, now: float) -> None:
        item_id = self._id("item_")
        start, end = self._input.start, self._input.samples_in
        self._emit(
            "input_audio_buffer.timeout_triggered",
            audio_start_ms=start // MS_SAMPLES,
            audio_end_ms=end // MS_SAMPLES,
            item_id=item_id,
        )
        self._commit(item_id, start, end, now)
        if self._active is None:
            self._create_response(now, {}, trigger="idle")

    # ------------------------------------------------------------------ responses

    def _create_response(
        self,
        now: float,
        params: Mapping[str, Any],
        *,
        trigger: Literal["client", "turn", "idle"],
        echo: npt.NDArray[np.int16] | None = None,
    ) -> None:
        session = self.session
        out_cfg = session["audio"]["output"]
        voice_cfg = params.get("audio", {}).get("output", {}).get("voice", out_cfg["voice"])
        voice = voice_cfg if isinstance(voice_cfg, str) else "marin"
        modalities = list(params.get("output_modalities") or session["output_modalities"])
        in_conversation = params.get("conversation", "auto") != "none"
        tools = params.get("tools", session["tools"])
        cfg = self.config
        kind: Literal["audio", "text", "function"] = "text" if modalities == ["text"] else "audio"
        tool = None
        if (
            cfg.tool_call is not None
            and not self._tool_called
            and trigger == "turn"
            and self.stats.turns >= cfg.tool_call_after_turn
        ):
            tool = next(
                (
                    t
                    for t in tools
                    if t.get("type") == "function" and t.get("name") == cfg.tool_call
                ),
                None,
            )
            if tool is not None:
                kind = "function"
                self._tool_called = True
        latency = cfg.latency_ms + (
            self._rng.uniform(-cfg.latency_jitter_ms, cfg.latency_jitter_ms)
            if cfg.latency_jitter_ms
            else 0.0
        )
        r = ResponseState(
            id=self._id("resp_"),
            created_at=now,
            due_at=now + max(0.0, latency) / 1000,
            kind=kind,
            in_conversation=in_conversation,
            voice=voice,
            modalities=modalities,
            max_output_tokens=params.get("max_output_tokens", session["max_output_tokens"]),
            metadata=params.get("metadata"),
        )
        r.item_id = self._id("item_")
        self._responses[r.id] = r
        self._active = r
        self._idle_deadline = None
        self.stats.responses += 1
        r.input_usage = input_usage(
            params,
            session=session,
            items=self._items,
            item_audio_ms=self._item_audio_ms,
            prev_input_tokens=self._prev_input_tokens,
        )
        self._emit("response.created", response=self._response_object(r))
        self._requests_used += 1
        limits = rate_limits(r, requests_used=self._requests_used, tokens_used=self._tokens_used)
        self._emit("rate_limits.updated", rate_limits=limits)

        if kind == "function" and tool is not None:
            r.function_name = str(tool["name"])
            r.call_id = self._id("call_")
            r.text = json.dumps(example_arguments(tool.get("parameters")), separators=(",", ":"))
            r.words = chunks(r.text, 8)
            return
        phrases = reply_phrases(
            params.get("instructions"),
            trigger,
            voice,
            items=self._items,
            turns=self.stats.turns,
            last_turn_ms=self._last_turn_ms,
        )
        r.text = " ".join(phrases)
        r.words = r.text.split(" ") if r.text else []
        if kind == "audio":
            speed = float(out_cfg.get("speed") or 1.0)
            if cfg.reply == "echo" and echo is not None and echo.size:
                request = ReplyRequest("echo", voice, speed, echo=echo)
                r.text = f"(echo of {echo.size / SAMPLE_RATE:.1f} seconds of your audio)"
                r.words = r.text.split(" ")
            elif cfg.reply == "tone":
                seconds = (
                    min(3.0, max(1.0, self._last_turn_ms / 1000)) if trigger == "turn" else 1.0
                )
                request = ReplyRequest("tone", voice, speed, tone_s=seconds)
                r.text = f"(a {seconds:.1f} second tone)"
                r.words = r.text.split(" ")
            else:
                request = ReplyRequest("speech", voice, speed, phrases=tuple(phrases))
            r.needs_render = True
            self._actions.append(Render(r.id, request))

    def _advance(self, now: float) -> None:
        """Move the active response along its timeline up to ``now``."""
        r = self._active
        if r is None:
            return
        if r.first_at is None:
            if now < r.due_at or r.needs_render:
                return
            self._begin_output(r, now)
        assert r.first_at is not None and r.gen_end_at is not None
        span = r.gen_end_at - r.first_at
        n = len(r.words)
        due = (
            n if now >= r.gen_end_at or span <= 0 else 1 + math.floor((now - r.first_at) / span * n)
        )
        while r.deltas_sent < min(due, n):
            self._send_delta(r)
        if now >= r.gen_end_at:
            if r.out_of_tokens:
                self._finish(r, "incomplete", "max_output_tokens", now)
            else:
                self._finish(r, "completed", None, now)

    def _begin_output(self, r: ResponseState, now: float) -> None:
        r.first_at = now
        if r.kind == "audio" and r.audio is not None:
            duration = r.audio.size / SAMPLE_RATE
            r.gen_end_at = now + duration / self.config.generation_speed
        else:
            # text tokens stream at roughly 50 words a second
            r.gen_end_at = now + max(1, len(r.words)) * 0.02
        item = assistant_item(r, "in_progress")
        self._emit("response.output_item.added", response_id=r.id, output_index=0, item=item)
        if r.in_conversation:
            prev_id = self._items[-1]["id"] if self._items else None
            self._items.append(item)
            self._emit("conversation.item.added", previous_item_id=prev_id, item=item)
        if r.kind == "function":
            return
        part = (
            {"type": "audio", "transcript": ""}
            if r.kind == "audio"
            else {"type": "text", "text": ""}
        )
        self._emit(
            "response.content_part.added",
            response_id=r.id,
            item_id=r.item_id,
            output_index=0,
            content_index=0,
            part=part,
        )
        if r.kind == "audio":
            self._playout.append(r)  # plays after any audio still in the buffer

    def _send_delta(self, r: ResponseState) -> None:
        word = r.words[r.deltas_sent]
        delta = word if r.deltas_sent == 0 or r.kind == "function" else " " + word
        r.deltas_sent += 1
        if r.kind == "function":
            self._emit(
                "response.function_call_arguments.delta",
                response_id=r.id,
                item_id=r.item_id,
                output_index=0,
                call_id=r.call_id,
                delta=delta,
            )
            return
        kind = (
            "response.output_audio_transcript.delta"
            if r.kind == "audio"
            else "response.output_text.delta"
        )
        self._emit(
            kind, response_id=r.id, item_id=r.item_id, output_index=0, content_index=0, delta=delta
        )

    def _cancel(self, r: ResponseState, now: float, reason: str) -> None:
        if r.first_at is not None and r.kind == "audio":
            # Only what was generated exists; playout may still hold some of it.
            produced = math.floor((now - r.first_at) * self.config.generation_speed * SAMPLE_RATE)
            r.limit = min(r.limit, max(produced + FRAME_SAMPLES, r.played))
        self._finish(r, "cancelled", reason, now)

    def _finish(self, r: ResponseState, status: str, reason: str | None, now: float) -> None:
        """Emit the closing events of ``r`` and ``response.done``."""
        if self._active is r:
            self._active = None
        r.status = status
        if r.needs_render:
            r.needs_render = False  # cancelled before its audio was ready
        if status == "cancelled":
            self.stats.cancelled_responses += 1
        final = "completed" if status == "completed" else "incomplete"
        if r.first_at is not None:
            text = r.text if status == "completed" else sent_text(r)
            if r.kind == "function":
                self._emit(
                    "response.function_call_arguments.done",
                    response_id=r.id,
                    item_id=r.item_id,
                    output_index=0,
                    call_id=r.call_id,
                    name=r.function_name,
                    arguments=text,
                )
            else:
                common = {
                    "response_id": r.id,
                    "item_id": r.item_id,
                    "output_index": 0,
                    "content_index": 0,
                }
                if r.kind == "audio":
                    self._emit("response.output_audio.done", **common)
                    self._emit("response.output_audio_transcript.done", transcript=text, **common)
                    part: dict[str, Any] = {"type": "audio", "transcript": text}
                else:
                    self._emit("response.output_text.done", text=text, **common)
                    part = {"type": "text", "text": text}
                self._emit("response.content_part.done", part=part, **common)
            if r.kind == "audio":  # output began, so its audio was rendered
                r.output_audio_samples = r.limit
                self._item_audio_ms[r.item_id] = r.limit // MS_SAMPLES
            item = assistant_item(r, final, text)
            self._emit("response.output_item.done", response_id=r.id, output_index=0, item=item)
            if r.in_conversation:
                stored = find_item(self._items, r.item_id)
                if stored is not None:
                    stored.clear()
                    stored.update(item)
                prev = previous_id(self._items, r.item_id)
                self._emit("conversation.item.done", previous_item_id=prev, item=item)
            output = [item]
        else:
            output = []
        details: dict[str, Any] | None = None
        if status in ("cancelled", "incomplete"):
            details = {"type": status, "reason": reason}
        usage = response_usage(r)
        self._tokens_used += usage["total_tokens"]
        response = self._response_object(r, output=output, details=details, usage=usage)
        self._prev_input_tokens = r.input_usage["total"]
        self._emit("response.done", response=response)
        if r not in self._playout:
            self._start_idle_timer(now)
            self._release(r)

    def _stop_playout(self, r: ResponseState, now: float) -> None:
        """``r``'s audio has played to its end."""
        if r in self._playout:
            self._playout.remove(r)
        if r.playout_started:
            self._emit("output_audio_buffer.stopped", response_id=r.id)
        self._release(r)
        self._start_idle_timer(now)

    def _clear_playout(self, now: float) -> None:
        """Drop every sample not yet played (barge-in, ``output_audio_buffer.clear``) and
        truncate the assistant items to what was played."""
        head = self._playout[0]
        for r in self._playout:
            r.limit = r.played
            if r.item_id in self._item_audio_ms:
                self._item_audio_ms[r.item_id] = r.played // MS_SAMPLES
        released = list(self._playout)
        self._playout.clear()
        for r in released:
            self._release(r)
        self._emit("output_audio_buffer.cleared", response_id=head.id)
        self._start_idle_timer(now)

    def _release(self, r: ResponseState) -> None:
        """Forget the audio of a response that neither generates nor plays any more (a long
        session must not keep every answer it ever gave); keep the last few for their ids."""
        if r is not self._active and r not in self._playout:
            r.audio = None
        while len(self._responses) > _KEEP_RESPONSES:
            oldest = next(iter(self._responses))
            if self._responses[oldest] is self._active or self._responses[oldest] in self._playout:
                break
            del self._responses[oldest]

    def _start_idle_timer(self, now: float) -> None:
        vad = self._vad_cfg
        idle = vad.get("idle_timeout_ms") if vad is not None else None
        if idle and self._active is None and not self._playout:
            self._idle_deadline = now + idle / 1000

    # ------------------------------------------------------------------ helpers

    def _response_object(
        self,
        r: ResponseState,
        *,
        output: list[dict[str, Any]] | None = None,
        details: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return response_object(
            r,
            audio_format=self.session["audio"]["output"]["format"],
            conversation_id=self.conversation_id,
            output=output,
            details=details,
            usage=usage,
        )

    def _id(self, prefix: str) -> str:
        return prefix + "".join(self._rng.choices(_ID_CHARS, k=21))

    def _emit(self, kind: str, **fields: Any) -> None:
        event: dict[str, Any] = {"type": kind, "event_id": self._id("event_")}
        for key, value in fields.items():
            event[key] = public(value)
        self.stats.events_sent += 1
        self._out.append(event)

    def _error(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        event_id: Any = None,
        etype: str = "invalid_request_error",
    ) -> None:
        self.stats.errors_sent += 1
        self._emit(
            "error",
            error={
                "type": etype,
                "code": code,
                "message": message,
                "param": param,
                "event_id": event_id if isinstance(event_id, str) else None,
            },
        )

    def _check_fields(self, event: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
        for key in event:
            if key not in ("type", "event_id") and key not in allowed:
                raise SessionError("unknown_parameter", f"Unknown parameter: '{key}'.", key)


def _g711_decode(raw: bytes, *, alaw: bool) -> npt.NDArray[np.int16]:
    if not alaw:
        from gateway.audio.g711 import ulaw_to_array

        return ulaw_to_array(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    return np.frombuffer(audioop.alaw2lin(raw, 2), dtype=np.int16)
