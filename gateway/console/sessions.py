"""Console login sessions, pure: the clock is passed in.

A session is created by presenting the admin token once (the login form); the browser then
holds only a random session id in an ``HttpOnly`` cookie, never the token. Each session has its
own CSRF token, which the page reads from ``/console/api/session`` and sends back in the
``X-CSRF-Token`` header of every state-changing request: a cross-site form cannot read it, and
``SameSite=Strict`` already keeps the cookie off cross-site requests (two independent locks).

Sessions live in this process's memory: a restart logs everyone out, and replicas behind one
load balancer need the console pinned to one of them (docs/console.md).
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass

SESSION_TTL_S = 12 * 3600.0
"""A session ends this long after login, whatever it does meanwhile."""
MAX_SESSIONS = 1000
"""Oldest sessions are forgotten first past this many (logins are admin-only, so this is a
bound against a leaked token being used to fill memory, not a working limit)."""


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    csrf_token: str
    expires_at: float


class Sessions:
    """Create one with :meth:`login`, look it up per request with :meth:`get`, end it with
    :meth:`logout`."""

    def __init__(self, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def login(self, now: float) -> Session:
        """A fresh session; the caller has already checked the admin token."""
        self._expire(now)
        session = Session(
            session_id=secrets.token_urlsafe(32),
            csrf_token=secrets.token_urlsafe(32),
            expires_at=now + self.ttl_s,
        )
        self._by_id[session.session_id] = session
        while len(self._by_id) > self.max_sessions:
            self._by_id.popitem(last=False)
        return session

    def get(self, session_id: str | None, now: float) -> Session | None:
        """The live session with this id, or None (unknown, expired or logged out)."""
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        if session.expires_at <= now:
            del self._by_id[session_id]
            return None
        return session

    def logout(self, session_id: str) -> None:
        """End a session. Idempotent."""
        self._by_id.pop(session_id, None)

    def clear(self) -> None:
        """End every session (the admin token changed)."""
        self._by_id.clear()

    def _expire(self, now: float) -> None:
        stale = [sid for sid, s in self._by_id.items() if s.expires_at <= now]
        for sid in stale:
            del self._by_id[sid]


def csrf_ok(session: Session, presented: str | None) -> bool:
    """Whether ``presented`` (the ``X-CSRF-Token`` header) is this session's token."""
    if not presented:
        return False
    return hmac.compare_digest(presented.encode(), session.csrf_token.encode())


LOGIN_FAILURES = 10
LOGIN_WINDOW_S = 60.0


class LoginThrottle:
    """At most ``failures`` wrong tokens per ``window_s`` seconds, for the whole process: past
    that, logins are refused unread until the window moves on. Process-wide rather than per
    client because a guesser chooses its address; a right token in the meantime waits at most
    ``window_s``. Pure: the clock is passed in."""

    def __init__(self, failures: int = LOGIN_FAILURES, window_s: float = LOGIN_WINDOW_S) -> None:
        self.failures = failures
        self.window_s = window_s
        self._at: deque[float] = deque()

    def _forget(self, now: float) -> None:
        while self._at and self._at[0] <= now - self.window_s:
            self._at.popleft()

    def retry_after(self, now: float) -> float | None:
        """Seconds until a login may be tried, or None when it may be tried now."""
        self._forget(now)
        if len(self._at) < self.failures:
            return None
        return self._at[0] + self.window_s - now

    def failed(self, now: float) -> None:
        self._forget(now)
        self._at.append(now)
