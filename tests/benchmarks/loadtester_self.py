"""The load tester's own cost: how many simulated calls one core drives without falling behind.

The load tester must be cheaper than what it measures, or its figures measure itself. This
runs ``N`` conversation calls from this process pinned to one CPU against a deliberately cheap
counterpart pinned to the other: a carrier-side echo server that answers each call with a
second of tone (the "greeting"), then plays the caller's own audio back 4 s late (so every
turn gets an "answer" soon after the caller stops), with a mark every second. Every frame the
tool sends is paced on a monotonic clock; the report is how late it woke for those deadlines
(p50/p99/max over every frame of every call) and the CPU it used.

    .venv/bin/python tests/benchmarks/loadtester_self.py --calls 200 [--json]

A run holds when every call completes and the p99 pacing lateness stays <= 5 ms. Needs two
CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, no install

from gateway.audio.g711 import array_to_ulaw
from gateway.loadtest.report import summarize
from gateway.loadtest.runner import LoadPlan, LoadRun, Target
from gateway.loadtest.scenarios import CallerLines, ScenarioMix
from gateway.loadtest.spawn import free_port

PACING_LIMIT_MS = 5.0
GREETING_FRAMES = 50  # 1 s of tone
ECHO_DELAY_FRAMES = 200  # 4 s: longer than any question, so the echo starts after the turn


def _tone_frames() -> list[str]:
    t = np.arange(GREETING_FRAMES * 160) / 8000
    pcm = (6000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    ulaw = array_to_ulaw(pcm)
    return [base64.b64encode(ulaw[i : i + 160]).decode() for i in range(0, len(ulaw), 160)]


async def _echo(ws: ServerConnection) -> None:
    tone = _tone_frames()
    stream_sid = ""
    delay: deque[str] = deque()
    sent = 0
    with contextlib.suppress(ConnectionClosed):
        async for raw in ws:
            msg = json.loads(raw)
            event = msg.get("event")
            if event == "start":
                stream_sid = msg["start"]["streamSid"]
            elif event == "media":
                delay.append(msg["media"]["payload"])
                if sent < GREETING_FRAMES:
                    payload = tone[sent]
                elif len(delay) > ECHO_DELAY_FRAMES:
                    payload = delay.popleft()
                else:
                    continue
                while len(delay) > ECHO_DELAY_FRAMES:
                    delay.popleft()
                sent += 1
                out = {"event": "media", "streamSid": stream_sid, "media": {"payload": payload}}
                await ws.send(json.dumps(out))
                if sent % 50 == 0:
                    mark = {"event": "mark", "streamSid": stream_sid, "mark": {"name": str(sent)}}
                    await ws.send(json.dumps(mark))
            elif event == "stop":
                return


async def _serve_echo(port: int) -> None:
    async with serve(_echo, "127.0.0.1", port, compression=None, ping_interval=None):
        await asyncio.Future()


async def _run(args: argparse.Namespace, port: int) -> dict[str, Any]:
    for _ in range(100):
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        await asyncio.sleep(0.1)
    os.sched_setaffinity(0, {1})
    lines = CallerLines.synthesized()
    plan = LoadPlan(calls=args.calls, concurrency=args.calls, ramp_up_s=args.ramp)
    target = Target(f"http://127.0.0.1:{port}", webhook_path=None, metrics_path=None)
    mix = ScenarioMix.parse("conversation", turns=args.turns, think_ms=500)
    run = LoadRun(plan, target, mix, lines)
    cpu0, t0 = time.process_time(), time.monotonic()
    result = await run.run()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    summary = summarize(result)
    pacing = summary["pacing_lateness_ms"]
    calls = summary["calls"]
    call_minutes = summary["call_minutes"]
    return {
        "calls": args.calls,
        "holds": calls["failed"] == 0 and pacing["p99"] <= PACING_LIMIT_MS,
        "completed": calls["completed"],
        "failures": calls["failures"],
        "peak_concurrency": summary["peak_concurrency"],
        "pacing_lateness_ms": pacing,
        "cpu_percent": round(100 * cpu / wall, 1),
        "cpu_percent_per_call": round(100 * cpu / wall / args.calls, 3),
        "cpu_seconds_per_call_minute": round(cpu / call_minutes, 3) if call_minutes else None,
        "frames_played": summary["audio"]["frames_played"],
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--ramp", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_echo(args.serve_echo))
        return
    if not {0, 1} <= os.sched_getaffinity(0):
        parser.error("needs CPUs 0 and 1")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve-echo", str(port)],
        preexec_fn=lambda: os.sched_setaffinity(0, {0}),
        stdin=subprocess.DEVNULL,
    )
    try:
        report = asyncio.run(_run(args, port))
    finally:
        server.terminate()
        server.wait(10)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    p = report["pacing_lateness_ms"]
    print(
        f"{report['calls']} calls on one core: {report['completed']} completed, "
        f"pacing lateness p50 {p['p50']:.2f} ms, p99 {p['p99']:.2f} ms, max {p['max']:.1f} ms; "
        f"CPU {report['cpu_percent']:.0f}% of a core "
        f"({report['cpu_percent_per_call']:.2f}% per call); "
        f"{'holds' if report['holds'] else 'DOES NOT HOLD'} (p99 <= {PACING_LIMIT_MS:g} ms)"
    )


if __name__ == "__main__":
    main()
