"""Secrets stay secret: a whole signed call against a keyed upstream, with every log line at
DEBUG captured, and the OpenAI key, the Twilio auth token, the call token and the caller's
number appear nowhere — not in logs, metrics, the admin call records or error messages."""

from __future__ import annotations

import logging

import httpx
import pytest

from gateway.app import gateway_state
from gateway.loadtest.caller import CallOptions, SimulatedCall, WaitForAnswer
from gateway.observability import mask_number
from gateway.service import running_gateway
from tests import support
from tests.emulator.emulator_support import KEY, running

pytestmark = pytest.mark.timeout(60)

AUTH_TOKEN = "twilio-auth-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-secret-value"
CALLER = "+15557654321"


async def test_no_secret_or_caller_number_leaks_anywhere(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running() as emu:
        config = support.settings(
            openai_api_key=KEY,
            realtime_base_url=emu.base_url,
            twilio_auth_token=AUTH_TOKEN,
            admin_token=ADMIN_TOKEN,
            log_level="debug",
        )
        async with running_gateway(config, port=0) as gw:
            assert gw.emulator is None  # the keyed upstream, not an embedded emulator
            options = CallOptions(
                webhook_url=f"{gw.url}/twilio/voice",
                auth_token=AUTH_TOKEN,
                from_number=CALLER,
            )
            result = await SimulatedCall([WaitForAnswer()], options).run()
            assert result.ok, (result.failure, result.failure_detail)
            call_token = next(v for k, v in result.stream_parameters.items() if "token" in k)
            async with httpx.AsyncClient() as client:
                # a forged webhook: its error message must not echo anything secret either
                forged = await client.post(
                    f"{gw.url}/twilio/voice",
                    data={"CallSid": "CAx", "From": CALLER, "To": "+1555"},
                    headers={"X-Twilio-Signature": "forged"},
                )
                metrics = (await client.get(f"{gw.url}/metrics")).text
                admin = (
                    await client.get(
                        f"{gw.url}/admin/calls",
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                    )
                ).text
            state = gateway_state(gw.app)
            assert state.recent, "the call record exists"
    assert forged.status_code == 403
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert mask_number(CALLER) in logs  # the number is logged, masked
    for secret in (KEY, AUTH_TOKEN, ADMIN_TOKEN, call_token, CALLER):
        for where, text in (
            ("logs", logs),
            ("metrics", metrics),
            ("admin records", admin),
            ("error response", forged.text),
        ):
            assert secret not in text, f"{secret[:6]}... appears in the {where}"
