"""How many concurrent real-time sessions one Realtime emulator process carries.

Run from the repository root::

    .venv/bin/python tests/benchmarks/emulator_capacity.py           # table, one row per step
    .venv/bin/python tests/benchmarks/emulator_capacity.py --json    # {"sessions": N, ...}

The emulator runs alone in a child process (``--serve`` mode of this script) with pacing
recording on. This process is the load: aiortc clients (Opus over loopback WebRTC, the
``oai-events`` channel, a session.update) that talk in turns, each turn a synthesized caller
sentence followed by silence until the spoken answer has played (``--reply speech``, 300 ms
model latency), so the emulator decodes and runs VAD on every frame, synthesizes and paces
replies. The clients send pre-encoded Opus packets and discard what they receive after
aiortc decoded it, so that one client process can load the emulator fully; a step whose
caller audio did not all arrive (``load_delivered`` below ``--min-delivered``) is reported as
limited by the clients, not counted as held.

The load grows in steps (``--steps``, default 10,20,...). Each step adds sessions, waits
``--warmup-s``, then measures for ``--measure-s``:

* ``cpu_percent``: the emulator process's CPU time over wall time (100 = one core);
* ``frame_lateness_ms_p99``: how late the emulator's outbound tracks woke for their 20 ms frames
  (99th percentile over all frames of all sessions in the window);
* ``turns``: answers completed in the window (a check that the load really talks).

A step *holds* when p99 lateness stays within ``--max-lateness-ms`` (default 20, one frame) and
the emulator used less than ``--max-cpu`` percent of a core (95). ``--json`` prints the largest
step that held: ``{"sessions", "cpu_percent_per_session", "frame_lateness_ms_p99"}`` plus the
per-step table under ``steps``. Runtime is bounded: at most ``len(steps) * (warmup + measure)``
seconds plus setup; the first step that does not hold ends the run.

The clients cost CPU too (a peer connection each, about as much as the emulator's side). With
two or more CPUs the emulator is pinned to the first and the clients to the others, so the
figure is what one emulator process carries on one core (``--no-pin`` shares them all); other
work on the machine still competes, so on a busy box it is a lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import os
import random
import re
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, no install

from gateway.audio.tts import CALLER_VOICE, synthesizer
from gateway.emulator.peer import opus_packets, opus_silence

KEY = "sk-capacity-benchmark"
RATE = 24000
SENTENCES = (
    "I would like to book a table for four at seven thirty.",
    "Can you tell me your opening hours on Sunday?",
    "Yes, that works for me, thank you.",
)
SESSION: dict[str, Any] = {
    "type": "realtime",
    "instructions": "You take restaurant bookings.",
    "audio": {
        "input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 500}},
        "output": {"voice": "marin"},
    },
}


# ----------------------------------------------------------------------------- emulator side


def serve(cpu: int | None) -> None:
    """Child-process role: the emulator on a free loopback port, on CPU ``cpu`` alone if given;
    prints its URL, runs until stdin closes."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    from gateway.emulator.app import create_app
    from gateway.emulator.config import EmulatorConfig
    from gateway.serving import serve_app

    async def run() -> None:
        cfg = EmulatorConfig(api_key=KEY, reply="speech", latency_ms=300, record_lateness=True)
        async with serve_app(create_app(cfg), host="127.0.0.1", port=0) as srv:
            print(srv.url, flush=True)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, sys.stdin.read)

    asyncio.run(run())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- client side


class PacketTrack(MediaStreamTrack):
    """The caller's voice as ready Opus packets, one per 20 ms of monotonic time (silence when
    nothing is queued): a caller that costs no encoding, so one process can play many."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.queue: deque[bytes] = deque()
        self.drained = asyncio.Event()
        self._due: float | None = None
        self._pts = -960

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._due is None or now - self._due > 0.1:
            self._due = now
        elif self._due > now:
            await asyncio.sleep(self._due - now)
        self._due += 0.02
        if self.queue:
            data = self.queue.popleft()
            if not self.queue:
                self.drained.set()
        else:
            data = opus_silence()
        packet = av.Packet(data)
        self._pts += 960
        packet.pts = self._pts
        packet.time_base = fractions.Fraction(1, 48000)
        return packet


class Caller:
    """One client call (raw aiortc, Opus only) that talks in turns until stopped."""

    def __init__(
        self, http: httpx.AsyncClient, utterances: list[list[bytes]], *, talk: bool = True
    ) -> None:
        self.http = http
        self.utterances = utterances
        self.talk = talk
        self.turns = 0
        self.failed: str | None = None
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = PacketTrack()
        self._created = asyncio.Event()
        self._answered = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        pc = self.pc
        transceiver = pc.addTransceiver(self.track, direction="sendrecv")
        transceiver.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == "audio/opus"]
        )
        channel = pc.createDataChannel("oai-events")
        channel.on("message", self._on_message)
        channel.on(
            "open",
            lambda: channel.send(json.dumps({"type": "session.update", "session": SESSION})),
        )
        pc.on("track", lambda t: self._tasks.append(asyncio.create_task(self._drain(t))))
        pc.on("connectionstatechange", self._on_state)
        await pc.setLocalDescription(await pc.createOffer())
        resp = await self.http.post(
            "/v1/realtime/calls",
            files={
                "sdp": (None, pc.localDescription.sdp, "application/sdp"),
                "session": (None, json.dumps(SESSION), "application/json"),
            },
            headers={"Authorization": f"Bearer {KEY}"},
        )
        resp.raise_for_status()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=resp.text, type="answer"))
        async with asyncio.timeout(20):
            await self._created.wait()
        if self.talk:
            self._tasks.append(asyncio.create_task(self._talk()))

    def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed") and self.failed is None:
            self.failed = f"peer connection {self.pc.connectionState}"

    def _on_message(self, message: str | bytes) -> None:
        kind = json.loads(message).get("type")
        if kind == "session.created":
            self._created.set()
        elif kind == "output_audio_buffer.stopped":
            self.turns += 1
            self._answered.set()
        elif kind == "error":
            self.failed = f"error event: {message!r}"

    async def _drain(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    async def _talk(self) -> None:
        rng = random.Random(id(self))
        await asyncio.sleep(rng.uniform(0, 3))  # stagger the sessions' turns
        while True:
            self._answered.clear()
            self.track.drained.clear()
            self.track.queue.extend(self.utterances[rng.randrange(len(self.utterances))])
            await self.track.drained.wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(15):
                    await self._answered.wait()
            await asyncio.sleep(rng.uniform(0.3, 1.0))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
                await task
        await self.pc.close()


def utterances() -> list[list[bytes]]:
    """The caller's sentences as Opus packets, each followed by the silence that ends a turn."""
    tts = synthesizer()
    silence = np.zeros(RATE * 6 // 10, np.int16)  # > 500 ms silence_duration_ms
    return [
        opus_packets(np.concatenate((tts.synthesize(s, CALLER_VOICE, RATE), silence)))
        for s in SENTENCES
    ]


async def measure(args: argparse.Namespace, proc: subprocess.Popen[str]) -> dict[str, Any]:
    callers: list[Caller] = []
    steps: list[dict[str, Any]] = []
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not re.match(r"http://", url):
            raise RuntimeError(f"emulator did not start: {url!r}")
        speech = utterances()
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            for n in args.steps:
                while len(callers) < n:
                    caller = Caller(http, speech, talk=not args.silent)
                    await caller.start()
                    callers.append(caller)
                await asyncio.sleep(args.warmup_s)
                before = (await http.get("/emulator/stats", params={"reset": "true"})).json()
                turns0 = sum(c.turns for c in callers)
                cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
                await asyncio.sleep(args.measure_s)
                cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
                stats = (await http.get("/emulator/stats")).json()
                cpu = 100.0 * (cpu1 - cpu0) / (t1 - t0)
                p99 = stats["lateness_ms_p99"] or 0.0
                failed = sum(1 for c in callers if c.failed)
                # Did the load arrive? Each session should deliver 50 caller frames a second;
                # a slower rate means the clients, not the emulator, were the limit.
                received = stats["frames_received"] - before["frames_received"]
                delivered = received / (n * 50.0 * (t1 - t0))
                step = {
                    "sessions": n,
                    "cpu_percent": round(cpu, 1),
                    "cpu_percent_per_session": round(cpu / n, 2),
                    "frame_lateness_ms_p50": round(stats["lateness_ms_p50"] or 0.0, 2),
                    "frame_lateness_ms_p99": round(p99, 2),
                    "frame_lateness_ms_max": round(stats["lateness_ms_max"] or 0.0, 2),
                    "resyncs": stats["resyncs"],
                    "turns": sum(c.turns for c in callers) - turns0,
                    "failed_sessions": failed,
                    "load_delivered": round(delivered, 3),
                }
                step["load_limited"] = delivered < args.min_delivered
                step["held"] = (
                    p99 <= args.max_lateness_ms
                    and cpu <= args.max_cpu
                    and failed == 0
                    and not step["load_limited"]
                )
                steps.append(step)
                if not args.json:
                    print(
                        f"{n:4d} sessions  cpu {cpu:6.1f}%  ({cpu / n:5.2f}%/session)  "
                        f"lateness p50 {step['frame_lateness_ms_p50']:6.2f} ms  "
                        f"p99 {p99:7.2f} ms  max {step['frame_lateness_ms_max']:7.2f} ms  "
                        f"turns {step['turns']:4d}  load {delivered:5.1%}  "
                        + (
                            "held"
                            if step["held"]
                            else "LOAD-LIMITED (clients)"
                            if step["load_limited"]
                            else "FAILED"
                        ),
                        flush=True,
                    )
                if not step["held"]:
                    break
    finally:
        await asyncio.gather(*(c.stop() for c in callers), return_exceptions=True)
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    held = [s for s in steps if s["held"]]
    best = held[-1] if held else None
    return {
        "sessions": best["sessions"] if best else 0,
        "stopped_by": (
            None
            if not steps or steps[-1]["held"]
            else "clients"
            if steps[-1]["load_limited"]
            else "emulator"
        ),
        "cpu_percent_per_session": best["cpu_percent_per_session"] if best else None,
        "frame_lateness_ms_p99": best["frame_lateness_ms_p99"] if best else None,
        "cpu_count": os.cpu_count(),
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--steps",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[10, 20, 30, 40, 50, 60, 70, 80],
        help="session counts to try, comma separated (default 10,20,...,80)",
    )
    parser.add_argument("--warmup-s", type=float, default=4.0)
    parser.add_argument("--measure-s", type=float, default=8.0)
    parser.add_argument("--max-lateness-ms", type=float, default=20.0)
    parser.add_argument("--max-cpu", type=float, default=95.0)
    parser.add_argument(
        "--min-delivered",
        type=float,
        default=0.97,
        help="fraction of the caller frames that must reach the emulator for a valid step",
    )
    parser.add_argument(
        "--silent",
        action="store_true",
        help="callers never talk: measures the cost of an idle connected session",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="let the emulator and the clients share every CPU (default: the emulator gets CPU "
        "0 to itself and the clients the others, when there are two or more)",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.cpu)
        return
    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) >= 2
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", *(["--cpu", str(cpus[0])] if pin else [])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    if pin:
        os.sched_setaffinity(0, set(cpus[1:]))  # the clients keep off the emulator's CPU
    result = asyncio.run(measure(args, proc))
    result["pinned"] = pin
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"held {result['sessions']} sessions: {result['cpu_percent_per_session']}% of a core "
            f"each, p99 frame lateness {result['frame_lateness_ms_p99']} ms"
        )


if __name__ == "__main__":
    main()
