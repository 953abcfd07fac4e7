"""The exception tree maps to websocket close codes in one place."""

from __future__ import annotations

import pytest

from gateway.errors import (
    AudioFormatError,
    CapacityError,
    CarrierProtocolError,
    CloseCode,
    Forbidden,
    MessageTooLarge,
    UnsupportedMediaFormat,
    UpstreamLost,
    UpstreamRefused,
    close_code_for,
)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (MessageTooLarge("big"), CloseCode.MESSAGE_TOO_BIG),
        (CarrierProtocolError("bad json"), CloseCode.PROTOCOL_ERROR),
        (UnsupportedMediaFormat("alaw"), CloseCode.UNSUPPORTED_DATA),
        (AudioFormatError("odd"), CloseCode.UNSUPPORTED_DATA),
        (Forbidden("sig"), CloseCode.POLICY_VIOLATION),
        (UpstreamLost("gone"), CloseCode.UPSTREAM_UNAVAILABLE),
        (CapacityError("full"), CloseCode.TRY_AGAIN_LATER),
        (ValueError("oops"), CloseCode.INTERNAL_ERROR),
    ],
)
def test_close_codes(exc: BaseException, code: CloseCode) -> None:
    assert close_code_for(exc)[0] is code


def test_reason_is_short_and_hides_internal_details() -> None:
    _, reason = close_code_for(CarrierProtocolError("é" * 200))
    assert len(reason.encode()) <= 123
    assert close_code_for(KeyError("secret-internal"))[1] == "internal error"


def test_retryable_statuses() -> None:
    assert UpstreamRefused("x", status=429).retryable
    assert UpstreamRefused("x", status=503).retryable
    assert not UpstreamRefused("x", status=401).retryable
