"""Run an ASGI app under uvicorn inside the current event loop, on a (possibly ephemeral) port.

Used by the CLI (``serve``, ``emulator``, ``demo``), the load tester's ``--spawn`` and the tests
(servers on free loopback ports, started and stopped by the test itself)::

    async with serve_app(app, host="127.0.0.1", port=0) as server:
        httpx.get(f"{server.url}/healthz")

With ``guard=`` (``gateway serve`` passes one) every connection is held to the bounds of
:mod:`gateway.limits`: the time to send a request head and body, and the connections open in
total and per client. Without it uvicorn's own behaviour applies (the embedded emulator, tests).

With ``screen=`` as well, every websocket upgrade request is first shown to the screen (its
ASGI scope), and one it refuses is answered ``403`` by the HTTP protocol itself: no websocket
handshake, no app call: a refused upgrade costs accepting the connection, parsing its head,
the check and one write, so a burst of upgrades that cannot become calls takes as little of
the event loop from the live calls as a connection can.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, cast

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from gateway.aio import cancel_and_wait
from gateway.limits import ConnectionGuard, Slot

_Phase = Literal["header", "body", "idle", "upgraded"] | None

UpgradeScreen = Callable[[Mapping[str, Any]], bool]
"""Asked, with the ASGI scope of a websocket upgrade request (``type`` ``"websocket"``, before
the handshake), whether the app should see it at all; ``False`` answers ``403`` at once. It
runs on the event loop for every upgrade: keep it cheap, never await, never raise."""

_REFUSAL: Final = (
    b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 9\r\nconnection: close\r\n\r\nforbidden"
)


@dataclass(frozen=True, slots=True)
class _Screen:
    """Holds the screen function for the protocol class (a bare function there would bind)."""

    allows: UpgradeScreen


@dataclass(frozen=True, slots=True)
class RunningServer:
    host: str
    port: int
    server: uvicorn.Server

    @property
    def url(self) -> str:
        """``http://host:port`` (IPv6 hosts bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :]


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the process owner decides what a signal means
    (``gateway serve`` drains on SIGTERM; tests and embedded servers must not steal signals)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _GuardedWebSocket(WebSocketsSansIOProtocol):
    """uvicorn's websocket protocol, releasing the connection's slot when the socket closes
    (after an upgrade the HTTP protocol no longer hears of the connection)."""

    slot: Slot | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            if self.slot is not None:
                self.slot.release()


class _GuardedHttp(H11Protocol):
    """uvicorn's h11 protocol under a :class:`ConnectionGuard`: a connection over a bound is
    closed unread, and one deadline runs while the peer owes us something: the request head
    (from the connection, or from the first byte of a keep-alive connection's next request),
    then its body. Between requests uvicorn's keep-alive timer applies; once upgraded to a
    websocket, neither."""

    guard: ClassVar[ConnectionGuard]
    screen: ClassVar[_Screen | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slot: Slot | None = None
        self._refused = False
        self._phase: _Phase = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        slot = self.guard.admit(peer[0] if isinstance(peer, tuple) and peer else None)
        if slot is None:
            # The cheapest refusal: no parser state, no app call, no log line of its own.
            self._refused = True
            cast(asyncio.Transport, transport).abort()
            return
        self._slot = slot
        super().connection_made(cast(asyncio.Transport, transport))
        self._enter("header")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return  # uvicorn never saw this connection
        self._enter(None)
        try:
            super().connection_lost(exc)
        finally:
            if self._slot is not None:
                self._slot.release()
                self._slot = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow(data_arrived=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow(data_arrived=False)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        screen = self.screen
        if screen is not None and not screen.allows(self._websocket_scope()):
            self._refuse_upgrade()
            return
        self._enter("upgraded")  # a media stream lasts as long as its call
        slot, self._slot = self._slot, None
        super().handle_websocket_upgrade(event)
        ws = self.transport.get_protocol()
        if isinstance(ws, _GuardedWebSocket):
            ws.slot = slot
        elif slot is not None:
            slot.release()  # a protocol we cannot follow: never leak the count

    def _websocket_scope(self) -> dict[str, Any]:
        # uvicorn filled ``self.scope`` for the request before deciding to upgrade; the
        # websocket protocol would build the same one with these two keys changed.
        scheme = "wss" if self.scheme == "https" else "ws"
        return {**self.scope, "type": "websocket", "scheme": scheme, "subprotocols": []}

    def _refuse_upgrade(self) -> None:
        """``403`` and close, the app never called: one constant response in one write (h11
        would build the same bytes through its state machine, three sends instead of one)."""
        self._enter(None)
        self.transport.write(_REFUSAL)
        self.transport.close()

    def _follow(self, *, data_arrived: bool) -> None:
        """Set the deadline for what the peer owes now, by the h11 state of its side."""
        if self._phase == "upgraded" or self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            # No complete head yet. After a response, waiting is keep-alive until a byte of the
            # next request arrives; from then the head has header_timeout_s to arrive.
            if self._phase != "header":
                self._enter("header" if data_arrived else "idle")
        elif state is h11.SEND_BODY:
            self._enter("body")
        else:
            self._enter(None)  # the request is in: the app's turn, no deadline for the peer

    def _enter(self, phase: _Phase) -> None:
        if phase == self._phase:
            return  # a deadline runs from the start of its phase, not from the last byte
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        limits = self.guard.limits
        if phase == "header":
            self._deadline = self.loop.call_later(limits.header_timeout_s, self._expire, phase)
        elif phase == "body":
            self._deadline = self.loop.call_later(limits.body_timeout_s, self._expire, phase)

    def _expire(self, phase: _Phase) -> None:
        self._deadline = None
        self.guard.dropped("header_timeout" if phase == "header" else "body_timeout")
        self.transport.close()


def guarded_protocols(
    guard: ConnectionGuard, screen: UpgradeScreen | None = None
) -> tuple[type[asyncio.Protocol], type[asyncio.Protocol]]:
    """The ``http`` and ``ws`` protocol classes for ``uvicorn.Config`` that apply ``guard``
    (and ``screen`` to websocket upgrades).

    They are uvicorn's h11 and websockets (sans-I/O) protocols, what ``auto`` picks without
    httptools; naming them keeps the guard in force whichever optional parser is installed."""
    checks = {"guard": guard, "screen": None if screen is None else _Screen(screen)}
    http = type("GuardedHttpProtocol", (_GuardedHttp,), checks)
    return http, _GuardedWebSocket


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``0``: a free port), inheritable by children."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


@contextlib.asynccontextmanager
async def serve_app(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    guard: ConnectionGuard | None = None,
    screen: UpgradeScreen | None = None,
    sock: socket.socket | None = None,
    **uvicorn_options: Any,
) -> AsyncIterator[RunningServer]:
    """Serve ``app`` until the block exits; ``port=0`` picks a free port (read it from ``.port``).

    The socket is bound before uvicorn starts, so the port is known and no other process can
    take it between choosing and binding. ``sock`` is one already bound (a worker's share of
    its supervisor's listening socket; ``host`` and ``port`` are then read from it); it is
    closed on exit. ``guard`` bounds connections and request read times; ``screen`` (with a
    ``guard``) refuses websocket upgrades before the handshake (see the module docstring).
    """
    if screen is not None and guard is None:
        raise ValueError("screen= needs guard=: it runs in the guarded HTTP protocol")
    if guard is not None:
        http, ws = guarded_protocols(guard, screen)
        uvicorn_options.update(http=http, ws=ws)
    if sock is None:
        sock = bind_socket(host, port)
    else:
        host = sock.getsockname()[0]
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level=log_level,
        lifespan="on",
        access_log=False,
        log_config=None,  # uvicorn's lines go through our handlers (JSON when configured)
        # uvicorn would rewrite the client address and scheme from X-Forwarded-* sent by any
        # loopback peer (FORWARDED_ALLOW_IPS); the gateway decides whom to believe itself
        # (gateway.proxies, GATEWAY_TRUSTED_PROXIES).
        proxy_headers=uvicorn_options.pop("proxy_headers", False),
        **uvicorn_options,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"uvicorn:{bound_port}")
    try:
        while not server.started:
            if task.done():
                task.result()  # re-raise the start-up failure
                raise RuntimeError("uvicorn exited during start-up")
            await asyncio.sleep(0.005)
        yield RunningServer(host=host, port=bound_port, server=server)
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=5)
        except TimeoutError:
            server.force_exit = True
            await cancel_and_wait(task)
        sock.close()


class ResponseHeader:
    """ASGI middleware adding one header to every HTTP response and websocket accept.

    ``gateway serve --workers`` names the worker that answered (``x-gateway-worker: <pid>``),
    so an operator, or a test, can tell which process served a request on the shared port."""

    def __init__(self, app: Any, name: str, value: str) -> None:
        self.app = app
        self.header = (name.lower().encode("latin-1"), value.encode("latin-1"))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Any) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)
