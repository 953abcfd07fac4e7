"""The ``gateway`` command: ``serve | emulator | demo | loadtest | check-config | version``."""

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
    columns = ("number", "voice", "model", "turn detection", "greeting", "tools", "budget", "rec")
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
            td,
            "yes" if p.greeting else "no",
            " ".join(tools) or "-",
            "-" if p.max_cost_usd is None else f"${p.max_cost_usd:g}",
            "yes" if p.record else "no",
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
    if probe:
        _probe_upstream(settings, profiles.default)


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
