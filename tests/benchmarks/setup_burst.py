"""What a burst of new connections costs the calls already live: call setups, or upgrades.

Starts the emulator and a gateway as separate processes (gateway pinned to CPU 0, emulator and
this tool on CPU 1), brings ``--live`` conversation calls up slowly (2 per second) and waits
until all are heard, then, while they talk, sends one burst:

- ``--kind calls``: ``--burst`` new calls (webhook, stream, greeting, hang up) arriving at
  ``--rate`` per second (0: all at once): real setups, each opening an upstream session;
- ``--kind unsigned``: ``--burst`` media-stream upgrades with no signature, all at once (what
  anyone on the internet can send);
- ``--kind bad-start``: ``--burst`` correctly signed upgrades whose ``start`` carries a garbage
  call token, all at once.

Reported, over the window from the burst to 3 s after its last connection ended: the live
calls' gateway-added latency p99 per direction (``/metrics`` histogram difference: every
frame of every call in that window), the worst ``/healthz`` round trip while a probe asks every
20 ms (the event loop's lag, as a client sees it), the playout gaps (> 40 ms) the live callers
heard over their whole call, how the burst ended (outcomes), and the gateway's CPU seconds in
the window. ``--gateway-env K=V`` passes settings (e.g. ``GATEWAY_MAX_SETUP_RATE=4``);
``--profile FILE`` records the gateway with py-spy during the window (speedscope JSON).

    .venv/bin/python tests/benchmarks/setup_burst.py --live 10 --burst 10 --kind calls --rate 0
    .venv/bin/python tests/benchmarks/setup_burst.py --live 10 --burst 200 --kind unsigned

Run old and new code side by side with ``PYTHONPATH`` pointing at each checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, no install

from prometheus_client.parser import text_string_to_metric_families

from gateway.aio import cancel_and_wait
from gateway.loadtest.gateway_metrics import scrape, usage_between
from gateway.loadtest.runner import LoadPlan, LoadRun, Target
from gateway.loadtest.scenarios import CallerLines, ScenarioMix
from gateway.loadtest.spawn import spawned_stack
from gateway.observability import bucket_quantile
from gateway.telephony.signature import sign

SETTLE_S = 3.0


async def _probe(url: str, stop: asyncio.Event, rtts: list[float]) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        while not stop.is_set():
            t0 = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                await http.get(f"{url}/healthz")
                rtts.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.02)


async def _upgrade(
    url: str, headers: dict[str, str], start: dict[str, Any] | None, source: str
) -> str:
    try:
        async with websockets.connect(
            url, additional_headers=headers, open_timeout=30, local_addr=(source, 0)
        ) as ws:
            if start is None:
                await asyncio.wait_for(ws.recv(), 30)
                return "accepted"
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1"}))
            await ws.send(json.dumps(start))
            await asyncio.wait_for(ws.recv(), 30)
            return "answered"
    except websockets.InvalidStatus as exc:
        return f"http_{exc.response.status_code}"
    except websockets.ConnectionClosed as exc:
        return f"closed_{exc.rcvd.code if exc.rcvd else 'none'}"
    except websockets.InvalidMessage:
        return "dropped_unread"  # over a connection bound
    except (OSError, TimeoutError) as exc:
        return type(exc).__name__


async def _upgrades(kind: str, base_url: str, auth_token: str, n: int) -> Counter[str]:
    url = base_url.replace("http://", "ws://") + "/twilio/media"
    jobs = []
    for i in range(n):
        # From many loopback addresses: the per-client connection bound is not what is tested.
        source = f"127.0.1.{2 + i % 50}"
        if kind == "unsigned":
            jobs.append(_upgrade(url, {}, None, source))
            continue
        sig = sign(auth_token, url)
        start = {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": f"MZburst{i:04d}",
            "start": {
                "streamSid": f"MZburst{i:04d}",
                "accountSid": "AC00000000000000000000000000000000",
                "callSid": f"CAburst{i:04d}",
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": {"gateway_call_token": "v1.9999999999.garbage"},
            },
        }
        jobs.append(_upgrade(url, {"X-Twilio-Signature": sig}, start, source))
    return Counter(await asyncio.gather(*jobs))


async def _calls(target: Target, lines: CallerLines, n: int, rate: float) -> Counter[str]:
    plan = LoadPlan(calls=n, concurrency=n, rate=rate or None, seed=7)
    burst_target = Target(target.base_url, auth_token=target.auth_token, metrics_path=None)
    result = await LoadRun(plan, burst_target, ScenarioMix.parse("listen"), lines).run()
    return Counter(r.result.failure or "completed" for r in result.records)


async def _burst_process(args: argparse.Namespace, url: str, token: str) -> dict[str, int]:
    """The burst from its own process at nice 19: its client-side cost (Python websocket and
    HTTP clients, 200 handshakes) must not delay the live callers' frames, which share CPU 1,
    or the gateway would be blamed for the tool's own lateness."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--burst-worker", url, token,
        "--kind", args.kind, "--burst", str(args.burst), "--rate", str(args.rate),
        stdout=asyncio.subprocess.PIPE, preexec_fn=lambda: os.nice(19),
    )  # fmt: skip
    out, _ = await proc.communicate()
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


async def _burst_worker(args: argparse.Namespace) -> dict[str, int]:
    url, token = args.burst_worker
    if args.kind == "calls":
        target = Target(url, auth_token=token)
        return dict(await _calls(target, CallerLines.synthesized(), args.burst, args.rate))
    return dict(await _upgrades(args.kind, url, token, args.burst))


LOOP_LAG = "gateway_event_loop_lag_seconds_bucket"


async def _loop_lag_buckets(http: httpx.AsyncClient, url: str) -> dict[float, float]:
    """The gateway's event-loop lag histogram (absent in code before it existed: empty)."""
    text = (await http.get(f"{url}/metrics")).text
    return {
        float(sample.labels["le"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == LOOP_LAG
    }


def _loop_lag(before: dict[float, float], after: dict[float, float]) -> dict[str, float | None]:
    delta = sorted((le, n - before.get(le, 0.0)) for le, n in after.items())
    if not delta:
        return {"p99": None, "over_10ms": None, "over_50ms": None, "samples": 0}
    total = delta[-1][1]
    at_most = dict(delta)
    p99 = bucket_quantile(delta, 0.99)
    return {
        "p99": None if p99 is None else round(p99 * 1000, 1),
        "over_10ms": total - at_most.get(0.01, total),
        "over_50ms": total - at_most.get(0.05, total),
        "samples": total,
    }


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    os.sched_setaffinity(0, {1})
    lines = CallerLines.synthesized()
    env = dict(kv.split("=", 1) for kv in args.gateway_env)
    async with spawned_stack(
        gateway_cpus={0}, emulator_cpus={1}, max_calls=args.live + args.burst + 5, gateway_env=env
    ) as stack:
        target = Target(stack.gateway_url, auth_token=stack.auth_token)
        live_plan = LoadPlan(
            calls=args.live, concurrency=args.live, ramp_up_s=args.live / 2, seed=1
        )
        live_mix = ScenarioMix.parse("conversation", turns=40)
        live = LoadRun(live_plan, target, live_mix, lines)
        live_task = asyncio.create_task(live.run())
        async with httpx.AsyncClient(trust_env=False) as http:
            metrics_url = f"{stack.gateway_url}/metrics"
            while True:  # every live call set up, and its greeting under way
                sample = await scrape(http, metrics_url)
                if sample is not None and (sample.active_calls or 0) >= args.live:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(4.0)
            before = await scrape(http, metrics_url)
            lag_before = await _loop_lag_buckets(http, stack.gateway_url)
            stop, rtts = asyncio.Event(), []
            probe = asyncio.create_task(_probe(stack.gateway_url, stop, rtts))
            spy = None
            if args.profile:
                spy = await asyncio.create_subprocess_exec(
                    shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                    "record", "-p", str(stack.gateway_pid), "-o", args.profile,
                    "-f", "speedscope", "-r", "200", "--nonblocking",
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                )  # fmt: skip
            t0 = time.monotonic()
            outcomes = await _burst_process(args, stack.gateway_url, stack.auth_token)
            burst_s = time.monotonic() - t0
            await asyncio.sleep(SETTLE_S)
            stop.set()
            await probe
            after = await scrape(http, metrics_url)
            lag_after = await _loop_lag_buckets(http, stack.gateway_url)
            if spy is not None:
                spy.send_signal(2)
                await spy.wait()
        await cancel_and_wait(live_task)
    assert before is not None and after is not None
    usage = usage_between(before, after, call_minutes=1.0)
    gaps = [g for c in live._calls for g in c.result.gaps_ms]
    pacing_max = max((c.result.pacing.max for c in live._calls), default=0.0)
    rtts.sort()
    return {
        "kind": args.kind,
        "live": args.live,
        "burst": args.burst,
        "rate": args.rate,
        "gateway_env": env,
        "burst_s": round(burst_s, 2),
        "outcomes": dict(outcomes),
        "added_p99_ms": {
            "inbound": usage.added_latency_ms.get("inbound_p99"),
            "outbound": usage.added_latency_ms.get("outbound_p99"),
        },
        "loop_lag_ms": _loop_lag(lag_before, lag_after),
        "healthz_ms": {
            "p50": round(rtts[len(rtts) // 2], 1) if rtts else None,
            "max": round(rtts[-1], 1) if rtts else None,
            "n": len(rtts),
        },
        "live_gaps": {"count": len(gaps), "max_ms": round(max(gaps), 1) if gaps else 0},
        "live_callers_pacing_max_ms": round(pacing_max, 1),
        "gateway_cpu_s": usage.cpu_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--live", type=int, default=10)
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--kind", choices=("calls", "unsigned", "bad-start"), default="calls")
    parser.add_argument("--rate", type=float, default=0.0, help="calls per second; 0: at once")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--profile", help="py-spy speedscope file of the gateway's window")
    parser.add_argument("--burst-worker", nargs=2, metavar=("URL", "TOKEN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.burst_worker:
        print(json.dumps(asyncio.run(_burst_worker(args))))
        return
    print(json.dumps(asyncio.run(_run(args))))


if __name__ == "__main__":
    main()
