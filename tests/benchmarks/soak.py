"""Soak: the gateway at ~70 % of its measured capacity for a bounded time, and what grew.

Starts the emulator and a gateway as separate processes (gateway pinned to CPU 0), holds
``--concurrency`` conversation calls (default 17: 70 % of the 25 calls one core held in
``capacity.py``) for ``--duration`` seconds with calls ending and starting all the time, then
reports, from the gateway process: RSS and open files after a warm-up and at the end (both
measured with no call live), peer connections and asyncio tasks left once every call ended
(``/metrics``: ``gateway_peer_connections``, ``gateway_event_loop_tasks``), and calls failed.

    .venv/bin/python tests/benchmarks/soak.py --duration 600 [--json]     # documented run
    .venv/bin/python tests/benchmarks/soak.py --duration 60               # short

The short, in-process version runs in CI: ``tests/test_soak.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, no install

from gateway.loadtest.report import summarize
from gateway.loadtest.runner import LoadPlan, LoadRun, Target
from gateway.loadtest.scenarios import CallerLines, ScenarioMix
from gateway.loadtest.spawn import spawned_stack


def _proc(pid: int) -> tuple[float, int]:
    """RSS (MiB) and open file descriptors of ``pid``."""
    rss_kib = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


async def _idle_gauges(url: str) -> dict[str, float]:
    """Once the gateway has no live call: the leak gauges from /metrics."""
    wanted = ("gateway_active_calls", "gateway_peer_connections", "gateway_event_loop_tasks")
    values: dict[str, float] = {}
    async with httpx.AsyncClient(trust_env=False) as http:
        for _ in range(100):
            text = (await http.get(f"{url}/metrics")).text
            values = {
                line.split()[0]: float(line.split()[1])
                for line in text.splitlines()
                if line.startswith(wanted)
            }
            if (
                values.get("gateway_active_calls") == 0
                and values.get("gateway_peer_connections") == 0
            ):
                break
            await asyncio.sleep(0.1)
    return values


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    lines = CallerLines.synthesized()
    mix = ScenarioMix.parse("conversation=3,barge-in=1,listen=1", turns=3)
    async with spawned_stack(
        gateway_cpus={0} if args.pin else None,
        emulator_cpus={1} if args.pin else None,
        max_calls=args.concurrency + 5,
    ) as stack:
        target = Target(stack.gateway_url, auth_token=stack.auth_token)
        warm = LoadPlan(calls=args.concurrency, concurrency=args.concurrency, ramp_up_s=5, seed=0)
        await LoadRun(warm, target, mix, lines).run()
        gauges0 = await _idle_gauges(stack.gateway_url)
        rss0, files0 = _proc(stack.gateway_pid)
        plan = LoadPlan(duration_s=args.duration, concurrency=args.concurrency, ramp_up_s=5, seed=1)
        result = await LoadRun(plan, target, mix, lines).run()
        gauges1 = await _idle_gauges(stack.gateway_url)
        rss1, files1 = _proc(stack.gateway_pid)
    summary = summarize(result)
    return {
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "calls": summary["calls"],
        "rss_mb": {"after_warmup": round(rss0, 1), "end": round(rss1, 1)},
        "rss_growth_mb": round(rss1 - rss0, 1),
        "open_files": {"after_warmup": files0, "end": files1},
        "open_files_growth": files1 - files0,
        "tasks_idle": {
            "after_warmup": gauges0.get("gateway_event_loop_tasks"),
            "end": gauges1.get("gateway_event_loop_tasks"),
        },
        "peer_connections_left": gauges1.get("gateway_peer_connections"),
        "latency_ms": {k: summary["latency_ms"][k] for k in ("response", "barge_in_stop")},
        "gaps": summary["samples"]["gap"],
        "pacing_lateness_ms": summary["pacing_lateness_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=17)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--pin", action="store_true", help="gateway on CPU 0, emulator on CPU 1")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(_run(args))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    c = report["calls"]
    print(
        f"{c['attempted']} calls in {args.duration:g} s at {args.concurrency} concurrent: "
        f"{c['failed']} failed {c['failures'] or ''}\n"
        f"RSS {report['rss_mb']['after_warmup']} -> {report['rss_mb']['end']} MiB, "
        f"open files {report['open_files']['after_warmup']} -> {report['open_files']['end']}, "
        f"idle tasks {report['tasks_idle']['after_warmup']} -> {report['tasks_idle']['end']}, "
        f"peer connections left {report['peer_connections_left']}"
    )


if __name__ == "__main__":
    main()
