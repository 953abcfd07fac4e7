"""``serve_app`` with a :class:`ConnectionGuard`: real servers on loopback, raw sockets as clients.

Slow clients are played byte for byte (a request head that never ends, a body that stops), and
the bounds are observed from the client's side: when does the server close the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

from gateway.limits import ConnectionGuard, ConnectionLimits, DropReason
from gateway.proxies import parse_networks
from gateway.serving import (
    ResponseHeader,
    RunningServer,
    UpgradeScreen,
    bind_socket,
    serve_app,
)
from tests.support import wait_until

pytestmark = pytest.mark.timeout(30)

SLOW_HEAD = b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\nX-a: "
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def tiny_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers any request with 200 ``ok`` after reading its body; echoes on a websocket."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "http":
        while (await receive()).get("more_body"):
            pass
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message.get("text") or ""})


class Dropped:
    def __init__(self) -> None:
        self.reasons: list[DropReason] = []

    def __call__(self, reason: DropReason) -> None:
        self.reasons.append(reason)


@contextlib.asynccontextmanager
async def guarded(
    app: Any = tiny_app, screen: UpgradeScreen | None = None, **limits: Any
) -> AsyncIterator[tuple[RunningServer, ConnectionGuard, Dropped]]:
    dropped = Dropped()
    guard = ConnectionGuard(ConnectionLimits(**limits), on_drop=dropped)
    async with serve_app(app, guard=guard, screen=screen, timeout_keep_alive=5) as server:
        yield server, guard, dropped


async def connect(
    server: RunningServer, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(server.host, server.port, local_addr=(source, 0))


async def closed_after(reader: asyncio.StreamReader, limit_s: float) -> float:
    """Seconds until the server closes the connection (EOF or reset), read to the end."""
    start = time.monotonic()
    async with asyncio.timeout(limit_s):
        with contextlib.suppress(ConnectionResetError):
            while await reader.read(65536):
                pass
    return time.monotonic() - start


async def answered(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(GET)
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        return head + await reader.readexactly(2)


def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for w in writers:
        w.close()


async def test_slow_heads_are_closed_at_the_header_timeout_while_requests_are_served() -> None:
    async with guarded(header_timeout_s=0.5, max_connections=200, max_per_client=100) as (
        server,
        guard,
        dropped,
    ):
        slow = [await connect(server) for _ in range(50)]
        for i, (_, writer) in enumerate(slow):
            if i % 2:  # half send a head that never ends, half nothing at all
                writer.write(SLOW_HEAD)
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.post("/twilio/voice", data={"To": "+1"})).text == "ok"
        assert time.monotonic() - started < 0.4  # promptly, not after the slow ones go
        waits = await asyncio.gather(*(closed_after(r, 3) for r, _ in slow))
        close_all([w for _, w in slow])
    assert max(waits) < 0.5 + 0.5
    assert dropped.reasons.count("header_timeout") == 50
    assert guard.table.total == 0


async def test_a_body_that_stops_is_closed_at_the_body_timeout() -> None:
    async with guarded(header_timeout_s=5, body_timeout_s=0.3) as (server, _, dropped):
        reader, writer = await connect(server)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        assert await closed_after(reader, 3) < 0.3 + 0.5
        writer.close()
    assert dropped.reasons == ["body_timeout"]


async def test_a_kept_alive_connection_may_idle_longer_than_the_header_timeout() -> None:
    # Idle between requests is keep-alive's business (timeout_keep_alive=5 here); the header
    # deadline starts again only with the first byte of the next request.
    async with guarded(header_timeout_s=0.3) as (server, _, dropped):
        reader, writer = await connect(server)
        assert (await answered(reader, writer)).endswith(b"ok")
        await asyncio.sleep(0.6)
        assert (await answered(reader, writer)).endswith(b"ok")
        writer.write(b"GET / HTTP/1.1\r\n")  # ...and then nothing
        assert await closed_after(reader, 3) < 0.3 + 0.5
        writer.close()
    assert dropped.reasons == ["header_timeout"]


async def test_connections_over_the_per_client_bound_are_closed_unread() -> None:
    async with guarded(max_per_client=3) as (server, guard, dropped):
        held = [await connect(server) for _ in range(3)]
        reader, writer = await connect(server)
        assert await closed_after(reader, 2) < 0.5
        writer.close()
        # another client (127.0.0.2 is loopback too) is not affected
        other = await connect(server, source="127.0.0.2")
        assert (await answered(*other)).endswith(b"ok")
        assert guard.table.held_by("127.0.0.1") == 3
        close_all([w for _, w in [*held, other]])
    assert dropped.reasons == ["max_connections_per_client"]


async def test_connections_over_the_total_bound_are_closed_unread() -> None:
    async with guarded(max_connections=3) as (server, _, dropped):
        held = [await connect(server, source=f"127.0.0.{i}") for i in (1, 2, 3)]
        reader, writer = await connect(server, source="127.0.0.4")
        assert await closed_after(reader, 2) < 0.5
        writer.close()
        close_all([w for _, w in held])
        await asyncio.gather(*(closed_after(r, 2) for r, _ in held))
        # the slots are free again once the held connections are gone
        again = await connect(server, source="127.0.0.4")
        assert (await answered(*again)).endswith(b"ok")
        again[1].close()
    assert dropped.reasons == ["max_connections"]


async def test_trusted_proxies_are_not_bounded_per_client() -> None:
    exempt = parse_networks(["127.0.0.1"])
    async with guarded(max_per_client=1, exempt=exempt) as (server, _, dropped):
        first, second = await connect(server), await connect(server)
        assert (await answered(*second)).endswith(b"ok")
        assert (await answered(*first)).endswith(b"ok")
        close_all([first[1], second[1]])
    assert dropped.reasons == []


async def test_a_websocket_outlives_the_timeouts_and_holds_its_slot_until_it_closes() -> None:
    async with guarded(header_timeout_s=0.2, body_timeout_s=0.2, max_connections=1) as (
        server,
        guard,
        dropped,
    ):
        async with websockets.connect(f"{server.ws_url}/media") as ws:
            await asyncio.sleep(0.5)  # past both timeouts
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 2) == "still here"
            # a media stream is a connection: the bound of 1 is taken
            reader, writer = await connect(server)
            assert await closed_after(reader, 2) < 0.5
            writer.close()
        # released by the websocket protocol's connection_lost, which has no event to await
        await wait_until(lambda: guard.table.total == 0, 2, what="the websocket's slot freed")
    assert dropped.reasons == ["max_connections"]


async def test_an_upgrade_the_screen_refuses_gets_403_and_never_reaches_the_app() -> None:
    seen: list[str] = []  # the paths of the websocket scopes the app was called with
    screened: list[tuple[str, str, bytes]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            seen.append(scope["path"])
        await tiny_app(scope, receive, send)

    def screen(scope: Any) -> bool:
        screened.append((scope["type"], scope["scheme"], scope["query_string"]))
        return bool(scope["path"] == "/media")

    async with guarded(app, screen, max_connections=10) as (server, guard, _):
        for _ in range(3):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(f"{server.ws_url}/other?x=1"):
                    pass
            assert refused.value.response.status_code == 403
            assert refused.value.response.body == b"forbidden"
        async with websockets.connect(f"{server.ws_url}/media") as ws:
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), 2) == "hello"
        async with httpx.AsyncClient(base_url=server.url) as client:  # plain HTTP: unscreened
            assert (await client.get("/other")).text == "ok"
        await wait_until(lambda: guard.table.total == 0, 2, what="every slot freed")
    assert seen == ["/media"]
    assert screened == [("websocket", "ws", b"x=1")] * 3 + [("websocket", "ws", b"")]


async def test_a_screen_needs_a_guard() -> None:
    with pytest.raises(ValueError, match="guard"):
        async with serve_app(tiny_app, screen=lambda scope: True):
            pass


async def test_response_header_names_the_server_on_http_and_websocket_accepts() -> None:
    app = ResponseHeader(tiny_app, "X-Gateway-Worker", "4242")
    async with serve_app(app) as server:
        async with httpx.AsyncClient() as client:
            resp = await client.get(f"{server.url}/")
        assert resp.text == "ok" and resp.headers["x-gateway-worker"] == "4242"
        async with websockets.connect(server.ws_url) as ws:
            assert ws.response is not None
            assert ws.response.headers["x-gateway-worker"] == "4242"


async def test_serve_app_serves_on_a_socket_bound_elsewhere() -> None:
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    async with serve_app(tiny_app, sock=sock) as server:
        assert server.port == port
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{server.url}/")).text == "ok"
    assert sock.fileno() == -1  # closed with the server
