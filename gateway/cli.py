"""The ``gateway`` command: ``serve | emulator | demo | loadtest | check-config | version``."""

from __future__ import annotations

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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
