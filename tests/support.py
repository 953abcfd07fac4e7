"""Shared by the tests that drive a whole gateway: admitting a call by hand, the carrier's
first messages, and the emulator's view of the upstream sessions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from gateway.app import CALL_TOKEN_PARAM, gateway_state
from gateway.service import RunningGateway
from gateway.settings import Settings
from gateway.telephony.twilio import TwilioCarrierCodec, start_message


def settings(**fields: Any) -> Settings:
    """:class:`Settings` with these fields, the environment for the rest and no ``.env`` file."""
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]


CONNECTED = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    within: float = 10.0,
    *,
    what: str = "",
    interval: float = 0.01,
) -> None:
    """Wait until ``predicate()`` is true (it may be a coroutine function), at most ``within``
    seconds; fail with ``what`` in the message otherwise.

    For state another task or process changes with no event to await on (a call's counters, a
    remote view over HTTP). Where there is an event, await the event instead.
    """
    try:
        async with asyncio.timeout(within):
            while True:
                result = predicate()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"not true within {within:g} s: {what or predicate!r}") from None


async def admit(base_url: str, call_sid: str, to: str = "+1555") -> str:
    """POST the incoming-call webhook for ``call_sid``; the call token its TwiML binds."""
    async with httpx.AsyncClient() as client:
        resp = await client.post(
            f"{base_url}/twilio/voice",
            data={"CallSid": call_sid, "AccountSid": "AC1", "From": "+1555", "To": to},
        )
    return resp.text.split(f'name="{CALL_TOKEN_PARAM}" value="')[1].split('"')[0]


def start_frame(codec: TwilioCarrierCodec, call_sid: str, token: str) -> str:
    """The carrier's ``start`` for ``call_sid``, carrying ``token`` as the TwiML asked."""
    return codec.encode(
        start_message(
            stream_sid=codec.stream_sid,
            call_sid=call_sid,
            account_sid="AC1",
            custom_parameters={CALL_TOKEN_PARAM: token},
        )
    )


async def emulator_sessions(gw: RunningGateway) -> list[dict[str, Any]]:
    """The embedded emulator's live and ended sessions."""
    assert gw.emulator is not None
    async with httpx.AsyncClient() as client:
        resp = await client.get(f"{gw.emulator.url}/emulator/sessions")
    resp.raise_for_status()
    sessions: list[dict[str, Any]] = resp.json()
    return sessions


async def wait_all_ended(
    gw: RunningGateway, states: tuple[str, ...] = ("ended",)
) -> list[dict[str, Any]]:
    """Wait until the gateway has released every call and every emulator session is in one of
    ``states`` (a session whose ICE never connected stays ``connecting``)."""
    state = gateway_state(gw.app)
    async with asyncio.timeout(15):
        await state.idle.wait()
    sessions: list[dict[str, Any]] = []

    async def settled() -> bool:
        nonlocal sessions
        sessions = await emulator_sessions(gw)
        return all(s["state"] in states for s in sessions)

    await wait_until(settled, 15, what=f"every emulator session in {states}", interval=0.05)
    return sessions
