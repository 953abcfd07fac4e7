"""Whether the capacity floor's bare peers keep real time: frames per second per call, both ways.

Run from the repository root::

    .venv/bin/python tests/benchmarks/floor_rate.py            # one line of figures
    .venv/bin/python tests/benchmarks/floor_rate.py --json     # one JSON object

The Realtime emulator runs in this process on loopback (as in ``tests/loadtest/test_floor.py``)
and :func:`gateway.loadtest.floor.run_floor` opens ``--calls`` bare Opus peers against it for a
``--duration`` window. Figures (keys of the JSON object):

* ``sent_fps`` / ``received_fps``: 20 ms frames per second per call over the window, caller
  audio sent and assistant audio decoded; real time is 50;
* ``window_s``: the measured window, against the requested ``duration_s``;
* ``send_lateness_ms_p99``: how late the pacer woke for its deadlines;
* ``holds``: every call came up, ``sent_fps`` within 46–51, ``received_fps`` within 40–52 and
  the window within half a second of the request. These are the bounds the floor's unit test
  used to assert; they measure the machine as much as the code, so they live here, where a
  busy machine makes a run fail instead of a test suite flake.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, no install

from gateway.audio.tts import CALLER_VOICE, synthesizer
from gateway.emulator.app import EmulatorConfig, create_app
from gateway.loadtest.floor import run_floor
from gateway.serving import serve_app

KEY = "sk-floor-rate-benchmark"
UTTERANCE = "Hi, a table for two, please."
SENT_FPS = (46.0, 51.0)
RECEIVED_FPS = (40.0, 52.0)
WINDOW_SLACK_S = 0.5


async def measure(calls: int, duration_s: float) -> dict[str, Any]:
    speech = await asyncio.to_thread(synthesizer().synthesize, UTTERANCE, CALLER_VOICE, 24000)
    app = create_app(EmulatorConfig(api_key=KEY, latency_ms=50))
    async with serve_app(app, host="127.0.0.1") as srv:
        result = await run_floor(
            f"{srv.url}/v1",
            KEY,
            calls=calls,
            duration_s=duration_s,
            ramp_s=0.3,
            settle_s=0.5,
            speech=speech,
            silence_s=2.0,
        )
    per_call_s = result.calls_up * result.window_s
    sent = result.frames_sent / per_call_s if per_call_s else 0.0
    received = result.frames_received / per_call_s if per_call_s else 0.0
    return {
        "calls": calls,
        "calls_up": result.calls_up,
        "failures": result.failures,
        "duration_s": duration_s,
        "window_s": result.window_s,
        "sent_fps": round(sent, 2),
        "received_fps": round(received, 2),
        "send_lateness_ms_p99": result.send_lateness_ms_p99,
        "cpu_percent_per_call": result.cpu_percent_per_call,
        "holds": (
            result.calls_up == calls
            and SENT_FPS[0] <= sent <= SENT_FPS[1]
            and RECEIVED_FPS[0] <= received <= RECEIVED_FPS[1]
            and duration_s - 0.1 <= result.window_s <= duration_s + WINDOW_SLACK_S
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--duration", type=float, default=4.0, help="measured window, seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    report = asyncio.run(measure(args.calls, args.duration))
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{report['calls_up']}/{report['calls']} calls, window {report['window_s']:.2f} s: "
            f"sent {report['sent_fps']:.1f} frames/s per call (real time 50, "
            f"{SENT_FPS[0]:g}-{SENT_FPS[1]:g}), received {report['received_fps']:.1f} "
            f"({RECEIVED_FPS[0]:g}-{RECEIVED_FPS[1]:g}); pacing p99 "
            f"{report['send_lateness_ms_p99']} ms; "
            f"{'holds' if report['holds'] else 'DOES NOT HOLD'}"
        )
        for reason in report["failures"]:
            print(f"  {reason}")
    return 0 if report["holds"] else 1


if __name__ == "__main__":
    sys.exit(main())
