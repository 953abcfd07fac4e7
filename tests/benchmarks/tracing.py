"""What tracing costs a call when it is off: every tracing call a whole call makes, timed.

Run from the repository root::

    .venv/bin/python tests/benchmarks/tracing.py           # one line
    .venv/bin/python tests/benchmarks/tracing.py --json    # one JSON object, for CI / regressions

One "call" is what the gateway does with tracing for one phone call: the webhook span, the
call trace, its setup phases, one response turn, a barge-in event and the end. With tracing
off (no ``OTEL_*`` settings) each is a no-op; the figure is wall-clock µs per whole call, best
of three passes of ``--calls`` calls. It holds at < 50 µs: nothing next to one 20 ms audio
frame (measured ~1-2 µs on the 2-core dev machine; the bound leaves room for a loaded runner).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, no install

from gateway.tracing import Tracing

LIMIT_US = 50.0
DIALLED = "+15551230001"


def _pass(tracing: Tracing, calls: int) -> float:
    """Seconds for ``calls`` whole calls' worth of tracing."""
    phases = [("offer", 0.0, 0.01), ("sdp_exchange", 0.01, 0.2)]
    t0 = time.perf_counter()
    for i in range(calls):
        with tracing.webhook("CA1", DIALLED) as traceparent:
            pass
        call = tracing.call("CA1", "MZ1", DIALLED, traceparent)
        call.setup_phases(phases, upstream_call_id="rtc_1")
        call.turn_started("resp_1", float(i))
        call.turn_done("resp_1", "completed", None, float(i))
        call.event("barge_in", source="local")
        call.end("completed", "carrier hung up")
    return time.perf_counter() - t0


def measure(calls: int) -> dict[str, Any]:
    tracing = Tracing.from_environ({})
    best = min(_pass(tracing, calls) for _ in range(3))
    per_call_us = best / calls * 1e6
    return {
        "calls": calls,
        "tracing": tracing.description,
        "per_call_us": round(per_call_us, 3),
        "limit_us": LIMIT_US,
        "holds": per_call_us < LIMIT_US,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = measure(args.calls)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"tracing {report['tracing']}: {report['per_call_us']:.2f} µs per whole call "
        f"(best of 3 x {report['calls']} calls); "
        f"{'holds' if report['holds'] else 'DOES NOT HOLD'} (< {LIMIT_US:g} µs)"
    )


if __name__ == "__main__":
    main()
