"""Console sessions: created by login, found until they expire or log out, CSRF per session."""

from __future__ import annotations

import pytest

from gateway.console.sessions import LoginThrottle, Sessions, csrf_ok

pytestmark = pytest.mark.timeout(10)


def test_a_session_lives_until_its_expiry_then_is_gone() -> None:
    sessions = Sessions(ttl_s=100.0)
    s = sessions.login(now=1000.0)
    assert sessions.get(s.session_id, 1099.0) == s
    assert sessions.get(s.session_id, 1100.0) is None
    assert len(sessions) == 0


def test_logout_ends_only_that_session() -> None:
    sessions = Sessions()
    a, b = sessions.login(0.0), sessions.login(0.0)
    sessions.logout(a.session_id)
    sessions.logout(a.session_id)  # idempotent
    assert sessions.get(a.session_id, 1.0) is None
    assert sessions.get(b.session_id, 1.0) == b


def test_unknown_or_empty_ids_find_nothing() -> None:
    sessions = Sessions()
    sessions.login(0.0)
    assert sessions.get(None, 1.0) is None
    assert sessions.get("", 1.0) is None
    assert sessions.get("forged", 1.0) is None


def test_the_oldest_sessions_are_forgotten_past_the_bound() -> None:
    sessions = Sessions(max_sessions=2)
    first = sessions.login(0.0)
    sessions.login(1.0)
    sessions.login(2.0)
    assert len(sessions) == 2
    assert sessions.get(first.session_id, 3.0) is None


def test_csrf_tokens_are_per_session_and_random() -> None:
    sessions = Sessions()
    a, b = sessions.login(0.0), sessions.login(0.0)
    assert a.session_id != b.session_id and a.csrf_token != b.csrf_token
    assert csrf_ok(a, a.csrf_token)
    assert not csrf_ok(a, b.csrf_token)
    assert not csrf_ok(a, None)
    assert not csrf_ok(a, "")


def test_logins_are_refused_for_a_while_after_too_many_wrong_tokens() -> None:
    throttle = LoginThrottle(failures=3, window_s=60.0)
    for at in (0.0, 1.0, 2.0):
        assert throttle.retry_after(at) is None
        throttle.failed(at)
    assert throttle.retry_after(10.0) == 50.0  # until the first failure leaves the window
    assert throttle.retry_after(60.0) is None
    throttle.failed(60.0)  # failures now at 1, 2 and 60
    assert throttle.retry_after(60.5) == 0.5
    assert throttle.retry_after(61.0) is None
