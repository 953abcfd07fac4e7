"""``gateway emulator``: run the Realtime emulator as a server (the lead registers it).

Register with ``app.command("emulator")(emulator_command)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["emulator_command"]


def emulator_command(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on")] = 8765,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Server key clients must present (default: OPENAI_API_KEY; with neither, any "
            "non-empty bearer is accepted)",
            show_default=False,
        ),
    ] = None,
    reply: Annotated[
        str,
        typer.Option(
            help="What the assistant answers: speech (names the voice, the turn and how long "
            "the caller spoke), echo (replays the caller) or tone"
        ),
    ] = "speech",
    latency_ms: Annotated[
        float, typer.Option(min=0, help="Model latency: end of turn -> first audio (ms)")
    ] = 300.0,
    latency_jitter_ms: Annotated[
        float, typer.Option(min=0, help="Uniform +- jitter added to --latency-ms")
    ] = 0.0,
    generation_speed: Annotated[
        float,
        typer.Option(min=1.0, help="How much faster than real time the model produces audio"),
    ] = 4.0,
    receive_buffer_ms: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=160,
            help="Caller-audio receiver: longest wait for a missing packet, in-order audio "
            "never held (default: aiortc's buffer, 80 ms for every frame)",
            show_default=False,
        ),
    ] = None,
    event_log: Annotated[
        Path | None,
        typer.Option(help="Append every event, both directions, to this JSON-lines file"),
    ] = None,
    max_session_s: Annotated[
        float | None,
        typer.Option(
            min=1, help="End sessions with session_expired after this long (default 3600)"
        ),
    ] = None,
    tool_call: Annotated[
        str | None,
        typer.Option(help="Call this session tool (by name) after --tool-call-after-turn"),
    ] = None,
    tool_call_after_turn: Annotated[
        int, typer.Option(min=1, help="User turn after which --tool-call is made")
    ] = 1,
    refuse_status: Annotated[
        int | None,
        typer.Option(help="Fault: refuse POST /v1/realtime/calls with 401, 403, 429, 500 or 503"),
    ] = None,
    refuse_count: Annotated[
        int | None, typer.Option(min=0, help="Fault: refuse only the first N calls")
    ] = None,
    ice_delay_s: Annotated[
        float | None, typer.Option(min=0, help="Fault: hold ICE back this many seconds")
    ] = None,
    ice_fail: Annotated[bool, typer.Option(help="Fault: never let ICE complete")] = False,
    close_channel_after_s: Annotated[
        float | None, typer.Option(min=0, help="Fault: close the data channel after N s")
    ] = None,
    close_peer_after_s: Annotated[
        float | None, typer.Option(min=0, help="Fault: close the peer connection after N s")
    ] = None,
    server_error_after_s: Annotated[
        float | None, typer.Option(min=0, help="Fault: send a server_error event after N s")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Run the offline OpenAI Realtime emulator (GA WebRTC protocol) until interrupted.

    Clients use http://HOST:PORT/v1 as the Realtime base URL.

    Inspect sessions with GET /emulator/sessions; change faults with POST /emulator/faults.
    """
    import asyncio
    import contextlib
    import logging
    import signal

    from gateway.emulator.app import create_app
    from gateway.emulator.config import EmulatorConfig
    from gateway.serving import serve_app

    key = api_key if api_key is not None else (os.environ.get("OPENAI_API_KEY") or None)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = EmulatorConfig(
            api_key=key,
            reply=reply,
            latency_ms=latency_ms,
            latency_jitter_ms=latency_jitter_ms,
            generation_speed=generation_speed,
            receive_buffer_ms=receive_buffer_ms,
            event_log=event_log,
            max_session_s=max_session_s,
            tool_call=tool_call,
            tool_call_after_turn=tool_call_after_turn,
            refuse_status=refuse_status,
            refuse_count=refuse_count,
            ice_delay_s=ice_delay_s,
            ice_fail=ice_fail,
            close_channel_after_s=close_channel_after_s,
            close_peer_after_s=close_peer_after_s,
            server_error_after_s=server_error_after_s,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # not on Windows
                loop.add_signal_handler(sig, stop.set)
        async with serve_app(create_app(config), host=host, port=port, log_level="warning") as srv:
            typer.echo(f"Realtime emulator listening on {srv.url}/v1 (reply: {reply})")
            await stop.wait()
        typer.echo("emulator stopped")

    asyncio.run(run())
