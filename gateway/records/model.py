"""The record of one finished call: what billing, support and capacity planning read later.

A :class:`CallRecord` is built once, when the call ends, from what the bridge measured; it is
plain data (no behaviour beyond JSON conversion) so the store, the writer's failure log and the
admin API all show the same thing. ``call_sid`` is the key: saving a record twice replaces it.

Times are timezone-aware UTC: a naive datetime is refused rather than guessed, because a record
stored under the wrong hour is worse than a loud error in a test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.records.pricing import Usage

__all__ = ["CallRecord", "utc"]


def utc(value: datetime, name: str = "datetime") -> datetime:
    """``value`` in UTC; raises ``ValueError`` when it is naive."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _parse_time(value: Any, name: str) -> datetime:
    if isinstance(value, datetime):
        return utc(value, name)
    if isinstance(value, str):
        return utc(datetime.fromisoformat(value), name)
    raise ValueError(f"{name}: expected an ISO 8601 time, got {value!r}")


@dataclass(slots=True)
class CallRecord:
    """One call, as stored. Only ``call_sid`` and ``started_at`` are required.

    ``latency``, ``actions`` and ``errors`` are free-form (stored as JSON): keys such as
    ``response_ms_p50`` or action dicts like ``{"kind": "end_call", "at_ms": 5120, "ok": True}``
    may grow without a schema change. ``cost_usd`` is None when the model's price is unknown.
    """

    call_sid: str
    started_at: datetime
    ended_at: datetime | None = None
    stream_sid: str = ""
    account_sid: str = ""
    number: str = "default"
    """The called number, or "default" when it had no profile of its own."""
    profile: str = ""
    caller: str = ""
    """The caller as the bridge chose to show it (already masked); stored as given."""
    upstream_call_id: str = ""
    model: str = ""
    duration_s: float = 0.0
    outcome: str = ""
    end_reason: str = ""
    turns: int = 0
    barge_ins: int = 0
    setup_ms: float | None = None
    latency: dict[str, float | None] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    recording_path: str | None = None
    dtmf: str = ""
    direction: str = "inbound"
    """``inbound`` (the gateway answered) or ``outbound`` (it placed the call)."""
    answered_by: str | None = None
    """Outbound: Twilio's AMD verdict (``human``, ``machine_end_beep``, ...), or None."""
    answered_by_ms: float | None = None
    """Outbound: from the answer (stream start) to the decision, what the callee waited."""
    voicemail_left: bool | None = None
    """Outbound: whether a voicemail message was said to the end; None when none was due."""

    def __post_init__(self) -> None:
        if not self.call_sid:
            raise ValueError("call_sid must not be empty")
        self.started_at = utc(self.started_at, "started_at")
        if self.ended_at is not None:
            self.ended_at = utc(self.ended_at, "ended_at")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (times as ISO 8601 with ``+00:00``)."""
        return {
            "call_sid": self.call_sid,
            "stream_sid": self.stream_sid,
            "account_sid": self.account_sid,
            "number": self.number,
            "profile": self.profile,
            "caller": self.caller,
            "upstream_call_id": self.upstream_call_id,
            "model": self.model,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "duration_s": self.duration_s,
            "outcome": self.outcome,
            "end_reason": self.end_reason,
            "turns": self.turns,
            "barge_ins": self.barge_ins,
            "setup_ms": self.setup_ms,
            "latency": dict(self.latency),
            "usage": self.usage.as_dict(),
            "cost_usd": self.cost_usd,
            "actions": [dict(a) for a in self.actions],
            "errors": dict(self.errors),
            "recording_path": self.recording_path,
            "dtmf": self.dtmf,
            "direction": self.direction,
            "answered_by": self.answered_by,
            "answered_by_ms": self.answered_by_ms,
            "voicemail_left": self.voicemail_left,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallRecord:
        """The inverse of :meth:`to_dict`; raises ``ValueError`` on a missing key or bad time."""
        try:
            ended = data.get("ended_at")
            return cls(
                call_sid=str(data["call_sid"]),
                started_at=_parse_time(data["started_at"], "started_at"),
                ended_at=None if ended is None else _parse_time(ended, "ended_at"),
                stream_sid=str(data.get("stream_sid") or ""),
                account_sid=str(data.get("account_sid") or ""),
                number=str(data.get("number") or "default"),
                profile=str(data.get("profile") or ""),
                caller=str(data.get("caller") or ""),
                upstream_call_id=str(data.get("upstream_call_id") or ""),
                model=str(data.get("model") or ""),
                duration_s=float(data.get("duration_s") or 0.0),
                outcome=str(data.get("outcome") or ""),
                end_reason=str(data.get("end_reason") or ""),
                turns=int(data.get("turns") or 0),
                barge_ins=int(data.get("barge_ins") or 0),
                setup_ms=None if data.get("setup_ms") is None else float(data["setup_ms"]),
                latency=dict(data.get("latency") or {}),
                usage=Usage.from_dict(data.get("usage")),
                cost_usd=None if data.get("cost_usd") is None else float(data["cost_usd"]),
                actions=[dict(a) for a in data.get("actions") or []],
                errors={str(k): int(v) for k, v in (data.get("errors") or {}).items()},
                recording_path=data.get("recording_path"),
                dtmf=str(data.get("dtmf") or ""),
                direction=str(data.get("direction") or "inbound"),
                answered_by=data.get("answered_by"),
                answered_by_ms=(
                    None if data.get("answered_by_ms") is None else float(data["answered_by_ms"])
                ),
                voicemail_left=data.get("voicemail_left"),
            )
        except KeyError as e:
            raise ValueError(f"call record: missing {e.args[0]!r}") from None
        except TypeError as e:
            raise ValueError(f"call record: {e}") from None
