"""The emulator's configuration, declared once: :class:`EngineConfig` (how every session
behaves), :class:`Faults` (what goes wrong on purpose) and :class:`EmulatorConfig` (the process:
its key, its event log, and one of each of the other two).

Every value is validated when it is built and a bad one raises :class:`ValueError` naming the
option, so the CLI, the embedded emulator and ``POST /emulator/faults`` refuse the same things
with the same words. ``EmulatorConfig`` also takes the flat option names of the ``gateway
emulator`` command (``EmulatorConfig(latency_ms=50, refuse_status=503)``) and sorts them into
its parts; that is the one place the operator's names meet the parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

from pydantic import ConfigDict

__all__ = [
    "REAL_MAX_SESSION_S",
    "REFUSE_STATUSES",
    "EmulatorConfig",
    "EngineConfig",
    "Faults",
    "Option",
]

REAL_MAX_SESSION_S: Final = 3600.0  # the service ends sessions after 60 minutes
REFUSE_STATUSES: Final = (400, 401, 403, 429, 500, 503)
"""The HTTP statuses ``refuse_status`` can refuse ``POST /calls`` with."""

Reply = Literal["speech", "echo", "tone"]
_REPLIES: Final[tuple[Reply, ...]] = ("speech", "echo", "tone")

Option = str | float | bool | None
"""The value of one flat option of :class:`EmulatorConfig` (ints are floats to the type checker)."""


def _not_negative(**values: float | None) -> None:
    for name, value in values.items():
        if value is not None and value < 0:
            raise ValueError(f"{name} must not be negative, got {value:g}")


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be positive, got {value:g}")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Behaviour of every session of one emulator.

    ``reply``: ``speech`` (a short spoken answer naming the voice, the turn and how long the
    caller spoke), ``echo`` (the caller's utterance played back) or ``tone``. ``latency_ms``
    (+- uniform ``latency_jitter_ms``) is the time from the end of a turn to the first audio;
    ``generation_speed`` how much faster than real time the model produces audio (so
    ``response.done`` precedes the end of playback). ``max_session_s`` ends sessions with
    ``session_expired``. ``tool_call`` names a session tool the model calls after user turn
    ``tool_call_after_turn``.
    """

    reply: Reply = "speech"
    latency_ms: float = 300.0
    latency_jitter_ms: float = 0.0
    generation_speed: float = 4.0
    max_session_s: float = REAL_MAX_SESSION_S
    tool_call: str | None = None
    tool_call_after_turn: int = 1
    receive_buffer_ms: float | None = None
    """Reorder tolerance of the caller-audio receiver (the gateway's short buffer); None keeps
    aiortc's, which holds every frame 80 ms (what OpenAI's own receiver does is not known)."""

    def __post_init__(self) -> None:
        if self.reply not in _REPLIES:
            raise ValueError(f"reply must be speech, echo or tone, got {self.reply!r}")
        _not_negative(latency_ms=self.latency_ms, latency_jitter_ms=self.latency_jitter_ms)
        if self.generation_speed < 1.0:
            raise ValueError(
                f"generation_speed must be at least 1 (real time), got {self.generation_speed:g}"
            )
        _positive("max_session_s", self.max_session_s)
        if self.receive_buffer_ms is not None and not 0 <= self.receive_buffer_ms <= 160:
            raise ValueError(
                f"receive_buffer_ms must be within 0..160, got {self.receive_buffer_ms:g}"
            )
        if self.tool_call_after_turn < 1:
            raise ValueError(
                f"tool_call_after_turn counts user turns from 1, got {self.tool_call_after_turn}"
            )


@dataclass(frozen=True, slots=True)
class Faults:
    """Fault knobs, applied to calls created while they are set (``None`` = off).

    ``refuse_status`` refuses ``POST /calls`` with that HTTP status (one of
    :data:`REFUSE_STATUSES`); ``refuse_count`` limits that to the first N calls, then calls are
    accepted again. ``ice_delay_s`` holds ICE back that long; ``ice_fail`` never lets it
    complete. ``close_channel_after_s`` / ``close_peer_after_s`` close the data channel / the
    peer that long after they opened; ``server_error_after_s`` sends a ``server_error`` event;
    ``max_session_s`` overrides :attr:`EngineConfig.max_session_s`.

    This is also the body of ``POST /emulator/faults``: pydantic validates JSON into it (types,
    then ``__post_init__``), and the config below refuses fields it does not declare.
    """

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    refuse_status: int | None = None
    refuse_count: int | None = None
    ice_delay_s: float | None = None
    ice_fail: bool = False
    close_channel_after_s: float | None = None
    close_peer_after_s: float | None = None
    server_error_after_s: float | None = None
    max_session_s: float | None = None

    def __post_init__(self) -> None:
        if self.refuse_status is not None and self.refuse_status not in REFUSE_STATUSES:
            allowed = ", ".join(map(str, REFUSE_STATUSES))
            raise ValueError(f"refuse_status must be one of {allowed}, got {self.refuse_status}")
        _not_negative(
            refuse_count=self.refuse_count,
            ice_delay_s=self.ice_delay_s,
            close_channel_after_s=self.close_channel_after_s,
            close_peer_after_s=self.close_peer_after_s,
            server_error_after_s=self.server_error_after_s,
        )
        _positive("max_session_s", self.max_session_s)


_ENGINE_OPTIONS: Final = frozenset(f.name for f in fields(EngineConfig))
# A flat max_session_s is the engine's limit; the fault of that name is only set at run time.
_FAULT_OPTIONS: Final = frozenset(f.name for f in fields(Faults)) - _ENGINE_OPTIONS


@dataclass(slots=True, init=False)
class EmulatorConfig:
    """Everything ``gateway emulator`` can be told.

    ``api_key`` None accepts any non-empty bearer (with a warning). ``event_log`` appends every
    event, both directions, as JSON lines. ``engine`` and ``faults`` (those in force at start)
    default to their defaults; the flat ``options`` are fields of either, by name, applied on
    top (an option given as None keeps the default, as the CLI passes options it was not given).
    Raises ``ValueError`` for a bad value and ``TypeError`` for an unknown option.
    """

    api_key: str | None
    event_log: Path | None
    engine: EngineConfig
    faults: Faults
    record_lateness: bool = field(repr=False)

    def __init__(
        self,
        *,
        api_key: str | None = None,
        event_log: Path | None = None,
        engine: EngineConfig | None = None,
        faults: Faults | None = None,
        record_lateness: bool = False,
        **options: Option,
    ) -> None:
        unknown = options.keys() - _ENGINE_OPTIONS - _FAULT_OPTIONS
        if unknown:
            raise TypeError(f"EmulatorConfig got unknown options: {', '.join(sorted(unknown))}")
        given: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
        self.api_key = api_key
        self.event_log = event_log
        self.engine = replace(
            engine or EngineConfig(), **{k: v for k, v in given.items() if k in _ENGINE_OPTIONS}
        )
        self.faults = replace(
            faults or Faults(), **{k: v for k, v in given.items() if k in _FAULT_OPTIONS}
        )
        self.record_lateness = record_lateness
