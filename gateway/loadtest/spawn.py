"""``gateway loadtest --spawn``: the emulator and a gateway as separate local processes.

A self-contained capacity test needs the system under test in its own process (its CPU is then
its own, read from its ``/metrics``) and the emulator in another, ideally pinned to different
cores so they do not steal from each other. :func:`spawned_stack` starts both with the same
interpreter (``python -m gateway emulator`` / ``python -m gateway serve``) on free loopback
ports, points the gateway at the emulator with a fresh server key and signs calls with a fresh
Twilio auth token (so the webhook and upgrade signatures are checked as in production), waits
until both answer, and on exit stops them with SIGTERM (SIGKILL after a grace period).
Their output goes to log files whose tails are shown if a process dies early; those files, and
the gateway's call records, live in ``log_dir`` or else in a temporary directory that is removed
once both have stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

# gateway.service.WORKER_HEADER (not imported: the load tester stays free of the server's
# dependencies; tests/loadtest/test_spawn.py keeps the two equal).
WORKER_HEADER = "x-gateway-worker"

__all__ = ["SpawnError", "SpawnedStack", "cpu_list", "free_port", "spawned_stack"]


class SpawnError(RuntimeError):
    """A spawned process did not come up; the message carries its last log lines."""


@dataclass(frozen=True, slots=True)
class SpawnedStack:
    gateway_url: str
    emulator_url: str
    api_key: str
    """The emulator's server key (the gateway's ``OPENAI_API_KEY``)."""
    auth_token: str
    gateway_pid: int
    emulator_pid: int
    log_dir: Path


def cpu_list(text: str) -> set[int]:
    """``"0"``, ``"0,2"`` or ``"1-3"`` -> CPU numbers; must exist on this machine."""
    cpus: set[int] = set()
    for part in (p.strip() for p in text.split(",") if p.strip()):
        first, _, last = part.partition("-")
        try:
            lo, hi = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"CPU list {text!r}: {part!r} is not a number or range") from None
        cpus.update(range(lo, hi + 1))
    available = os.sched_getaffinity(0)
    if not cpus or not cpus <= available:
        raise ValueError(f"CPU list {text!r}: this process may use CPUs {sorted(available)}")
    return cpus


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a child process to bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Child:
    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    async def start(
        self, args: Sequence[str], env: Mapping[str, str], cpus: set[int] | None
    ) -> None:
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                *args,
                env=dict(env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C on the tool is ours to forward, not the tty's
            )
        if cpus:
            # Before the interpreter starts threads (aiortc's codec threads inherit it).
            os.sched_setaffinity(self.process.pid, cpus)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    async def wait_ready(
        self, client: httpx.AsyncClient, url: str, timeout_s: float, workers: int = 1
    ) -> None:
        """Until ``url`` answers 200, from ``workers`` distinct worker processes (their
        ``x-gateway-worker`` header) when there are several: a measurement that starts while
        a worker is still starting would count its start-up CPU as the calls'."""
        process = self.process
        assert process is not None
        ready: set[str] = set()
        for _ in range(int(timeout_s / 0.1)):
            if process.returncode is not None:
                raise SpawnError(
                    f"the {self.name} exited with code {process.returncode} while starting:\n"
                    + self.tail()
                )
            with contextlib.suppress(httpx.HTTPError):
                # A fresh connection each time, so the kernel may pick another worker.
                resp = await client.get(url, timeout=1.0, headers={"connection": "close"})
                if resp.status_code == 200:
                    ready.add(resp.headers.get(WORKER_HEADER, ""))
                    if len(ready) >= workers:
                        return
                    continue
            await asyncio.sleep(0.1)
        raise SpawnError(
            f"the {self.name} did not answer {url} within {timeout_s:g} s:\n{self.tail()}"
        )

    async def stop(self, grace_s: float = 10.0) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def spawned_stack(
    *,
    gateway_cpus: set[int] | None = None,
    emulator_cpus: set[int] | None = None,
    emulator_args: Sequence[str] = (),
    gateway_env: Mapping[str, str] | None = None,
    max_calls: int = 100,
    log_dir: Path | None = None,
    start_timeout_s: float = 60.0,
) -> AsyncIterator[SpawnedStack]:
    """Start the emulator, then a gateway bridged to it; stop both on exit.

    ``emulator_args`` go to ``gateway emulator`` (e.g. ``["--latency-ms", "300"]``);
    ``gateway_env`` adds settings for ``gateway serve`` (e.g. ``GATEWAY_LOG_LEVEL``). Give
    ``log_dir`` to keep the logs and call records; the default directory goes with the stack.
    """
    temporary = log_dir is None
    logs = log_dir or Path(tempfile.mkdtemp(prefix="gateway-loadtest-"))
    logs.mkdir(parents=True, exist_ok=True)
    api_key = "sk-loadtest-" + secrets.token_hex(12)
    auth_token = secrets.token_hex(16)
    emulator_port, gateway_port = free_port(), free_port()
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENAI_"))}
    base_env.pop("TWILIO_AUTH_TOKEN", None)
    emulator = _Child("emulator", logs / "emulator.log")
    gateway = _Child("gateway", logs / "gateway.log")
    try:
        await emulator.start(
            ["emulator", "--host", "127.0.0.1", "--port", str(emulator_port),
             "--api-key", api_key, *emulator_args],
            base_env,
            emulator_cpus,
        )  # fmt: skip
        env = {
            **base_env,
            "OPENAI_API_KEY": api_key,
            "GATEWAY_REALTIME_BASE_URL": f"{emulator_url}/v1",
            "TWILIO_AUTH_TOKEN": auth_token,
            "GATEWAY_MAX_CALLS": str(max_calls),
            "GATEWAY_LOG_LEVEL": "warning",
            # The run's call records (and any recordings) stay with its logs, not in the
            # working directory: a load test is not traffic to bill.
            "GATEWAY_RECORDS_PATH": str(logs / "calls.sqlite3"),
            "GATEWAY_RECORDINGS_DIR": str(logs / "recordings"),
            **(gateway_env or {}),
        }
        await gateway.start(
            ["serve", "--host", "127.0.0.1", "--port", str(gateway_port)], env, gateway_cpus
        )
        async with httpx.AsyncClient(trust_env=False) as client:
            await emulator.wait_ready(client, f"{emulator_url}/emulator/stats", start_timeout_s)
            workers = int(env.get("GATEWAY_WORKERS") or 1)
            await gateway.wait_ready(client, f"{gateway_url}/readyz", start_timeout_s, workers)
        assert emulator.process is not None and gateway.process is not None
        yield SpawnedStack(
            gateway_url=gateway_url,
            emulator_url=emulator_url,
            api_key=api_key,
            auth_token=auth_token,
            gateway_pid=gateway.process.pid,
            emulator_pid=emulator.process.pid,
            log_dir=logs,
        )
    finally:
        await gateway.stop()
        await emulator.stop()
        if temporary:
            shutil.rmtree(logs, ignore_errors=True)
