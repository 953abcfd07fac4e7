"""Run an ASGI app under uvicorn inside the current event loop, on a (possibly ephemeral) port.

Used by the CLI (``serve``, ``emulator``, ``demo``), the load tester's ``--spawn`` and the tests
(servers on free loopback ports, started and stopped by the test itself)::

    async with serve_app(app, host="127.0.0.1", port=0) as server:
        httpx.get(f"{server.url}/healthz")
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn


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


@contextlib.asynccontextmanager
async def serve_app(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    **uvicorn_options: Any,
) -> AsyncIterator[RunningServer]:
    """Serve ``app`` until the block exits; ``port=0`` picks a free port (read it from ``.port``).

    The socket is bound before uvicorn starts, so the port is known and no other process can
    take it between choosing and binding.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
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
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sock.close()
