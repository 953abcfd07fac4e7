"""Capacity: how many concurrent calls one gateway process carries on one core, against its floor.

For each concurrency level N, in one run and on the same cores:

1. **the gateway**: ``gateway serve`` pinned to CPU 0, the Realtime emulator pinned to CPU 1,
   this process (the load tester) on CPU 1 too. N conversation calls (real synthesized speech,
   the caller talks over every third answer) ramp up, then a steady window in which all N are
   in progress measures the gateway process's CPU (``/proc/PID/stat``, every thread) and the
   p99 of its added-latency histograms (``/metrics``, difference of two scrapes);
2. **the floor**: ``python -m gateway.loadtest.floor`` pinned to CPU 0, N bare aiortc peers of
   the same codec against the same emulator, each sending and receiving real-time audio and
   nothing else — what no gateway can avoid — measured over a window of the same length.

``--codec opus,pcmu`` measures each level with each codec in turn (the gateway's
``GATEWAY_UPSTREAM_CODEC``, the floor's ``--codec``), so the codecs compare side by side in one
run.

A level holds when every call completes and the gateway-added p99 stays <= 10 ms per direction;
the capacity is the largest level that holds. CPU per call is reported as a ratio to the floor.
Response latency as heard and barge-in stop time are reported at each level, with the
emulator's configured model latency, so the gateway's share is visible.

    .venv/bin/python tests/benchmarks/capacity.py --levels 10,20,30,40 [--codec opus,pcmu]
        [--json] [--out DIR --plot]

Needs two CPUs. ``--plot`` needs matplotlib (``pip install -e .[bench]``). Takes about two
minutes per level.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, no install

from gateway.loadtest.gateway_metrics import scrape, usage_between
from gateway.loadtest.report import summarize
from gateway.loadtest.runner import LoadPlan, LoadRun, Target
from gateway.loadtest.scenarios import CallerLines, ScenarioMix
from gateway.loadtest.spawn import spawned_stack

ADDED_P99_LIMIT_MS = 10.0
_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)


async def _measure_level(
    n: int, lines: CallerLines, args: argparse.Namespace, codec: str = "opus"
) -> dict[str, Any]:
    async with spawned_stack(
        gateway_cpus={0},
        emulator_cpus={1},
        emulator_args=["--latency-ms", str(args.latency_ms)],
        max_calls=n + 10,
        gateway_env={"GATEWAY_UPSTREAM_CODEC": codec},
    ) as stack:
        plan = LoadPlan(calls=n, concurrency=n, ramp_up_s=args.ramp, max_call_s=600, seed=n)
        mix = ScenarioMix.parse("conversation", turns=args.turns, think_ms=500, barge_in_every=3)
        target = Target(stack.gateway_url, auth_token=stack.auth_token)
        run = LoadRun(plan, target, mix, lines)
        task = asyncio.create_task(run.run())
        started = time.monotonic()
        for _ in range(int((args.ramp + 60) / 0.2)):
            p = run.progress()
            if p.started >= n and time.monotonic() - started >= args.ramp + args.settle:
                break
            if task.done():
                break
            await asyncio.sleep(0.2)
        async with httpx.AsyncClient(trust_env=False) as http:
            metrics_url = f"{stack.gateway_url}/metrics"
            before = await scrape(http, metrics_url)
            g0, e0, t0 = (
                proc_cpu_seconds(stack.gateway_pid),
                proc_cpu_seconds(stack.emulator_pid),
                time.monotonic(),
            )
            active_at_start = run.progress().active
            await asyncio.sleep(args.window)
            g1, e1, t1 = (
                proc_cpu_seconds(stack.gateway_pid),
                proc_cpu_seconds(stack.emulator_pid),
                time.monotonic(),
            )
            active_at_end = run.progress().active
            after = await scrape(http, metrics_url)
        result = await task
        summary = summarize(result)
        window = t1 - t0
        added: dict[str, float | None] = {"inbound_p99": None, "outbound_p99": None}
        if before is not None and after is not None:
            added = dict(usage_between(before, after, call_minutes=1.0).added_latency_ms)
        floor = await asyncio.to_thread(
            _run_floor, stack.emulator_url, stack.api_key, n, args, codec
        )
    gateway_pct = 100 * (g1 - g0) / window / n
    floor_pct = floor.get("cpu_percent_per_call")
    lat = summary["latency_ms"]
    calls = summary["calls"]
    holds = (
        calls["failed"] == 0
        and floor.get("failed", 1) == 0
        and active_at_start == n
        and active_at_end == n
        and all(v is not None and v <= ADDED_P99_LIMIT_MS for v in added.values())
    )
    return {
        "calls": n,
        "codec": codec,
        "holds": holds,
        "window_s": round(window, 1),
        "calls_in_window": [active_at_start, active_at_end],
        "gateway_cpu_percent_per_call": round(gateway_pct, 2),
        "gateway_cpu_percent": round(100 * (g1 - g0) / window, 1),
        "floor_cpu_percent_per_call": floor_pct,
        "ratio_to_floor": round(gateway_pct / floor_pct, 2) if floor_pct else None,
        "added_latency_ms": {k: None if v is None else round(v, 2) for k, v in added.items()},
        "response_ms": {k: lat["response"][k] for k in ("p50", "p95", "p99")},
        "barge_in_stop_ms": {k: lat["barge_in_stop"][k] for k in ("p50", "p95", "p99")},
        "setup_ms": {k: lat["setup"][k] for k in ("p50", "p95", "p99")},
        "gaps": summary["samples"]["gap"],
        "failed": calls["failed"],
        "failures": calls["failures"],
        "loadtester_pacing_ms_p99": summary["pacing_lateness_ms"]["p99"],
        "emulator_cpu_percent": round(100 * (e1 - e0) / window, 1),
        "gateway_cpu_seconds_per_call_minute_whole_run": (summary["gateway"] or {}).get(
            "cpu_seconds_per_call_minute"
        ),
        "added_latency_ms_whole_run": (summary["gateway"] or {}).get("added_latency_ms"),
        "floor": floor,
    }


def _run_floor(
    emulator_url: str, api_key: str, n: int, args: argparse.Namespace, codec: str
) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "gateway.loadtest.floor",
        "--base-url", f"{emulator_url}/v1", "--api-key", api_key,
        "--calls", str(n), "--duration", str(args.window),
        "--ramp", str(args.ramp), "--settle", str(args.settle), "--codec", codec, "--json",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=args.ramp + args.settle + args.window + 120,
        preexec_fn=lambda: os.sched_setaffinity(0, {0}),
        stdin=subprocess.DEVNULL,
    )
    try:
        floor: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"failed": n, "error": (proc.stderr or proc.stdout)[-500:]}
    return floor


def _table(levels: list[dict[str, Any]], latency_ms: float) -> list[str]:
    lines = [
        f"emulator model latency {latency_ms:g} ms; gateway on CPU 0, emulator + load tester on "
        "CPU 1; floor = bare aiortc peer of the same codec per call on CPU 0",
        f"{'calls':>5} {'codec':>5} {'holds':>5} {'gw %/call':>9} {'floor %/call':>12} "
        f"{'ratio':>6} {'in p99':>7} {'out p99':>7} {'resp p50':>8} {'resp p95':>8} "
        f"{'barge p50':>9} {'fail':>4} {'gaps':>4} {'lt p99':>6}",
    ]
    for lv in levels:
        added = lv["added_latency_ms"]
        lines.append(
            f"{lv['calls']:>5} {lv.get('codec', 'opus'):>5} {'yes' if lv['holds'] else 'NO':>5} "
            f"{lv['gateway_cpu_percent_per_call']:>9.2f} "
            f"{_f(lv['floor_cpu_percent_per_call'], 12, 2)} {_f(lv['ratio_to_floor'], 6, 2)} "
            f"{_f(added['inbound_p99'], 7, 1)} {_f(added['outbound_p99'], 7, 1)} "
            f"{_f(lv['response_ms']['p50'], 8, 0)} {_f(lv['response_ms']['p95'], 8, 0)} "
            f"{_f(lv['barge_in_stop_ms']['p50'], 9, 0)} {lv['failed']:>4} {lv['gaps']:>4} "
            f"{_f(lv['loadtester_pacing_ms_p99'], 6, 1)}"
        )
    return lines


def _f(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def _plot(levels: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib: pip install -e .[bench]", file=sys.stderr)
        return
    n = [lv["calls"] for lv in levels]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in (("p50", "response p50"), ("p95", "response p95"), ("p99", "response p99")):
        ax1.plot(n, [lv["response_ms"][key] for lv in levels], marker="o", label=label)
    ax1.plot(n, [lv["barge_in_stop_ms"]["p95"] for lv in levels], marker="s", label="barge-in p95")
    ax1.set_xlabel("concurrent calls")
    ax1.set_ylabel("ms, as heard by the caller")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(n, [lv["gateway_cpu_percent_per_call"] for lv in levels], marker="o", label="gateway")
    ax2.plot(n, [lv["floor_cpu_percent_per_call"] for lv in levels], marker="o", label="floor")
    ax2b = ax2.twinx()
    for d in ("inbound_p99", "outbound_p99"):
        ax2b.plot(n, [lv["added_latency_ms"][d] for lv in levels], ls="--", label=f"added {d} (ms)")
    ax2.set_xlabel("concurrent calls")
    ax2.set_ylabel("CPU % of a core per call")
    ax2b.set_ylabel("gateway-added latency p99 (ms)")
    ax2.legend(loc="upper left")
    ax2b.legend(loc="upper right")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    os.sched_setaffinity(0, {1})
    lines = CallerLines.synthesized()
    levels = []
    for n in args.levels:
        for codec in args.codec:
            print(f"measuring {n} calls ({codec}) ...", file=sys.stderr)
            level = await _measure_level(n, lines, args, codec)
            levels.append(level)
            print("\n".join(_table([level], args.latency_ms)[-1:]), file=sys.stderr)
    capacity = {
        codec: max([lv["calls"] for lv in levels if lv["holds"] and lv["codec"] == codec] or [0])
        for codec in args.codec
    }
    return {
        "capacity_calls_per_core": capacity[args.codec[0]],
        "capacity_calls_per_core_by_codec": capacity,
        "added_latency_limit_ms": ADDED_P99_LIMIT_MS,
        "emulator_latency_ms": args.latency_ms,
        "levels": levels,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="10,20,30,40", help="concurrency levels, ascending")
    parser.add_argument("--turns", type=int, default=9, help="questions per call")
    parser.add_argument("--ramp", type=float, default=10.0, help="seconds to start the calls")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before the window")
    parser.add_argument("--window", type=float, default=30.0, help="measured window, seconds")
    parser.add_argument("--latency-ms", type=float, default=300.0, help="emulator model latency")
    parser.add_argument(
        "--codec", default="opus", help="Realtime leg codecs to compare, e.g. opus,pcmu"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", type=Path, help="write capacity.json (and .png) here")
    parser.add_argument("--plot", action="store_true", help="also draw capacity.png (--out)")
    args = parser.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    args.codec = [c.strip() for c in args.codec.split(",") if c.strip()]
    if not args.codec or not set(args.codec) <= {"opus", "pcmu", "pcma"}:
        parser.error("--codec takes opus, pcmu and/or pcma, comma separated")
    if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
        parser.error("needs CPUs 0 and 1")
    report = asyncio.run(_main(args))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "capacity.json").write_text(json.dumps(report, indent=2) + "\n")
        if args.plot:
            first = [lv for lv in report["levels"] if lv["codec"] == args.codec[0]]
            _plot(first, args.out / "capacity.png")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(_table(report["levels"], args.latency_ms)))
        print(f"capacity: {report['capacity_calls_per_core']} calls per core")


if __name__ == "__main__":
    main()
