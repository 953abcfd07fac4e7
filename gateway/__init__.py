"""Telephony gateway: phone calls (Twilio Media Streams) <-> the OpenAI Realtime API over WebRTC."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gateway")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
