"""The ``gateway`` command: ``serve | call | emulator | demo | loadtest | check-config |
version``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gateway import __version__
from gateway.audio.format import UPSTREAM_CODECS
from gateway.errors import ConfigError
from gateway.settings import Settings, load_settings

if TYPE_CHECKING:
    from gateway.numbers import Profile

app = typer.Typer(
    name="gateway",
    help="Telephony gateway bridging phone calls to the OpenAI Realtime API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Paragraphs of the docstrings are reflowed to the terminal, not broken at source lines.
    rich_markup_mode="markdown",
)

EXIT_CONFIG = 2


@app.callback()
def _root() -> None:
    """Telephony gateway bridging phone calls to the OpenAI Realtime API."""


def settings_or_exit() -> Settings:
    """Load settings, or print every problem at once and exit with status 2."""
    try:
        return load_settings()
    except ConfigError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None


@app.command()
def version() -> None:
    """Print the gateway's version."""
    typer.echo(f"gateway {__version__}")


@app.command("check-config")
def check_config(
    file: Annotated[
        Path | None,
        typer.Argument(help="Profiles file to check (default: GATEWAY_PROFILES_FILE)"),
    ] = None,
    probe: Annotated[
        bool,
        typer.Option(
            "--probe",
            help="Also ask the Realtime API whether the key may open sessions for the default "
            "profile (mints a 10 s client secret: authenticated, no call, nothing billed)",
        ),
    ] = False,
) -> None:
    """Validate the settings and a profiles file, print the numbers it serves; exit 0 or 1."""
    from rich.console import Console
    from rich.table import Table

    from gateway.numbers import builtin_profiles, load_profiles

    settings = settings_or_exit()
    path = file or settings.profiles_file
    try:
        profiles = builtin_profiles() if path is None else load_profiles(path)
    except ConfigError as exc:
        typer.echo(f"invalid: {exc}", err=True)
        raise typer.Exit(1) from None
    table = Table(title=f"profiles from {profiles.source}")
    columns = (
        "number",
        "voice",
        "model",
        "codec",
        "turn detection",
        "greeting",
        "tools",
        "budget",
        "rec",
        "carrier",
    )
    for col in columns:
        table.add_column(col, no_wrap=col == "number", overflow="fold")
    rows = [("default", profiles.default), *sorted(profiles.numbers.items())]
    for number, p in rows:
        td = p.turn_detection.type if p.turn_detection else "manual"
        tools = ["end_call"] if p.tools.end_call else []
        tools += [f"transfer:{name}" for name in sorted(p.tools.transfer_call)]
        table.add_row(
            number,
            p.voice,
            p.model,
            p.codec(settings.upstream_codec),
            td,
            "yes" if p.greeting else "no",
            " ".join(tools) or "-",
            "-" if p.max_cost_usd is None else f"${p.max_cost_usd:g}",
            "yes" if p.record else "no",
            p.carrier or "any",
        )
    Console(width=max(Console().width, 120)).print(table)  # whole numbers, even when piped
    if not settings.call_control_enabled and profiles.using_tools():
        from gateway.service import TOOLS_WITHOUT_CALL_CONTROL

        typer.echo("warning: " + TOOLS_WITHOUT_CALL_CONTROL % ", ".join(profiles.using_tools()))
    upstream = (
        "embedded emulator (no OPENAI_API_KEY)"
        if settings.uses_embedded_emulator
        else settings.effective_realtime_base_url
    )
    from gateway.records.store import mask_url

    if not settings.records_enabled:
        records = "off"
    elif settings.records_url:
        records = mask_url(settings.records_url)
    else:
        records = f"SQLite at {settings.records_path}"
    carrier_auth, problems = settings.carrier_auth_report()
    for problem in problems:
        typer.echo(f"warning: {problem}")
    typer.echo(f"settings ok; upstream: {upstream}; call records: {records}")
    typer.echo(f"carrier requests: {carrier_auth}")
    for line in carrier_lines(settings):
        typer.echo(line)
    if probe:
        _probe_upstream(settings, profiles.default)


def carrier_lines(settings: Settings) -> list[str]:
    """One line per carrier: its routes, and which of its requests are accepted."""
    from gateway.telephony.carriers import registry, served

    lines = []
    serving = served(settings)
    for carrier in registry().values():
        if carrier.name not in serving:
            lines.append(
                f"carrier {carrier.name}: not served (set {carrier.credential_setting}, or name "
                "it in GATEWAY_CARRIERS)"
            )
            continue
        mode = settings.carrier_auth_for(configured=carrier.credential(settings) is not None)
        how = {
            "signed": f"signed ({carrier.auth_scheme})",
            "unsigned": "UNSIGNED from any address (GATEWAY_ALLOW_UNSIGNED=true)",
            "refused": f"refused (no {carrier.credential_setting})",
            "loopback": "unsigned from loopback clients only",
        }[mode]
        lines.append(
            f"carrier {carrier.name}: POST {carrier.voice_path}, WS {carrier.media_path}; {how}"
        )
    return lines


def _probe_upstream(settings: Settings, profile: Profile) -> None:
    import asyncio

    from gateway.errors import UpstreamError
    from gateway.upstream import probe, realtime_config

    if settings.uses_embedded_emulator:
        typer.echo("probe: nothing to ask: no OPENAI_API_KEY, calls use the embedded emulator")
        return
    try:
        found = asyncio.run(
            probe(realtime_config(settings), profile, default_codec=settings.upstream_codec)
        )
    except UpstreamError as exc:
        typer.echo(f"probe failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"probe ok: {found}")


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default: GATEWAY_HOST)")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (default: GATEWAY_PORT)")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=256,
            help="Worker processes sharing the port, about one core each (default: "
            "GATEWAY_WORKERS, 1)",
        ),
    ] = None,
) -> None:
    """Run the gateway: Twilio webhook + media streams, bridged to the Realtime API.

    Without OPENAI_API_KEY and GATEWAY_REALTIME_BASE_URL the Realtime emulator runs embedded on
    loopback. SIGTERM/SIGINT drain (live calls finish, up to GATEWAY_DRAIN_TIMEOUT_S); a second
    signal stops at once; SIGHUP reloads the profiles file. With more than one worker a
    supervisor holds the port, restarts a worker that dies and passes those signals to every
    worker; GATEWAY_MAX_CALLS applies to each worker.
    """
    import asyncio

    from gateway.numbers import ProfileStore
    from gateway.observability import configure_logging
    from gateway.service import serve_forever

    settings = settings_or_exit()
    if workers is not None:
        settings = settings.model_copy(update={"workers": workers})
    configure_logging(settings.log_level, settings.log_format)
    try:
        profiles = ProfileStore(settings.profiles_file)
    except ConfigError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    if settings.workers > 1:
        from gateway.workers import supervise

        asyncio.run(supervise(settings, host=host, port=port))
        return
    asyncio.run(serve_forever(settings, host=host, port=port, profiles=profiles))


@app.command()
def demo(
    number: Annotated[
        str, typer.Option(help="The number dialled (its profile answers)")
    ] = "+15550100002",
    turns: Annotated[int, typer.Option(min=0, max=10, help="Questions the caller asks")] = 2,
    barge_in: Annotated[
        bool, typer.Option(help="End by talking over the assistant's answer")
    ] = True,
    reply: Annotated[
        str, typer.Option(help="Embedded emulator's answers: speech, echo or tone")
    ] = "speech",
    latency_ms: Annotated[
        float, typer.Option(min=0, help="Embedded emulator's model latency (end of turn -> audio)")
    ] = 300.0,
    record: Annotated[
        Path | None, typer.Option(help="Write the call as a stereo WAV (caller left)")
    ] = None,
    codec: Annotated[
        str | None,
        typer.Option(
            help="Realtime leg's audio codec: opus, pcmu or pcma (a profile's own choice wins; "
            "default GATEWAY_UPSTREAM_CODEC)"
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the full report as JSON instead of text")
    ] = False,
    carrier: Annotated[
        str, typer.Option(help="The carrier the call plays: twilio, signalwire, telnyx or plivo")
    ] = "twilio",
) -> None:
    """Place one simulated phone call through a local gateway and show what the caller heard.

    With no OPENAI_API_KEY the Realtime emulator runs embedded (offline, synthesized voice).
    Exit status 0 when the call completed, 1 when it failed.
    """
    import asyncio

    from gateway.demo import (
        demo_script,
        format_entry,
        in_time_order,
        report_json,
        run_demo,
        summary_lines,
    )
    from gateway.loadtest.caller import TimelineEntry
    from gateway.observability import configure_logging

    if reply not in ("speech", "echo", "tone"):
        raise typer.BadParameter("must be speech, echo or tone", param_hint="--reply")
    from gateway.loadtest.dialects import DIALECTS

    if carrier not in DIALECTS:
        raise typer.BadParameter(f"must be one of {', '.join(DIALECTS)}", param_hint="--carrier")
    if codec is not None and codec not in UPSTREAM_CODECS:
        raise typer.BadParameter("must be opus, pcmu or pcma", param_hint="--codec")
    settings = settings_or_exit()
    if codec is not None:
        settings = settings.model_copy(update={"upstream_codec": codec})
    configure_logging("error" if json_out else "warning", settings.log_format)
    if settings.uses_embedded_emulator:
        where = "the embedded Realtime emulator (offline, free)"
    else:
        where = (
            f"the REAL OpenAI Realtime API at {settings.effective_realtime_base_url} "
            "(OPENAI_API_KEY is set): this call is billed"
        )
    typer.echo(f"calling {number} through a local gateway and {where} ...", err=json_out)
    timeline: list[TimelineEntry] = []
    report = asyncio.run(
        run_demo(
            settings,
            number=number,
            script=demo_script(turns, barge_in),
            record=record,
            emulator_options={"reply": reply, "latency_ms": latency_ms},
            on_event=timeline.append,
            carrier=carrier,
        )
    )
    if json_out:
        typer.echo(report_json(report))
    else:
        for entry in in_time_order(timeline):
            typer.echo(format_entry(entry))
        typer.echo("")
        for line in summary_lines(report):
            typer.echo(line)
        if record is not None:
            typer.echo(f"recording: {record}")
    if not report.result.ok:
        raise typer.Exit(1)


CALL_POLL_S = 0.5
FINAL_STATUSES = ("completed", "busy", "no-answer", "failed", "canceled")


@app.command()
def call(
    from_number: Annotated[
        str, typer.Option("--from-number", help="Your Twilio number the call comes from (E.164)")
    ],
    to: Annotated[
        str | None, typer.Argument(help="The number to call, E.164 (+15551234567)")
    ] = None,
    profile: Annotated[
        str, typer.Option(help="The profile to call with: 'default' or a number of the file")
    ] = "default",
    var: Annotated[
        list[str] | None,
        typer.Option(
            "--var", help="name=value merged into the instructions ({name}); repeat for more"
        ),
    ] = None,
    gateway: Annotated[
        str | None,
        typer.Option(help="The running gateway's URL (default: http://GATEWAY_HOST:GATEWAY_PORT)"),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow the call's progress until it ends")] = True,
    csv_file: Annotated[
        Path | None,
        typer.Option(
            "--csv",
            help="Call every number of this CSV file (a 'number' column; other columns are "
            "variables) instead of TO",
        ),
    ] = None,
    results: Annotated[
        Path | None,
        typer.Option(help="Result rows of --csv (default: <file>.results.csv); resumes from it"),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, max=100, help="Calls of --csv in progress at once")
    ] = 1,
) -> None:
    """Place an outbound call through a running gateway (``POST /calls``; needs
    GATEWAY_ADMIN_TOKEN, and Twilio credentials on the gateway). Prints the call's id, then
    its progress: ringing, answered, who answered, the final status. Exit 1 when the call was
    refused or did not connect.

    With ``--csv`` it calls a list, paced by the gateway, with a progress bar, writing one
    result row per number; stop it with Ctrl-C and run the same command again to resume
    (nobody is called twice)."""
    import time

    import httpx

    if (to is None) == (csv_file is None):
        typer.echo("give either a number to call or --csv FILE", err=True)
        raise typer.Exit(EXIT_CONFIG)
    settings = settings_or_exit()
    if settings.admin_token is None:
        typer.echo("GATEWAY_ADMIN_TOKEN is not set: placing calls needs it", err=True)
        raise typer.Exit(EXIT_CONFIG)
    variables: dict[str, str] = {}
    for item in var or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            typer.echo(f"--var {item!r}: expected name=value", err=True)
            raise typer.Exit(EXIT_CONFIG)
        variables[name.strip()] = value
    base = (gateway or f"http://{settings.host}:{settings.port}").rstrip("/")
    headers = {"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"}
    if csv_file is not None:
        _call_list(base, headers, csv_file, results, from_number, profile, concurrency)
        return
    body = {"to": to, "from": from_number, "profile": profile, "variables": variables}
    with httpx.Client(headers=headers, timeout=30.0, trust_env=False) as http:
        try:
            resp = http.post(f"{base}/calls", json=body)
        except httpx.HTTPError as exc:
            typer.echo(f"cannot reach the gateway at {base}: {exc}", err=True)
            raise typer.Exit(1) from None
        if resp.status_code != 201:
            typer.echo(f"refused ({resp.status_code}): {_error_text(resp)}", err=True)
            raise typer.Exit(1)
        placed = resp.json()
        typer.echo(f"call {placed['id']} placed (Twilio {placed['call_sid']})")
        if not wait:
            return
        shown, answered, view = 0, None, placed
        while True:
            for event in view["events"][shown:]:
                typer.echo(f"  {event['status']}")
            shown = len(view["events"])
            if view["answered_by"] and view["answered_by"] != answered:
                answered = view["answered_by"]
                typer.echo(f"  answered by {answered}")
            if view["status"] in FINAL_STATUSES:
                break
            time.sleep(CALL_POLL_S)
            view = http.get(f"{base}/calls/{placed['id']}").json()
    if view["status"] != "completed":
        raise typer.Exit(1)


def _call_list(
    base: str,
    headers: dict[str, str],
    csv_file: Path,
    results: Path | None,
    from_number: str,
    profile: str,
    concurrency: int,
) -> None:
    import asyncio
    from collections import Counter

    import httpx
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from gateway.batch import Outcome, read_numbers, run_batch

    try:
        rows = read_numbers(csv_file)
    except (OSError, ValueError) as exc:
        typer.echo(f"cannot read {csv_file}: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    results = results or csv_file.with_suffix(".results.csv")
    counts: Counter[str] = Counter()
    progress = Progress(
        TextColumn("calls"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}")
    )
    task = progress.add_task("", total=len({r.number for r in rows}))

    def done(outcome: Outcome) -> None:
        counts[outcome.status] += 1
        summary = ", ".join(f"{k} {v}" for k, v in counts.items())
        progress.update(task, advance=1, description=summary)

    async def run() -> None:
        async with httpx.AsyncClient(
            base_url=base, headers=headers, timeout=30.0, trust_env=False
        ) as http:
            await run_batch(
                http,
                rows,
                results,
                from_number=from_number,
                profile=profile,
                concurrency=concurrency,
                on_progress=done,
            )

    try:
        with progress:
            asyncio.run(run())
    except KeyboardInterrupt:
        typer.echo(f"stopped; run the same command again to resume ({results})", err=True)
        raise typer.Exit(130) from None
    except httpx.HTTPError as exc:
        typer.echo(f"the gateway at {base} failed: {exc}; resume by running again", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"results: {results} ({', '.join(f'{k} {v}' for k, v in counts.items())})")


def _error_text(resp: object) -> str:
    import httpx

    assert isinstance(resp, httpx.Response)
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(body, dict):
        return str(body.get("error") or body.get("detail") or body)
    return str(body)


def _register_emulator() -> None:
    from gateway.emulator.cli import emulator_command

    app.command("emulator")(emulator_command)


def _register_loadtest() -> None:
    from gateway.loadtest.cli import loadtest_command

    app.command("loadtest")(loadtest_command)


_register_emulator()
_register_loadtest()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
