"""The CPU one upstream session setup costs the gateway's process: ``RealtimeSession.open()``
(offer with ICE gathering, SDP exchange, ICE checks, DTLS, SCTP and the data channel,
``session.update``) and its ``close()`` (hang-up, teardown), against the emulator in another
process on another CPU.

Process CPU (user + system, all threads) is read around each call, so the figure is what the
setup takes from the core the calls share, whatever the machine's other load does to the wall
time. ``--profile FILE`` writes a cProfile of the measured opens and closes (cProfile inflates
Python-heavy code; use it for where, not for how much).

    .venv/bin/python tests/benchmarks/setup_cost.py --sessions 30
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, no install

from gateway.loadtest.spawn import spawned_stack
from gateway.realtime.config import RealtimeConfig
from gateway.realtime.session import RealtimeSession

SESSION = {"type": "realtime", "model": "gpt-realtime", "output_modalities": ["audio"]}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    os.sched_setaffinity(0, {0})
    async with spawned_stack(emulator_cpus={1}, gateway_cpus={1}) as stack:
        # the gateway's way: one pooled HTTP client for every session's requests
        async with httpx.AsyncClient(trust_env=False) as http:
            config = RealtimeConfig(
                base_url=f"{stack.emulator_url}/v1", api_key=stack.api_key, http_client=http
            )
            for _ in range(3):  # warm: imports, first connections
                session = RealtimeSession(config, SESSION)
                await session.open()
                await session.close()
            profiler = cProfile.Profile() if args.profile else None
            opens, closes = [], []
            for _ in range(args.sessions):
                if profiler is not None:
                    profiler.enable()
                t0 = _cpu_s()
                session = RealtimeSession(config, SESSION)
                await session.open()
                t1 = _cpu_s()
                await session.close()
                t2 = _cpu_s()
                if profiler is not None:
                    profiler.disable()
                opens.append(t1 - t0)
                closes.append(t2 - t1)
            if profiler is not None:
                profiler.dump_stats(args.profile)
    opens.sort()
    closes.sort()
    n = len(opens)
    return {
        "sessions": n,
        "open_cpu_ms": {
            "p50": round(opens[n // 2] * 1000, 1),
            "mean": round(sum(opens) / n * 1000, 1),
        },
        "close_cpu_ms": {
            "p50": round(closes[n // 2] * 1000, 1),
            "mean": round(sum(closes) / n * 1000, 1),
        },
        "profiled": bool(args.profile),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--profile", help="write a cProfile of the measured sessions here")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_run(args))))


if __name__ == "__main__":
    main()
