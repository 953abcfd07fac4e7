"""Field checks shared by the JSON media dialects (Twilio's, Telnyx's, Plivo's).

Every error names the carrier, the event and the field, and is a
:class:`~gateway.errors.CarrierError` subclass, so a bad frame is counted and the call goes on.
Hand-written checks on ``json.loads`` output, as in :mod:`gateway.telephony.twilio`: the media
path runs 50 times a second per call.
"""

from __future__ import annotations

import binascii
import json
from base64 import b64decode
from typing import Any, Final

from gateway.errors import AudioFormatError, CarrierProtocolError, MessageTooLarge

__all__ = ["JsonWire", "describe"]

_MAX_DIGITS: Final = 18
_MAX_NAME_CHARS: Final = 1024


def describe(value: object) -> str:
    """A short, bounded rendering of an unexpected field value for an error message."""
    if value is None:
        return "missing"
    text = repr(value)
    return f"{type(value).__name__} {text[:24]}{'...' if len(text) > 24 else ''}"


class JsonWire:
    """The checks for one carrier's JSON text frames; ``carrier`` names it in every error."""

    def __init__(self, carrier: str) -> None:
        self.carrier = carrier

    def fail(self, event: str, what: str) -> CarrierProtocolError:
        return CarrierProtocolError(f"{self.carrier} {event!r} message: {what}")

    def load(self, frame: str | bytes, limit: int) -> tuple[str, dict[str, Any]]:
        """The event name and object of one text frame of at most ``limit`` UTF-8 bytes."""
        if isinstance(frame, bytes | bytearray | memoryview):
            if len(frame) > limit:
                raise MessageTooLarge(f"binary frame of {len(frame)} bytes exceeds {limit} bytes")
            raise CarrierProtocolError(
                f"binary websocket frame ({len(frame)} bytes): {self.carrier} media streams send "
                "text JSON"
            )
        if not isinstance(frame, str):
            raise CarrierProtocolError(
                f"websocket frame of type {type(frame).__name__} is not text"
            )
        n = len(frame)
        # A character is 1-4 UTF-8 bytes: only encode when the character count is inconclusive.
        if n > limit or (n * 4 > limit and len(frame.encode("utf-8", "surrogatepass")) > limit):
            raise MessageTooLarge(f"text frame of {n} characters exceeds {limit} bytes")
        try:
            obj = json.loads(frame)
        except (ValueError, RecursionError) as exc:
            raise CarrierProtocolError(f"frame is not valid JSON: {exc}") from None
        if type(obj) is not dict:
            raise CarrierProtocolError(f"frame is JSON {type(obj).__name__}, expected an object")
        event = obj.get("event")
        if type(event) is not str:
            raise CarrierProtocolError(
                "frame has no 'event' string" if event is None else "'event' is not a string"
            )
        return event, obj

    def obj(self, parent: dict[str, Any], key: str, event: str, where: str = "") -> dict[str, Any]:
        value = parent.get(key)
        if type(value) is not dict:
            raise self.fail(event, f"'{where}{key}' is {describe(value)}, expected an object")
        return value

    def text(self, parent: dict[str, Any], key: str, event: str, where: str = "") -> str:
        value = parent.get(key)
        if type(value) is not str:
            raise self.fail(event, f"'{where}{key}' is {describe(value)}, expected a string")
        return value

    def number(self, parent: dict[str, Any], key: str, event: str, where: str = "") -> int:
        """A non-negative integer, as a decimal string or a JSON number."""
        value = parent.get(key)
        if type(value) is str:
            if 0 < len(value) <= _MAX_DIGITS and value.isascii() and value.isdigit():
                return int(value)
            raise self.fail(event, f"'{where}{key}' is {value[:24]!r}, expected a decimal string")
        if type(value) is int and value >= 0:
            return value
        raise self.fail(
            event, f"'{where}{key}' is {describe(value)}, expected a non-negative integer"
        )

    def params(
        self, parent: dict[str, Any], key: str, event: str, where: str = ""
    ) -> dict[str, str]:
        """An optional object of string values (custom parameters)."""
        value = parent.get(key, {})
        if value is None:
            return {}
        if type(value) is not dict or not all(type(v) is str for v in value.values()):
            raise self.fail(event, f"'{where}{key}' is {describe(value)}, expected strings")
        return value

    def name(self, value: str, event: str) -> str:
        if len(value) > _MAX_NAME_CHARS:
            raise self.fail(event, f"name of {len(value)} characters exceeds {_MAX_NAME_CHARS}")
        return value

    def payload(self, payload: str, event: str, limit: int) -> bytes:
        """Decode base64 audio of at most ``limit`` bytes (checked before decoding)."""
        if len(payload) > (limit + 2) // 3 * 4:
            raise AudioFormatError(
                f"{self.carrier} {event!r} payload of about {len(payload) * 3 // 4} bytes "
                f"exceeds {limit} bytes ({limit // 8} ms of μ-law)"
            )
        try:
            audio = b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise self.fail(event, f"payload is not valid base64 ({exc})") from None
        if not audio:
            raise AudioFormatError(f"{self.carrier} {event!r} payload is empty: no audio samples")
        return audio
