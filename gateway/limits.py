"""What one client, or many, may hold of the process: connections, and time to send a request.

An HTTP server that waits forever for a request head, or keeps every connection it accepts,
lets a few slow clients hold all of its file descriptors (slowloris): the webhook of a real
call then times out. The gateway bounds, per server:

- the time from accepting a connection (or from the first byte of a keep-alive connection's
  next request) to a complete request head: ``header_timeout_s``;
- the time from the head to the end of the request body: ``body_timeout_s``;
- open connections in total (HTTP and upgraded websockets): ``max_connections``, kept below
  the open-file limit by :func:`connection_budget` so ``accept()`` never runs out of
  descriptors;
- open connections per client address (an IPv6 client is its /64): ``max_per_client``, at
  most half the total so one address cannot take them all, except for the trusted proxies,
  which bound their own clients.

A connection over a bound is closed as soon as it is accepted: no request is read, the app is
not called, nothing is logged per connection (:class:`ConnectionGuard` counts it and says so in
at most one line a minute). Idle keep-alive is uvicorn's own ``timeout_keep_alive``. A websocket
(a media stream) is exempt from both timeouts once upgraded, and still counts as a connection.

This module holds the bookkeeping and no I/O; :mod:`gateway.serving` applies it to uvicorn's
connections.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from gateway.proxies import Network, is_trusted

if TYPE_CHECKING:
    from gateway.settings import Settings

log = logging.getLogger("gateway.limits")

DropReason = Literal[
    "max_connections", "max_connections_per_client", "header_timeout", "body_timeout"
]
"""Why a connection was closed by the gateway before its request was complete."""

# Descriptors kept for everything that is not an accepted connection: the listening socket,
# log and record files, the upstream HTTP pool, and per call its WebRTC UDP sockets (one per
# local address and component) and a recording file.
BASE_RESERVED_FDS = 64
RESERVED_FDS_PER_CALL = 8
NOTICE_INTERVAL_S = 60.0
UNKNOWN_OPEN_FILES = 1 << 20  # where the platform has no RLIMIT_NOFILE


def connection_budget(open_files: int, max_calls: int) -> int:
    """The most connections the process can accept under ``open_files`` descriptors while
    ``max_calls`` calls hold their other sockets and files (at least 1)."""
    return max(1, open_files - BASE_RESERVED_FDS - RESERVED_FDS_PER_CALL * max_calls)


def raise_open_file_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit and return the soft limit now in force
    (containers often start with 1024 soft under a far higher hard limit). Call once at start-up,
    before sizing :class:`ConnectionLimits`."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to raise
        return UNKNOWN_OPEN_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return UNKNOWN_OPEN_FILES
    target = UNKNOWN_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # e.g. macOS caps the soft limit below an "unlimited" hard limit
    return int(soft)


def open_file_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` in force."""
    try:
        import resource
    except ImportError:
        return UNKNOWN_OPEN_FILES
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return UNKNOWN_OPEN_FILES if soft == resource.RLIM_INFINITY else int(soft)


def client_key(address: str | None) -> str:
    """The key a client's connections are counted under: its IPv4 address, or its IPv6 /64
    (one subscriber usually holds a whole /64, so counting single addresses would not bound
    it). Anything that is not an IP literal (a Unix socket) is counted as itself."""
    if not address:
        return ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The bounds of one server; ``0`` for ``max_connections`` or ``max_per_client`` means no
    bound of that kind. ``exempt`` lists the peers not bounded per client (trusted proxies)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    max_connections: int = 0
    max_per_client: int = 0
    exempt: tuple[Network, ...] = ()


def connection_limits(settings: Settings, open_files: int) -> ConnectionLimits:
    """The bounds ``settings`` ask for, with ``max_connections`` lowered (and logged) to what
    ``open_files`` descriptors allow next to ``settings.max_calls`` calls, and the per-client
    bound to half of that."""
    budget = connection_budget(open_files, settings.max_calls)
    if settings.max_connections > budget:
        log.warning(
            "GATEWAY_MAX_CONNECTIONS=%d does not fit the open-file limit (%d) next to %d calls: "
            "at most %d connections are accepted; raise the limit (ulimit -n, the container's "
            "nofile) to accept more",
            settings.max_connections,
            open_files,
            settings.max_calls,
            budget,
        )
    total = min(settings.max_connections, budget)
    # One client (not a trusted proxy) never holds more than half: the rest stays for others.
    per_client = settings.max_connections_per_client
    if per_client == 0 or per_client > total // 2:
        per_client = max(1, total // 2)
    return ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_connections=total,
        max_per_client=per_client,
        exempt=settings.trusted_proxy_networks(),
    )


class Slot:
    """One admitted connection; :meth:`release` it exactly when the connection is lost
    (releasing twice is harmless)."""

    __slots__ = ("_key", "_table")

    def __init__(self, table: ConnectionTable, key: str) -> None:
        self._table: ConnectionTable | None = table
        self._key = key

    def release(self) -> None:
        table, self._table = self._table, None
        if table is not None:
            table._release(self._key)


class ConnectionTable:
    """Open connections, in total and per client key, against :class:`ConnectionLimits`."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.total = 0
        self._per_client: dict[str, int] = {}

    def admit(self, address: str | None) -> Slot | DropReason:
        """A :class:`Slot` for a connection from ``address``, or why it must be closed now."""
        limits = self.limits
        if limits.max_connections and self.total >= limits.max_connections:
            return "max_connections"
        key = client_key(address)
        held = self._per_client.get(key, 0)
        if (
            limits.max_per_client
            and held >= limits.max_per_client
            and not is_trusted(address, limits.exempt)
        ):
            return "max_connections_per_client"
        self.total += 1
        self._per_client[key] = held + 1
        return Slot(self, key)

    def held_by(self, address: str | None) -> int:
        return self._per_client.get(client_key(address), 0)

    def _release(self, key: str) -> None:
        self.total -= 1
        left = self._per_client[key] - 1
        if left:
            self._per_client[key] = left
        else:
            del self._per_client[key]


class Notice:
    """At most one log line per ``interval_s`` about something that can happen thousands of
    times a second: :meth:`count` returns how many happened since the last line when a line is
    due (the first one is due at once), else ``None``."""

    def __init__(self, interval_s: float = NOTICE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._pending = 0
        self._next_at = float("-inf")

    def count(self, now: float) -> int | None:
        self._pending += 1
        if now < self._next_at:
            return None
        n, self._pending = self._pending, 0
        self._next_at = now + self.interval_s
        return n


class ConnectionGuard:
    """A server's :class:`ConnectionTable`, plus what happens when a bound is hit:
    ``on_drop(reason)`` for every closed connection (a metric), one log line a minute at most."""

    def __init__(
        self,
        limits: ConnectionLimits,
        *,
        on_drop: Callable[[DropReason], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.table = ConnectionTable(limits)
        self._on_drop = on_drop
        self._clock = clock
        self._refusals = Notice()

    def admit(self, address: str | None) -> Slot | None:
        """A slot for a new connection from ``address``, or ``None``: close it unread."""
        verdict = self.table.admit(address)
        if isinstance(verdict, Slot):
            return verdict
        self.dropped(verdict)
        n = self._refusals.count(self._clock())
        if n is not None:
            limits = self.limits
            log.warning(
                "connection limit reached: closed %d new connection(s) unread in the last "
                "%.0f s (now: %s, from %s holding %d; limits %s total, %s per client)",
                n,
                self._refusals.interval_s,
                verdict,
                client_key(address),
                self.table.held_by(address),
                limits.max_connections or "no limit",
                limits.max_per_client or "no limit",
            )
        return None

    def dropped(self, reason: DropReason) -> None:
        if self._on_drop is not None:
            self._on_drop(reason)


_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@contextlib.contextmanager
def quiet_accept_errors(loop: Any, notice: Notice | None = None) -> Iterator[Notice]:
    """Within the block, asyncio's ``socket.accept() out of system resource`` reports are
    summarised in one line a minute instead of one ERROR with a traceback each.

    Python 3.11's ``_accept_connection`` keeps calling ``accept()`` up to the listen backlog
    times after an ``EMFILE`` and reports every failure, so a process out of descriptors wrote
    thousands of tracebacks a second. The bounds above keep accepted connections below the
    descriptor limit; this is the net under them. Other exceptions go to the handler that was
    in force before.
    """
    notice = notice or Notice()
    previous = loop.get_exception_handler()

    def handler(loop: Any, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if (
            isinstance(exc, OSError)
            and exc.errno in _ACCEPT_ERRNOS
            and "accept" in str(context.get("message", ""))
        ):
            n = notice.count(time.monotonic())
            if n is not None:
                log.error(
                    "accept() failed %d time(s) in the last %.0f s: %s (the process is out of "
                    "descriptors or memory; new connections wait in the listen queue)",
                    n,
                    notice.interval_s,
                    exc.strerror,
                )
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    try:
        yield notice
    finally:
        loop.set_exception_handler(previous)
