"""``gateway loadtest``: simulated phone calls against a gateway, measured as callers hear them.

Exit status: 0 when every threshold holds, 1 when one is breached (any failed call is one
unless ``--max-failed`` says otherwise), 2 for a usage or start-up error.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from gateway.audio.format import UPSTREAM_CODECS
from gateway.loadtest.report import Threshold, check, render, summarize, write_csv
from gateway.loadtest.runner import LoadPlan, LoadResult, LoadRun, Progress, Target, is_loopback_url
from gateway.loadtest.scenarios import CallerLines, ScenarioMix
from gateway.loadtest.spawn import SpawnError, cpu_list, spawned_stack

__all__ = ["loadtest_command"]

EXIT_BREACH = 1
EXIT_USAGE = 2
PROGRESS_EVERY_S = 5.0
"""How often a progress line is printed when the terminal cannot show the live table."""

_Display = Literal["live", "lines", "off"]
"""The progress display: a live table on a terminal, a line every few seconds otherwise."""


def loadtest_command(
    url: Annotated[
        str | None,
        typer.Argument(help="Gateway base URL, e.g. http://127.0.0.1:8080 (omit with --spawn)"),
    ] = None,
    spawn: Annotated[
        bool,
        typer.Option(help="Start the emulator and a gateway as local processes, test, stop them"),
    ] = False,
    calls: Annotated[
        int | None,
        typer.Option(
            min=1, help="Total calls (default: --concurrency, or unbounded within --duration)"
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Calls held in progress")] = 10,
    rate: Annotated[
        float | None,
        typer.Option(
            min=0.01, help="Call arrivals per second (default: as fast as concurrency allows)"
        ),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=1, help="Seconds after which no new call starts")
    ] = None,
    ramp_up: Annotated[
        float, typer.Option(min=0, help="Seconds to reach --concurrency (linear)")
    ] = 0.0,
    scenario: Annotated[
        str,
        typer.Option(
            help="conversation | barge-in | listen, or a weighted mix: conversation=3,barge-in=1"
        ),
    ] = "conversation",
    turns: Annotated[int, typer.Option(min=1, max=20, help="Questions per conversation")] = 3,
    think_ms: Annotated[
        float, typer.Option(min=0, help="Caller's silence after an answer before speaking")
    ] = 500.0,
    barge_in_after_ms: Annotated[
        float, typer.Option(min=0, help="How far into an answer the barge-in caller interrupts")
    ] = 1200.0,
    barge_in_every: Annotated[
        int, typer.Option(min=0, help="conversation: talk over every n-th answer (0: never)")
    ] = 0,
    audio: Annotated[
        Path | None,
        typer.Option(help="Caller speech from this 16-bit WAV (any rate) instead of synthesis"),
    ] = None,
    number: Annotated[
        list[str] | None, typer.Option(help="Number dialled (repeat for round robin)")
    ] = None,
    auth_token: Annotated[
        str | None,
        typer.Option(
            envvar="TWILIO_AUTH_TOKEN",
            help="Sign webhooks and upgrades with this Twilio auth token",
            show_default=False,
        ),
    ] = None,
    carrier: Annotated[
        str,
        typer.Option(
            help="The carrier dialect the calls speak: twilio, signalwire, telnyx or plivo "
            "(--auth-token is then that carrier's secret; see docs/carriers.md)"
        ),
    ] = "twilio",
    max_call_s: Annotated[
        float, typer.Option(min=1, help="A call still running after this fails as max_duration")
    ] = 300.0,
    seed: Annotated[int, typer.Option(help="Seed for scenario and question choice")] = 1,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the JSON report here ('-': stdout)")
    ] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write one row per call")] = None,
    max_failed: Annotated[
        int, typer.Option(min=0, help="Failed calls tolerated before the run fails")
    ] = 0,
    max_p95_response_ms: Annotated[
        float | None, typer.Option(help="Fail if p95 response latency (as heard) exceeds this")
    ] = None,
    max_p95_setup_ms: Annotated[
        float | None, typer.Option(help="Fail if p95 setup time exceeds this")
    ] = None,
    max_p95_barge_in_ms: Annotated[
        float | None, typer.Option(help="Fail if p95 barge-in stop time exceeds this")
    ] = None,
    threshold: Annotated[
        list[str] | None,
        typer.Option(help="More thresholds, e.g. 'response.p99<=2000', 'added_inbound_p99<=10'"),
    ] = None,
    allow_remote: Annotated[
        bool, typer.Option(help="Allow a target that is not on this machine")
    ] = False,
    emulator_latency_ms: Annotated[
        float, typer.Option(min=0, help="--spawn: the emulator's model latency")
    ] = 300.0,
    codec: Annotated[
        str,
        typer.Option(help="--spawn: the gateway's Realtime leg codec, opus, pcmu or pcma"),
    ] = "opus",
    pin: Annotated[
        bool,
        typer.Option(help="--spawn: gateway on CPU 0, emulator on CPU 1, this tool on the last"),
    ] = False,
    gateway_cpus: Annotated[
        str | None, typer.Option(help="--spawn: CPUs for the gateway, e.g. '0' or '0-1'")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1, max=64, help="--spawn: the gateway's worker processes (serve --workers)"
        ),
    ] = 1,
    emulator_cpus: Annotated[
        str | None, typer.Option(help="--spawn: CPUs for the emulator")
    ] = None,
    logs: Annotated[
        Path | None,
        typer.Option(help="--spawn: keep logs and call records here (default: removed at exit)"),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress display (table or lines)")] = False,
) -> None:
    """Place simulated Twilio calls against a gateway and report what callers heard.

    Each call POSTs the webhook, follows the TwiML to the media stream, speaks real (synthesized)
    speech paced every 20 ms and plays the gateway's audio back through a Twilio-like playout
    buffer. The report gives setup, response latency as heard, barge-in stop time and gaps
    (p50/p90/p95/p99/max), failures by reason, the tool's own pacing lateness and, from the
    gateway's /metrics, its CPU per call-minute, RSS and added-latency p99s.
    """
    err = Console(stderr=True, soft_wrap=True)

    def usage(message: str) -> typer.Exit:
        err.print(f"[red]error:[/red] {message}")
        return typer.Exit(EXIT_USAGE)

    if spawn == (url is not None):
        raise usage("give the gateway URL, or --spawn to start one (not both)")
    from gateway.loadtest.dialects import DIALECTS

    if carrier not in DIALECTS:
        raise usage(f"--carrier {carrier!r}: one of {', '.join(DIALECTS)}")
    if codec not in UPSTREAM_CODECS:
        raise usage(f"--codec must be one of {', '.join(UPSTREAM_CODECS)}, got {codec!r}")
    if codec != "opus" and not spawn:
        raise usage("--codec sets a spawned gateway's codec; a running one uses its own")
    if workers != 1 and not spawn:
        raise usage("--workers sets a spawned gateway's workers; a running one has its own")
    if url is not None and not allow_remote and not is_loopback_url(url):
        raise usage(
            f"{url} is not on this machine; load tests target loopback unless --allow-remote"
        )
    try:
        mix = ScenarioMix.parse(
            scenario,
            turns=turns,
            think_ms=think_ms,
            barge_in_after_ms=barge_in_after_ms,
            barge_in_every=barge_in_every,
        )
        plan = LoadPlan(
            calls=calls if calls is not None or duration is not None else concurrency,
            concurrency=concurrency,
            rate=rate,
            duration_s=duration,
            ramp_up_s=ramp_up,
            max_call_s=max_call_s,
            seed=seed,
        )
        thresholds = [Threshold.parse(f"failed<={max_failed}")]
        for metric, limit in (
            ("response", max_p95_response_ms),
            ("setup", max_p95_setup_ms),
            ("barge_in_stop", max_p95_barge_in_ms),
        ):
            if limit is not None:
                thresholds.append(Threshold(metric, "p95", limit))
        thresholds += [Threshold.parse(t) for t in threshold or ()]
        g_cpus = cpu_list(gateway_cpus) if gateway_cpus else None
        e_cpus = cpu_list(emulator_cpus) if emulator_cpus else None
        self_cpus: set[int] | None = None
        if pin:
            available = sorted(os.sched_getaffinity(0))
            if len(available) < 2:
                raise ValueError("--pin needs at least two CPUs")
            g_cpus = g_cpus or {available[0]}
            e_cpus = e_cpus or {available[1]}
            self_cpus = {available[-1]}
        lines = CallerLines.from_wav(audio) if audio else CallerLines.synthesized()
    except ValueError as exc:
        raise usage(str(exc)) from None
    if self_cpus:
        os.sched_setaffinity(0, self_cpus)
    numbers = tuple(number) if number else ("+15550100002",)
    display: _Display = "off" if quiet else "live" if err.is_terminal else "lines"

    async def main() -> LoadResult:
        if not spawn:
            assert url is not None
            target = Target.for_carrier(url, carrier, auth_token=auth_token, numbers=numbers)
            return await _run(plan, target, mix, lines, err, display)
        err.print("starting the emulator and a gateway ...")
        async with spawned_stack(
            gateway_cpus=g_cpus,
            emulator_cpus=e_cpus,
            emulator_args=["--latency-ms", str(emulator_latency_ms)],
            max_calls=max(plan.concurrency + 10, 30),
            log_dir=logs,
            gateway_env={
                "GATEWAY_UPSTREAM_CODEC": codec,
                "GATEWAY_CARRIERS": json.dumps([carrier]),  # serve the carrier the calls speak
                "GATEWAY_WORKERS": str(workers),
            },
        ) as stack:
            err.print(
                f"gateway {stack.gateway_url} (pid {stack.gateway_pid}, codec {codec}"
                + (f", {workers} workers" if workers > 1 else "")
                + (f", CPUs {sorted(g_cpus)}" if g_cpus else "")
                + f"), emulator {stack.emulator_url} (pid {stack.emulator_pid}"
                + (f", CPUs {sorted(e_cpus)}" if e_cpus else "")
                + f"), logs in {stack.log_dir}"
            )
            # The spawned gateway holds a Twilio token only: other carriers' calls come from
            # loopback, unsigned, as their rule without a credential allows.
            token = stack.auth_token if carrier == "twilio" else None
            target = Target.for_carrier(
                stack.gateway_url, carrier, auth_token=token, numbers=numbers
            )
            result = await _run(plan, target, mix, lines, err, display)
            result.extra["spawned"] = {
                "emulator_latency_ms": emulator_latency_ms,
                "codec": codec,
                "workers": workers,
                "gateway_cpus": sorted(g_cpus) if g_cpus else None,
                "emulator_cpus": sorted(e_cpus) if e_cpus else None,
                "logs": None if logs is None else str(logs),
            }
            return result

    try:
        result = asyncio.run(main())
    except SpawnError as exc:
        raise usage(str(exc)) from None
    summary = summarize(result)
    outcomes = check(summary, thresholds)
    summary["thresholds"] = [o.to_dict() for o in outcomes]
    summary["passed"] = all(o.passed for o in outcomes)
    if json_path is not None:
        text = json.dumps(summary, indent=2)
        if str(json_path) == "-":
            typer.echo(text)
        else:
            json_path.write_text(text + "\n")
    if csv_path is not None:
        write_csv(result, csv_path)
    report_to = err if str(json_path) == "-" else Console(soft_wrap=True)
    for line in render(summary, outcomes):
        report_to.print(line, markup=False, highlight=False)
    if not summary["passed"]:
        raise typer.Exit(EXIT_BREACH)


async def _run(
    plan: LoadPlan,
    target: Target,
    mix: ScenarioMix,
    lines: CallerLines,
    console: Console,
    display: _Display,
) -> LoadResult:
    run = LoadRun(plan, target, mix, lines)
    task = asyncio.create_task(run.run())
    shape = f"{plan.calls or 'unbounded'} call(s), concurrency {plan.concurrency}"
    if plan.duration_s:
        shape += f", {plan.duration_s:g} s"
    console.print(f"load test: {shape}, {mix.describe()} -> {target.base_url}")
    if display == "live":
        with Live(_table(run.progress()), console=console, refresh_per_second=2) as table:
            while not task.done():
                await asyncio.wait({task}, timeout=0.5)
                table.update(_table(run.progress()))
    elif display == "lines":
        while not task.done():
            await asyncio.wait({task}, timeout=PROGRESS_EVERY_S)
            if not task.done():
                console.print(_line(run.progress()), markup=False, highlight=False)
    return await task


def _table(p: Progress) -> Table:
    table = Table(title="gateway loadtest", show_header=True, header_style="bold")
    for column in ("elapsed", "started", "active", "done", "failed", "p95 answer", "pacing max"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{p.elapsed_s:.0f} s",
        str(p.started),
        str(p.active),
        str(p.completed),
        str(p.failed),
        "-" if p.response_p95_ms is None else f"{p.response_p95_ms:.0f} ms",
        f"{p.pacing_max_ms:.1f} ms",
    )
    if p.failures:
        table.caption = "failures: " + ", ".join(f"{k} x{v}" for k, v in p.failures.items())
    return table


def _line(p: Progress) -> str:
    parts = [
        f"{p.elapsed_s:5.0f} s",
        f"started {p.started}",
        f"active {p.active}",
        f"done {p.completed}",
        f"failed {p.failed}",
    ]
    if p.response_p95_ms is not None:
        parts.append(f"p95 answer {p.response_p95_ms:.0f} ms")
    parts.append(f"pacing max {p.pacing_max_ms:.1f} ms")
    return "  ".join(parts)
