"""Admission control and call binding, pure (the clock is passed in).

The webhook *admits* a call: it reserves capacity and mints a one-time token that travels to the
media stream as a ``<Parameter>``. The stream's ``start`` must present the call SID and that token
before it expires; only then does the call become *live*. Everything else is refused before it
can cost an upstream session.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field

from gateway.errors import CapacityError, Forbidden


@dataclass(frozen=True, slots=True)
class Admission:
    call_sid: str
    token: str
    called: str | None
    caller: str | None
    expires_at: float


@dataclass
class Admissions:
    """Capacity = live calls + admitted calls whose stream has not started yet.

    ``max_setup_rate`` (calls per second, a token bucket holding ``max(1, rate)`` calls) bounds
    how fast new calls are admitted: every admitted call opens an upstream session, and a burst
    of setups is what tips a process over, not the calls it already carries. ``None``: no limit.
    """

    max_calls: int
    token_ttl_s: float = 60.0
    max_setup_rate: float | None = None
    draining: bool = False
    _pending: dict[str, Admission] = field(default_factory=dict)
    _live: set[str] = field(default_factory=set)
    _bucket: float | None = None
    _bucket_at: float = 0.0

    @property
    def live(self) -> int:
        return len(self._live)

    def load(self, now: float) -> int:
        self._expire(now)
        return len(self._live) + len(self._pending)

    def has_room(self, now: float) -> bool:
        return not self.draining and self.load(now) < self.max_calls and self._rate_ok(now)

    def _burst(self) -> float:
        assert self.max_setup_rate is not None
        return max(1.0, self.max_setup_rate)

    def _refill(self, now: float) -> float:
        if self.max_setup_rate is None:
            return float("inf")
        if self._bucket is None:
            self._bucket, self._bucket_at = self._burst(), now
        elapsed = max(0.0, now - self._bucket_at)
        self._bucket = min(self._burst(), self._bucket + elapsed * self.max_setup_rate)
        self._bucket_at = now
        return self._bucket

    def _rate_ok(self, now: float) -> bool:
        return self._refill(now) >= 1.0

    def admit(self, call_sid: str, called: str | None, caller: str | None, now: float) -> Admission:
        """Reserve a slot for ``call_sid``; raise :class:`CapacityError` when full or draining."""
        if self.draining:
            raise CapacityError("the gateway is draining and takes no new calls")
        existing = self._pending.get(call_sid)
        if existing is not None and existing.expires_at > now:
            return existing  # the carrier retried the webhook: same call, same token
        if self.load(now) >= self.max_calls:
            raise CapacityError(f"at capacity ({self.max_calls} calls)")
        if not self._rate_ok(now):
            raise CapacityError(
                f"call setup rate above {self.max_setup_rate:g} per second; try again shortly"
            )
        if self._bucket is not None:
            self._bucket -= 1.0
        adm = Admission(
            call_sid=call_sid,
            token=secrets.token_urlsafe(24),
            called=called,
            caller=caller,
            expires_at=now + self.token_ttl_s,
        )
        self._pending[call_sid] = adm
        return adm

    def bind(self, call_sid: str, token: str, now: float) -> Admission:
        """Turn an admitted call live; raise :class:`Forbidden` unless SID and token match."""
        self._expire(now)
        adm = self._pending.get(call_sid)
        if adm is None:
            raise Forbidden("stream does not belong to a call this gateway admitted (or expired)")
        if not hmac.compare_digest(adm.token.encode(), token.encode()):
            raise Forbidden("stream presented a wrong call token")
        del self._pending[call_sid]
        self._live.add(call_sid)
        return adm

    def release(self, call_sid: str) -> None:
        """The call ended (or its stream failed): free its slot. Idempotent."""
        self._live.discard(call_sid)
        self._pending.pop(call_sid, None)

    def _expire(self, now: float) -> None:
        stale = [sid for sid, a in self._pending.items() if a.expires_at <= now]
        for sid in stale:
            del self._pending[sid]
