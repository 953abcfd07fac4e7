"""The bookkeeping of :mod:`gateway.limits`, without sockets (see tests/test_serving.py)."""

from __future__ import annotations

import asyncio
import errno
import logging
import subprocess
import sys
from typing import Any

import pytest

from gateway.limits import (
    ConnectionGuard,
    ConnectionLimits,
    ConnectionTable,
    Notice,
    Slot,
    client_key,
    connection_budget,
    connection_limits,
    quiet_accept_errors,
)
from gateway.proxies import parse_networks
from gateway.settings import Settings

pytestmark = pytest.mark.timeout(30)


def test_client_key_counts_an_ipv6_client_by_its_64() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key(None) == ""
    assert client_key("/run/gw.sock") == "/run/gw.sock"


def test_table_bounds_total_and_per_client_and_releases_once() -> None:
    table = ConnectionTable(ConnectionLimits(max_connections=3, max_per_client=2))
    a1, a2 = table.admit("10.0.0.1"), table.admit("10.0.0.1")
    assert isinstance(a1, Slot) and isinstance(a2, Slot)
    assert table.admit("10.0.0.1") == "max_connections_per_client"
    b = table.admit("10.0.0.2")
    assert isinstance(b, Slot)
    assert table.admit("10.0.0.3") == "max_connections"
    a1.release()
    a1.release()  # harmless
    assert table.total == 2 and table.held_by("10.0.0.1") == 1
    assert isinstance(table.admit("10.0.0.3"), Slot)


def test_trusted_proxies_are_bounded_only_in_total() -> None:
    limits = ConnectionLimits(
        max_connections=3, max_per_client=1, exempt=parse_networks(["10.9.0.0/16"])
    )
    table = ConnectionTable(limits)
    assert all(isinstance(table.admit("10.9.0.5"), Slot) for _ in range(3))
    assert table.admit("10.9.0.5") == "max_connections"


def test_notice_says_the_first_at_once_then_one_summary_per_interval() -> None:
    notice = Notice(interval_s=60)
    assert notice.count(0.0) == 1
    assert [notice.count(t) for t in (1.0, 2.0, 59.0)] == [None, None, None]
    assert notice.count(60.0) == 4  # the three held back and this one


def test_guard_logs_refusals_once_a_minute_and_counts_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reasons: list[str] = []
    now = [0.0]
    guard = ConnectionGuard(
        ConnectionLimits(max_per_client=1), on_drop=reasons.append, clock=lambda: now[0]
    )
    assert guard.admit("10.0.0.1") is not None
    with caplog.at_level(logging.WARNING, logger="gateway.limits"):
        for _ in range(1000):
            assert guard.admit("10.0.0.1") is None
    assert reasons == ["max_connections_per_client"] * 1000
    assert len(caplog.records) == 1


def _settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


def test_limits_fit_the_open_file_limit_and_one_client_gets_half_at_most(
    caplog: pytest.LogCaptureFixture,
) -> None:
    roomy = connection_limits(_settings(), open_files=1 << 20)
    assert (roomy.max_connections, roomy.max_per_client) == (1000, 100)
    with caplog.at_level(logging.WARNING, logger="gateway.limits"):
        tight = connection_limits(_settings(max_calls=5), open_files=256)
    assert tight.max_connections == connection_budget(256, 5) == 256 - 64 - 5 * 8
    assert tight.max_per_client == tight.max_connections // 2
    assert "GATEWAY_MAX_CONNECTIONS=1000 does not fit the open-file limit (256)" in caplog.text


def test_raise_open_file_limit_takes_the_hard_limit() -> None:
    # In a child process: the test process keeps its own limits.
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 512));"
        "from gateway.limits import raise_open_file_limit as r;"
        "print(r(), resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=20
    ).stdout
    assert out.split() == ["512", "(512,", "512)"]


async def test_accept_errors_are_summarised_and_other_errors_pass_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        with caplog.at_level(logging.ERROR, logger="gateway.limits"), quiet_accept_errors(loop):
            emfile = OSError(errno.EMFILE, "Too many open files")
            for _ in range(2048):  # what one listen backlog's worth of accept() calls reports
                loop.call_exception_handler(
                    {"message": "socket.accept() out of system resource", "exception": emfile}
                )
            loop.call_exception_handler({"message": "something else", "exception": ValueError()})
        assert [r.getMessage() for r in caplog.records] == [
            "accept() failed 1 time(s) in the last 60 s: Too many open files (the process is "
            "out of descriptors or memory; new connections wait in the listen queue)"
        ]
        assert [c["message"] for c in seen] == ["something else"]
        assert loop.get_exception_handler() is not None
    finally:
        loop.set_exception_handler(None)
