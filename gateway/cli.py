"""The ``gateway`` command: ``serve | emulator | demo | loadtest | check-config | version``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway import __version__
from gateway.errors import ConfigError
from gateway.settings import Settings, load_settings

app = typer.Typer(
    name="gateway",
    help="Telephony gateway bridging phone calls to the OpenAI Realtime API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
    for col in ("number", "voice", "model", "turn detection", "greeting", "local barge-in"):
        table.add_column(col)
    rows = [("default", profiles.default), *sorted(profiles.numbers.items())]
    for number, p in rows:
        td = p.turn_detection.type if p.turn_detection else "manual"
        table.add_row(
            number, p.voice, p.model, td, "yes" if p.greeting else "no", str(p.local_barge_in)
        )
    Console().print(table)
    upstream = (
        "embedded emulator (no OPENAI_API_KEY)"
        if settings.uses_embedded_emulator
        else settings.effective_realtime_base_url
    )
    typer.echo(f"settings ok; upstream: {upstream}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
