"""``gateway serve --workers 2``: two worker processes behind one port, under a supervisor.

The supervisor is started as the operator starts it (``python -m gateway serve --workers 2`` on
a free loopback port, embedded emulator, unsigned loopback carrier) and driven from outside: a
call is placed by hand so its webhook lands on one worker and its media websocket on the other
(each response names its worker in ``x-gateway-worker``), simulated callers place whole calls,
and the process gets the signals an init system sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from gateway.app import CALL_TOKEN_PARAM, PROFILE_PARAM
from gateway.loadtest.caller import CallOptions, HangUp, SimulatedCall, WaitForAnswer
from gateway.loadtest.spawn import free_port
from gateway.observability import MULTIPROC_DIR_ENV
from gateway.service import WORKER_HEADER
from gateway.telephony.messages import Stop
from gateway.telephony.twilio import TwilioCarrierCodec, start_message
from gateway.workers import (
    MAX_RESTART_DELAY_S,
    restart_delay,
    worker_environment,
)
from tests.support import CONNECTED, settings, wait_until

pytestmark = pytest.mark.timeout(120)

ADMIN = "admin-token-for-the-test"
NUMBER = "+15550100002"


def test_restart_delay_doubles_from_half_a_second_up_to_a_ceiling() -> None:
    assert [restart_delay(n) for n in range(5)] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert restart_delay(50) == MAX_RESTART_DELAY_S


def test_workers_get_a_shared_token_key_only_when_the_operator_set_none() -> None:
    env, generated = worker_environment(settings(), {"PATH": "/bin"}, "/tmp/m")
    assert generated and len(env["GATEWAY_CALL_TOKEN_SECRET"]) >= 32
    assert env[MULTIPROC_DIR_ENV] == "/tmp/m" and env["PATH"] == "/bin"
    again, _ = worker_environment(settings(), {}, "/tmp/m")
    assert again["GATEWAY_CALL_TOKEN_SECRET"] != env["GATEWAY_CALL_TOKEN_SECRET"]  # per run
    for given in (settings(call_token_secret="mine"), settings(twilio_auth_token="tw")):
        env, generated = worker_environment(given, {}, "/tmp/m")
        assert not generated and "GATEWAY_CALL_TOKEN_SECRET" not in env


# --- a supervisor in its own process --------------------------------------------------------


@dataclass
class Supervised:
    url: str
    process: asyncio.subprocess.Process
    log_path: Path
    client: httpx.AsyncClient
    # What the test saw each worker do, by pid: the evidence the totals are checked against.
    admitted: dict[int, int] = field(default_factory=dict)

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :] + "/twilio/media"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def get(self, path: str) -> httpx.Response:
        # A fresh connection per request, so the kernel picks a worker each time.
        resp = await self.client.get(
            f"{self.url}{path}",
            headers={"connection": "close", "authorization": f"Bearer {ADMIN}"},
        )
        return resp

    async def worker_pids(self, want: int = 2) -> set[int]:
        """The pids of the workers answering, once ``want`` distinct ones have answered."""
        seen: set[int] = set()

        async def enough() -> bool:
            seen.add(_worker(await self.get("/healthz")))
            return len(seen) >= want

        await wait_until(enough, 20, what=f"{want} workers answering", interval=0)
        return seen

    async def admit_on(self, pid_other_than: int, call_sid: str) -> tuple[int, str]:
        """POST the webhook for ``call_sid`` until a worker other than ``pid_other_than``
        answers it; its pid and the token of its TwiML."""
        found: list[tuple[int, str]] = []

        async def landed() -> bool:
            resp = await self.client.post(
                f"{self.url}/twilio/voice",
                data={"CallSid": call_sid, "AccountSid": "AC1", "From": "+1555", "To": NUMBER},
                headers={"connection": "close"},
            )
            assert resp.status_code == 200, resp.text
            pid = _worker(resp)
            self.admitted[pid] = self.admitted.get(pid, 0) + 1
            token = resp.text.split(f'name="{CALL_TOKEN_PARAM}" value="')[1].split('"')[0]
            found.append((pid, token))
            return pid != pid_other_than

        await wait_until(landed, 20, what="a webhook on the other worker", interval=0)
        return found[-1]


def _worker(resp: httpx.Response) -> int:
    return int(resp.headers[WORKER_HEADER])


def _ws_worker(ws: ClientConnection) -> int:
    assert ws.response is not None
    return int(ws.response.headers[WORKER_HEADER])


def _child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENAI_"))}
    env.pop("TWILIO_AUTH_TOKEN", None)
    env.pop(MULTIPROC_DIR_ENV, None)
    env.update(
        GATEWAY_ADMIN_TOKEN=ADMIN,
        GATEWAY_LOG_FORMAT="text",
        GATEWAY_MAX_CALLS="4",
        GATEWAY_DRAIN_TIMEOUT_S="60",
        GATEWAY_RECORDS_PATH=str(tmp_path / "calls.sqlite3"),
        GATEWAY_RECORDINGS_DIR=str(tmp_path / "recordings"),
        **extra,
    )
    return env


@contextlib.asynccontextmanager
async def supervised(tmp_path: Path, workers: int = 2) -> AsyncIterator[Supervised]:
    port = free_port()
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--workers", str(workers),
            "--host", "127.0.0.1", "--port", str(port),
            env=_child_env(tmp_path), cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
            stdout=log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            sup = Supervised(url, process, log_path, client)

            async def ready() -> bool:
                assert process.returncode is None, sup.log()
                with contextlib.suppress(httpx.HTTPError):
                    return (await sup.get("/readyz")).status_code == 200
                return False

            await wait_until(ready, 60, what="the supervisor's workers ready", interval=0.1)
            yield sup
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            process.send_signal(signal.SIGTERM)  # the second one: live calls end at once
            try:
                async with asyncio.timeout(20):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


@dataclass
class HandPlacedCall:
    ws: ClientConnection
    codec: TwilioCarrierCodec
    call_sid: str
    stream_worker: int
    webhook_worker: int


@contextlib.asynccontextmanager
async def open_streams(
    sup: Supervised, pids: set[int], at_least: int = 0
) -> AsyncIterator[list[ClientConnection]]:
    """Media websockets until one is open on each worker in ``pids`` and ``at_least`` are
    open (extras included), all closed on exit."""
    opened: list[ClientConnection] = []

    async def covered() -> bool:
        opened.append(await connect(sup.ws_url))
        return pids <= {_ws_worker(ws) for ws in opened} and len(opened) >= at_least

    try:
        await wait_until(covered, 20, what="a media websocket on every worker", interval=0)
        yield opened
    finally:
        for ws in opened:
            await ws.close()


async def place_across(
    sup: Supervised,
    ws: ClientConnection,
    call_sid: str,
    admitted: tuple[int, str] | None = None,
) -> HandPlacedCall:
    """A call whose webhook another worker answered than the one holding ``ws`` (or the
    ``admitted`` worker and token, when the webhook came earlier); returns once the stream's
    worker bound it and the assistant's greeting is arriving."""
    stream_worker = _ws_worker(ws)
    webhook_worker, token = admitted or await sup.admit_on(stream_worker, call_sid)
    codec = TwilioCarrierCodec(f"MZ{call_sid}")
    await ws.send(CONNECTED)
    await ws.send(
        codec.encode(
            start_message(
                stream_sid=codec.stream_sid,
                call_sid=call_sid,
                account_sid="AC1",
                custom_parameters={CALL_TOKEN_PARAM: token, PROFILE_PARAM: NUMBER},
            )
        )
    )
    async with asyncio.timeout(20):
        while json.loads(await ws.recv()).get("event") != "media":
            pass  # the greeting's first audio: bound, upstream session open
    return HandPlacedCall(ws, codec, call_sid, stream_worker, webhook_worker)


async def hang_up(call: HandPlacedCall) -> int | None:
    """The carrier's ``stop``; the close code the gateway answered it with."""
    stop = Stop(call.codec.stream_sid, 1000, call.call_sid, "AC1")
    await call.ws.send(call.codec.encode(stop))
    async with asyncio.timeout(10):
        async for _ in call.ws:
            pass  # until the gateway closes the stream (an abnormal close raises)
    return call.ws.close_code


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples that carry ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples(text).items() if n == name and want <= set(ls))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the tests --------------------------------------------------------------------------------


async def test_tokens_bind_on_any_worker_and_metrics_are_the_totals(tmp_path: Path) -> None:
    async with supervised(tmp_path) as sup:
        pids = await sup.worker_pids()
        # One embedded emulator, in the supervisor, shared by both workers.
        log = sup.log()
        assert log.count("EMBEDDED REALTIME EMULATOR") == 1
        upstreams = {
            line.rsplit("upstream ", 1)[1] for line in log.splitlines() if "listening on" in line
        }
        assert len(upstreams) == 1, log

        async with open_streams(sup, pids) as streams:
            first = {_ws_worker(ws): ws for ws in reversed(streams)}  # the first on each worker
            calls = [
                await place_across(sup, ws, f"CAcross{i}")
                for i, ws in enumerate(first[pid] for pid in sorted(pids))
            ]
            # Each worker bound a call whose token the other one minted.
            assert {c.stream_worker for c in calls} == pids
            assert all(c.webhook_worker != c.stream_worker for c in calls)
            text = (await sup.get("/metrics")).text
            assert metric(text, "gateway_active_calls") == 2

            # Two simulated callers too, wherever they land.
            options = CallOptions(webhook_url=f"{sup.url}/twilio/voice", to_number=NUMBER)
            results = await asyncio.gather(
                *(SimulatedCall([WaitForAnswer(), HangUp()], options).run() for _ in range(2))
            )
            assert all(r.ok for r in results), [(r.failure, r.failure_detail) for r in results]
            for call in calls:
                await hang_up(call)

            # Each worker's own account of what it did, from its admin API.
            finished: dict[int, int] = {}

            async def both_reported() -> bool:
                resp = await sup.get("/admin/calls")
                finished[_worker(resp)] = len(resp.json()["recent"])
                return set(finished) == pids and sum(finished.values()) == 4

            await wait_until(both_reported, 20, what="4 finished calls over both workers")
            assert all(n >= 1 for n in finished.values())
            cpu_before = sum(cpu_seconds(pid) for pid in pids)

            # /metrics, from either worker, is the total over both.
            for _ in range(4):
                text = (await sup.get("/metrics")).text
                assert metric(text, "gateway_calls_total") == 4
                assert (
                    metric(text, "gateway_webhooks_total", result="admitted")
                    == sum(sup.admitted.values()) + 2
                )  # the simulated callers' webhooks
                assert metric(text, "gateway_call_setup_seconds_count") == 4
                assert metric(text, "gateway_active_calls") == 0
            # The CPU is every worker's: more than either worker has spent on its own.
            await wait_until(
                lambda: _cpu_total(sup, cpu_before), 10, what="CPU totals of both workers"
            )


async def _cpu_total(sup: Supervised, at_least: float) -> bool:
    text = (await sup.get("/metrics")).text
    return metric(text, "process_cpu_seconds_total") >= at_least


async def test_sigterm_drains_every_worker_and_exits_when_their_calls_end(
    tmp_path: Path,
) -> None:
    async with supervised(tmp_path) as sup:
        pids = await sup.worker_pids()
        async with open_streams(sup, pids, at_least=3) as streams:
            first = {_ws_worker(ws): ws for ws in reversed(streams)}
            calls = [await place_across(sup, first[pid], f"CAdrain{pid}") for pid in sorted(pids)]
            late = next(ws for ws in streams if all(ws is not c.ws for c in calls))
            for ws in streams:
                if ws is not late and all(ws is not c.ws for c in calls):
                    await ws.close()
            # Admitted by one worker before the drain, its stream starts on the other after.
            admitted = await sup.admit_on(_ws_worker(late), "CAbefore")

            sup.process.send_signal(signal.SIGTERM)
            draining: set[int] = set()

            async def all_draining() -> bool:
                resp = await sup.get("/readyz")
                if resp.status_code == 503:
                    draining.add(_worker(resp))
                return draining == pids

            await wait_until(all_draining, 20, what="both workers draining")
            calls.append(await place_across(sup, late, "CAbefore", admitted))
            # The live calls carry on through the drain, on both workers.
            text = (await sup.get("/metrics")).text
            assert metric(text, "gateway_active_calls") == 3
            assert sup.process.returncode is None
            webhook = await sup.client.post(
                f"{sup.url}/twilio/voice",
                data={"CallSid": "CAlate", "AccountSid": "AC1", "From": "+1", "To": NUMBER},
            )
            assert "<Stream" not in webhook.text  # the fallback only

            # Each ends as the caller hangs up (1000), not cut by the drain.
            assert [await hang_up(call) for call in calls] == [1000, 1000, 1000]
            async with asyncio.timeout(20):  # well before GATEWAY_DRAIN_TIMEOUT_S (60)
                assert await sup.process.wait() == 0
            log = sup.log()
            waiting = re.findall(r"waiting up to 60 s for (\d) live call", log)
            # One worker's count includes the third stream, open but not yet started.
            assert sorted(waiting) == ["1", "2"], log
            assert log.count("stopped (exit code 0)") == 2
            assert "restarting" not in log


async def test_a_worker_that_dies_is_restarted_and_logged(tmp_path: Path) -> None:
    async with supervised(tmp_path) as sup:
        pids = await sup.worker_pids()
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        fresh: set[int] = set()

        async def replaced() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                fresh.add(_worker(await sup.get("/healthz")))
            return len(fresh - pids) == 1

        await wait_until(replaced, 30, what="a new worker in place of the killed one")
        assert f"(pid {victim}) exited with code -9" in sup.log()
        # SIGHUP reaches every worker, the new one included (once it says it is listening,
        # its signal handlers are in place).
        await wait_until(lambda: sup.log().count("listening on") == 3, 10, what="3 starts")
        sup.process.send_signal(signal.SIGHUP)
        await wait_until(
            lambda: sup.log().count("SIGHUP: profiles reloaded") == 2, 10, what="2 reloads"
        )
        # The new worker serves calls.
        options = CallOptions(webhook_url=f"{sup.url}/twilio/voice", to_number=NUMBER)
        result = await SimulatedCall([WaitForAnswer(), HangUp()], options).run()
        assert result.ok, (result.failure, result.failure_detail)
        sup.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await sup.process.wait() == 0
