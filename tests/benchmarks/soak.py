"""Soak: the gateway at ~70 % of its measured capacity for a bounded time, and what grew.

Starts the emulator and a gateway as separate processes (gateway pinned to CPU 0), holds
``--concurrency`` conversation calls (default 17: 70 % of the 25 calls one core held in
``capacity.py``) for ``--duration`` seconds with calls ending and starting all the time, then
reports, from the gateway process: RSS and open files after a warm-up and at the end (both
measured with no call live), peer connections and asyncio tasks left once every call ended
(``/metrics``: ``gateway_peer_connections``, ``gateway_event_loop_tasks``), and calls failed.

    .venv/bin/python tests/benchmarks/soak.py --duration 600 [--json]     # documented run
    .venv/bin/python tests/benchmarks/soak.py --duration 60               # short
    .venv/bin/python tests/benchmarks/soak.py --duration 1800 --hostile-every 180 --pin

``--hostile-every S`` adds a burst of hostile connections every S seconds beside the calls, from
another loopback address (127.0.0.2): 100 request heads that never end, 50 forged webhooks (bad
signature) and 50 unsigned media-stream upgrades. The report counts how each was answered and
how many upstream sessions the emulator still had open at the end (it must be none).

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
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, no install

from gateway.aio import cancel_and_wait
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


async def _hostile_burst(url: str) -> dict[str, int]:
    """One burst; returns how its parts ended (``status_403``, ``ws_refused``, ``slow_closed``)."""
    host, port = url.removeprefix("http://").split(":")
    counts = {"status_403": 0, "other_status": 0, "ws_refused": 0, "ws_accepted": 0}
    slow = [
        await asyncio.open_connection(host, int(port), local_addr=("127.0.0.2", 0))
        for _ in range(100)
    ]
    try:
        return await _attack(url, slow, counts)
    finally:  # also when the soak ends mid-burst: our side of every connection is closed
        for _, writer in slow:
            writer.close()


async def _attack(
    url: str,
    slow: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    counts: dict[str, int],
) -> dict[str, int]:
    for _, writer in slow:
        writer.write(b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\nX-a: ")
    form = {"CallSid": "CAhostile", "AccountSid": "AC1", "From": "+1", "To": "+15551230001"}
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        for _ in range(50):
            r = await http.post(
                f"{url}/twilio/voice", data=form, headers={"X-Twilio-Signature": "forged"}
            )
            counts["status_403" if r.status_code == 403 else "other_status"] += 1
    for _ in range(50):
        try:
            async with websockets.connect(url.replace("http", "ws") + "/twilio/media") as ws:
                await asyncio.wait_for(ws.recv(), 10)
            counts["ws_accepted"] += 1
        except (websockets.InvalidStatus, websockets.ConnectionClosed):
            counts["ws_refused"] += 1
    closed = 0
    for reader, _ in slow:  # the gateway closes them at its header timeout
        try:
            async with asyncio.timeout(30):
                while await reader.read(4096):
                    pass
            closed += 1
        except TimeoutError:
            pass
    counts["slow_closed"] = closed
    return counts


async def _hostile(url: str, every_s: float, totals: dict[str, int]) -> None:
    while True:
        await asyncio.sleep(every_s)
        for key, n in (await _hostile_burst(url)).items():
            totals[key] = totals.get(key, 0) + n
        totals["bursts"] = totals.get("bursts", 0) + 1


async def _open_upstream_sessions(emulator_url: str) -> int:
    async with httpx.AsyncClient(trust_env=False) as http:
        resp = await http.get(f"{emulator_url}/emulator/sessions")
        resp.raise_for_status()
    return sum(1 for s in resp.json() if s.get("state") != "ended")


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
        hostile: dict[str, int] = {}
        attack = (
            asyncio.create_task(_hostile(stack.gateway_url, args.hostile_every, hostile))
            if args.hostile_every > 0
            else None
        )
        try:
            result = await LoadRun(plan, target, mix, lines).run()
        finally:
            if attack is not None:
                await cancel_and_wait(attack)
        gauges1 = await _idle_gauges(stack.gateway_url)
        rss1, files1 = _proc(stack.gateway_pid)
        sessions_open = await _open_upstream_sessions(stack.emulator_url)
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
        "upstream_sessions_open": sessions_open,
        "hostile": hostile,
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
    parser.add_argument(
        "--hostile-every", type=float, default=0.0, help="seconds between hostile bursts (0: off)"
    )
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
        f"peer connections left {report['peer_connections_left']}, "
        f"upstream sessions open {report['upstream_sessions_open']}"
        + (f"\nhostile bursts: {report['hostile']}" if report["hostile"] else "")
    )


if __name__ == "__main__":
    main()
