"""Admission control and call binding, pure (the clock is passed in).

The webhook *admits* a call: it reserves capacity and mints a token that travels to the media
stream as a ``<Parameter>``. The stream's ``start`` must present the call SID, the dialled number
and that token before it expires; only then does the call become *live*. Everything else is
refused before it can cost an upstream session.

The token is ``v1.<expiry>.<HMAC-SHA256(secret, call SID | number | expiry)>``, so any replica
holding the same secret can verify it: behind a load balancer, Twilio's webhook and its media
websocket are two connections that may reach different processes. ``now`` is wall-clock time
(seconds since the epoch) for that reason — replicas share it, not their monotonic clocks.
A call SID binds once per replica; its token expires after ``token_ttl_s``.

A call SID is also *admitted* once per replica: every admitted SID is remembered for
``replay_window_s`` (at most ``max_remembered`` of them, oldest forgotten first), and a webhook
presenting one again is refused with :class:`Replayed`, whether that call is still waiting for
its stream, live, or long over. The one exception is a retry while the first admission is still
pending: it gets the same admission back (same token, same slot), which is what a carrier that
timed out reading our answer needs and gives a replayer nothing new. The memory is per process:
replicas behind one load balancer would need a shared store to refuse a replay sent to another
replica (docs/deployment.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

from gateway.errors import CapacityError, Forbidden

REPLAY_WINDOW_S = 24 * 3600.0
MAX_REMEMBERED_CALLS = 100_000


class Replayed(Forbidden):
    """The webhook names a call SID this replica already admitted: a replayed request."""


@dataclass(frozen=True, slots=True)
class Admission:
    call_sid: str
    token: str
    called: str | None
    caller: str | None
    expires_at: float
    answer_at: float = 0.0
    """When the webhook should answer (same clock as ``now``): later than the admission when
    setups are paced (``max_setup_rate``) and this one waits its turn in the queue."""


@dataclass
class Admissions:
    """Capacity = live calls + admitted calls whose stream has not started yet.

    ``max_setup_rate`` (calls per second, a token bucket holding ``max(1, rate)`` calls) paces
    new calls: every admitted call opens an upstream session, and a burst of setups is what
    tips a process over, not the calls it already carries. A call over the rate is *queued*
    when its turn comes within ``setup_queue_s`` — admitted now, its :attr:`Admission.answer_at`
    saying when the webhook may answer, so its setup starts in its turn — and refused
    (:class:`CapacityError`: the fallback) otherwise. Turns are kept in arrival order (the
    bucket is a GCRA schedule: each admission books the next free turn). ``None``: no limit.

    ``hold_pending=False`` is for sibling workers sharing one port (``gateway serve --workers``):
    the stream lands on whichever worker the kernel picks, so a slot reserved by the webhook's
    worker would mostly be held in the wrong process until the token expired. Then the webhook
    only checks for room (live calls, draining, setup rate) and reserves nothing, and the slot
    is taken where the stream binds, which refuses it with :class:`CapacityError` when full.
    """

    max_calls: int
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    token_ttl_s: float = 60.0
    max_setup_rate: float | None = None
    setup_queue_s: float = 0.0
    replay_window_s: float = REPLAY_WINDOW_S
    max_remembered: int = MAX_REMEMBERED_CALLS
    draining: bool = False
    hold_pending: bool = True
    _pending: dict[str, Admission] = field(default_factory=dict)
    _live: set[str] = field(default_factory=set)
    _bound: dict[str, float] = field(default_factory=dict)  # call SID -> token expiry
    # call SID -> when it was admitted, oldest first: what refuses a replayed webhook.
    _admitted: OrderedDict[str, float] = field(default_factory=OrderedDict)
    # The pacing schedule: when the bucket would be full again after the turns booked so far
    # (the "theoretical arrival time" of GCRA); None before the first paced admission.
    _full_at: float | None = None

    @property
    def live(self) -> int:
        return len(self._live)

    def load(self, now: float) -> int:
        self._expire(now)
        return len(self._live) + (len(self._pending) if self.hold_pending else 0)

    def has_room(self, now: float) -> bool:
        """Whether a call arriving at ``now`` would be admitted (perhaps queued)."""
        return (
            not self.draining
            and self.load(now) < self.max_calls
            and self._next_turn(now) is not None
        )

    def _next_turn(self, now: float) -> float | None:
        """When a setup admitted at ``now`` may start (``now``, or later within
        ``setup_queue_s``); None when its turn would come later than that."""
        rate = self.max_setup_rate
        if rate is None:
            return now
        interval = 1.0 / rate
        tolerance = (max(1.0, rate) - 1.0) * interval  # the bucket's depth, in time
        full_at = max(now, self._full_at if self._full_at is not None else now)
        turn = max(now, full_at - tolerance)
        # a hair of slack: float sums of intervals must not refuse a turn exactly at the edge
        return turn if turn - now <= self.setup_queue_s + 1e-9 else None

    def _book_turn(self, now: float) -> None:
        if self.max_setup_rate is None:
            return
        full_at = max(now, self._full_at if self._full_at is not None else now)
        self._full_at = full_at + 1.0 / self.max_setup_rate

    def admit(
        self,
        call_sid: str,
        called: str | None,
        caller: str | None,
        now: float,
        *,
        ttl_s: float | None = None,
    ) -> Admission:
        """Reserve a slot for ``call_sid``; raise :class:`Replayed` when this SID was admitted
        before (answer 403), :class:`CapacityError` when full or draining (answer the fallback).

        ``ttl_s`` overrides ``token_ttl_s`` for this call: an outbound call's stream starts only
        once the callee answers, after it rang.
        """
        self._expire(now)
        existing = self._pending.get(call_sid)
        if existing is not None:
            return existing  # the carrier retried the webhook: same call, same token, same slot
        if call_sid in self._admitted:
            raise Replayed(f"call {call_sid} was already admitted (a replayed webhook?)")
        if self.draining:
            raise CapacityError("the gateway is draining and takes no new calls")
        if self.load(now) >= self.max_calls:
            raise CapacityError(f"at capacity ({self.max_calls} calls)")
        turn = self._next_turn(now)
        if turn is None:
            queued = f" and {self.setup_queue_s:g} s of queue" if self.setup_queue_s else ""
            raise CapacityError(
                f"call setup rate above {self.max_setup_rate:g} per second{queued}; "
                "try again shortly"
            )
        self._book_turn(now)
        # The token's life starts at the answer (the call's setup turn).
        expires_at = float(int(turn + (self.token_ttl_s if ttl_s is None else ttl_s)))
        adm = Admission(
            call_sid=call_sid,
            token=self._token(call_sid, called, expires_at),
            called=called,
            caller=caller,
            expires_at=expires_at,
            answer_at=turn,
        )
        self._pending[call_sid] = adm
        self._remember(call_sid, now)
        return adm

    def _remember(self, call_sid: str, now: float) -> None:
        if call_sid in self._admitted:
            return
        self._admitted[call_sid] = now
        while len(self._admitted) > self.max_remembered:
            self._admitted.popitem(last=False)

    def _mac(self, call_sid: str, called: str | None, expires_at: float) -> str:
        msg = f"{call_sid}|{called or ''}|{int(expires_at)}".encode()
        digest = hmac.new(self.secret, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def _token(self, call_sid: str, called: str | None, expires_at: float) -> str:
        return f"v1.{int(expires_at)}.{self._mac(call_sid, called, expires_at)}"

    def bind(self, call_sid: str, token: str, now: float, called: str | None = None) -> Admission:
        """Turn an admitted call live; raise :class:`Forbidden` unless SID, number and token
        match and the token has not expired, :class:`CapacityError` when a call admitted by
        another replica finds this one full.

        ``called`` is the number the stream claims (its ``<Parameter>``); it is part of what the
        token signs, so a stream cannot switch itself to another number's profile.
        """
        self._expire(now)
        adm = self._pending.get(call_sid)
        if adm is not None:
            called = adm.called
        version, _, rest = token.partition(".")
        expiry_text, _, mac = rest.partition(".")
        if version != "v1" or not expiry_text.isdigit() or not mac:
            raise Forbidden("stream presented no valid call token")
        expires_at = float(expiry_text)
        if expires_at <= now:  # checked first: refusing an expired claim costs no MAC
            raise Forbidden("the call token expired before the stream started")
        if not hmac.compare_digest(mac.encode(), self._mac(call_sid, called, expires_at).encode()):
            raise Forbidden("stream presented a wrong call token")
        if call_sid in self._live or call_sid in self._bound:
            raise Forbidden("this call's stream is already bound (a replayed start?)")
        if adm is None or not self.hold_pending:
            # No slot was reserved here for this call: it must find room now. A draining
            # replica refuses a call another one admitted; sibling workers drain together, so
            # a token one of them minted before the drain still binds where there is room.
            if (self.draining and self.hold_pending) or self.load(now) >= self.max_calls:
                raise CapacityError(f"at capacity ({self.max_calls} calls)")
        if adm is None:
            adm = Admission(call_sid, token, called, None, expires_at)
            self._remember(call_sid, now)  # a webhook replayed to this replica is refused too
        else:
            del self._pending[call_sid]
        self._live.add(call_sid)
        self._bound[call_sid] = expires_at
        return adm

    def release(self, call_sid: str) -> None:
        """The call ended (or its stream failed): free its slot. Idempotent."""
        self._live.discard(call_sid)
        self._pending.pop(call_sid, None)

    def _expire(self, now: float) -> None:
        stale = [sid for sid, a in self._pending.items() if a.expires_at <= now]
        for sid in stale:
            del self._pending[sid]
        spent = [sid for sid, exp in self._bound.items() if exp <= now]
        for sid in spent:
            del self._bound[sid]
        while self._admitted:
            sid, at = next(iter(self._admitted.items()))
            if at + self.replay_window_s > now:
                break
            del self._admitted[sid]


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine: 127.0.0.0/8 or ``::1``.

    Without a Twilio auth token the gateway admits loopback clients only; the load tester
    refuses other targets unless told otherwise.
    """
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
