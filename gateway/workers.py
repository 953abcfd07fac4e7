"""``gateway serve --workers N``: N gateway processes behind one port, under a supervisor.

One gateway process is about one core (aiortc holds the GIL), so a host with several cores runs
several. The supervisor (:func:`supervise`) binds the listening socket once and starts N
workers (``python -m gateway.workers``) that inherit it: the kernel hands each new connection to
one of them. The supervisor itself serves nothing and accepts nothing. It:

- gives every worker the same call-token key, generating one when the operator set neither
  ``GATEWAY_CALL_TOKEN_SECRET`` nor ``TWILIO_AUTH_TOKEN``: Twilio's webhook and its media
  websocket are two connections that may reach different workers;
- runs the embedded Realtime emulator once (when the settings call for it), shared by every
  worker;
- points every worker at one fresh ``PROMETHEUS_MULTIPROC_DIR``, so ``/metrics`` on any worker
  is the total over all of them (:class:`gateway.observability.Metrics`), and clears a dead
  worker's live gauges;
- restarts a worker that exits on its own, after a delay that doubles with each quick death
  (:func:`restart_delay`), and logs it;
- forwards SIGTERM/SIGINT (drain; a second one stops at once) and SIGHUP (reload profiles) to
  every worker, and exits once they all have.

Admission is per worker (``GATEWAY_MAX_CALLS`` each): a call's slot is taken by the worker its
stream binds on (:class:`gateway.admission.Admissions`, ``hold_pending=False``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.multiprocess import mark_process_dead

from gateway.aio import cancel_and_wait
from gateway.observability import MULTIPROC_DIR_ENV
from gateway.serving import bind_socket
from gateway.settings import Settings

log = logging.getLogger("gateway.workers")

FIRST_RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 30.0
# A worker that ran this long before dying is restarted after the first delay again.
STABLE_RUN_S = 60.0
LISTEN_BACKLOG = 2048


def restart_delay(quick_deaths: int) -> float:
    """Seconds to wait before restarting a worker that has died ``quick_deaths`` times in a
    row, each within :data:`STABLE_RUN_S` of its start: 0.5, 1, 2, ... up to 30."""
    if quick_deaths <= 0:
        return 0.0
    return min(MAX_RESTART_DELAY_S, FIRST_RESTART_DELAY_S * 2.0 ** (quick_deaths - 1))


def worker_environment(
    settings: Settings, environ: Mapping[str, str], metrics_dir: str
) -> tuple[dict[str, str], bool]:
    """The environment the workers start with, and whether it carries a generated token key.

    Every worker must verify the tokens every other one mints, so without an operator's key
    (``call_token_key()`` is ``None``) the supervisor makes one for this run.
    """
    env = dict(environ)
    env[MULTIPROC_DIR_ENV] = metrics_dir
    env.pop("prometheus_multiproc_dir", None)
    generated = settings.call_token_key() is None
    if generated:
        env["GATEWAY_CALL_TOKEN_SECRET"] = secrets.token_urlsafe(32)
    return env, generated


@dataclass
class _Slot:
    index: int
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    quick_deaths: int = 0


class Supervisor:
    """Starts, watches and stops the workers; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        sock: socket.socket,
        env: Mapping[str, str],
        metrics_dir: str,
        emulator_url: str | None,
    ) -> None:
        self.settings = settings
        self.sock = sock
        self.env = dict(env)
        self.metrics_dir = metrics_dir
        self.emulator_url = emulator_url
        self.slots = [_Slot(i) for i in range(settings.workers)]
        self.stopping = asyncio.Event()
        self.stop_signals = 0

    async def _spawn(self, slot: _Slot) -> None:
        args = [sys.executable, "-m", "gateway.workers", "--fd", str(self.sock.fileno())]
        args += ["--index", str(slot.index)]
        if self.emulator_url:
            args += ["--emulator-url", self.emulator_url]
        slot.process = await asyncio.create_subprocess_exec(
            *args,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            pass_fds=(self.sock.fileno(),),
            # A Ctrl-C reaches the supervisor only; it forwards one SIGTERM (a second signal
            # delivered straight to a worker would skip its drain).
            start_new_session=True,
        )
        slot.started_at = time.monotonic()
        log.info("worker %d started (pid %d)", slot.index, slot.process.pid)

    def signal_workers(self, sig: signal.Signals) -> None:
        for slot in self.slots:
            process = slot.process
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)

    def on_stop_signal(self) -> None:
        self.stop_signals += 1
        if self.stop_signals == 1:
            log.info("stop signal: draining %d worker(s)", len(self.slots))
        else:
            log.warning("second stop signal: workers end their live calls now")
        self.stopping.set()
        self.signal_workers(signal.SIGTERM)

    async def _keep(self, slot: _Slot) -> None:
        """Run ``slot``'s worker until stopping, restarting it whenever it dies before."""
        while True:
            await self._spawn(slot)
            assert slot.process is not None
            if self.stopping.is_set():
                # The stop signal came while this worker was starting: it missed the forward.
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(signal.SIGTERM)
            code = await slot.process.wait()
            pid = slot.process.pid
            mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]
            if self.stopping.is_set():
                log.info("worker %d (pid %d) stopped (exit code %d)", slot.index, pid, code)
                return
            ran = time.monotonic() - slot.started_at
            slot.quick_deaths = slot.quick_deaths + 1 if ran < STABLE_RUN_S else 1
            delay = restart_delay(slot.quick_deaths)
            log.error(
                "worker %d (pid %d) exited with code %d after %.1f s; restarting it in %.1f s",
                slot.index,
                pid,
                code,
                ran,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():
                return

    async def run(self) -> None:
        """Until every worker has exited after a stop signal."""
        keepers = [
            asyncio.create_task(self._keep(slot), name=f"worker-{slot.index}")
            for slot in self.slots
        ]
        try:
            await asyncio.gather(*keepers)
        finally:
            await cancel_and_wait(*keepers)
            # Never leave a worker behind (the supervisor itself is being cancelled).
            for slot in self.slots:
                if slot.process is not None and slot.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        slot.process.kill()
                    await slot.process.wait()


async def supervise(settings: Settings, *, host: str | None = None, port: int | None = None) -> int:
    """``gateway serve`` with ``settings.workers`` > 1: returns once every worker has stopped."""
    sock = bind_socket(
        settings.host if host is None else host, settings.port if port is None else port
    )
    sock.listen(LISTEN_BACKLOG)
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    loop = asyncio.get_running_loop()
    try:
        env, generated = worker_environment(settings, os.environ, metrics_dir)
        if generated:
            log.info(
                "no GATEWAY_CALL_TOKEN_SECRET or TWILIO_AUTH_TOKEN: the workers share a call-token "
                "key made for this run"
            )
        async with contextlib.AsyncExitStack() as stack:
            emulator_url = await _shared_emulator(settings, stack)
            supervisor = Supervisor(settings, sock, env, metrics_dir, emulator_url)
            installed: list[signal.Signals] = []
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, supervisor.on_stop_signal)
                installed.append(sig)
            loop.add_signal_handler(signal.SIGHUP, supervisor.signal_workers, signal.SIGHUP)
            installed.append(signal.SIGHUP)
            host_, port_ = sock.getsockname()[:2]
            log.info(
                "supervisor (pid %d): %d workers on %s:%d", os.getpid(), len(supervisor.slots),
                host_, port_,
            )  # fmt: skip
            try:
                await supervisor.run()
            finally:
                for sig in installed:
                    loop.remove_signal_handler(sig)
        log.info("every worker stopped")
        return 0
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


async def _shared_emulator(settings: Settings, stack: contextlib.AsyncExitStack) -> str | None:
    """Start the one embedded emulator the workers share, when the settings call for it."""
    if not settings.uses_embedded_emulator:
        return None
    from gateway.emulator.app import create_app as create_emulator
    from gateway.emulator.config import EmulatorConfig
    from gateway.service import EMBEDDED_EMULATOR_KEY, EMULATOR_BANNER
    from gateway.serving import serve_app

    emulator = await stack.enter_async_context(
        serve_app(
            create_emulator(EmulatorConfig(api_key=EMBEDDED_EMULATOR_KEY)),
            host="127.0.0.1",
            port=0,
        )
    )
    url = f"{emulator.url}/v1"
    log.warning(EMULATOR_BANNER, url)
    return url


class _WorkerField(logging.Filter):
    """Tags every record with the worker's number: a ``worker`` key in JSON lines."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker if the supervisor dies (it is in a session of its own)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def worker_main(argv: list[str] | None = None) -> None:
    """``python -m gateway.workers --fd N --index I [--emulator-url URL]``: one worker.

    Started by :class:`Supervisor` only; the settings come from the environment it passes."""
    parser = argparse.ArgumentParser(prog="python -m gateway.workers")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--emulator-url", default=None)
    args = parser.parse_args(argv)
    _die_with_parent()
    # A reload asked for while this worker starts is moot (it reads the profiles file now), and
    # SIGHUP's default action would kill it; serve_forever installs the real handler.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    from gateway.cli import EXIT_CONFIG, settings_or_exit
    from gateway.errors import ConfigError
    from gateway.numbers import ProfileStore
    from gateway.observability import configure_logging
    from gateway.service import WorkerSeat, serve_forever

    settings = settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(args.index))
    try:
        profiles = ProfileStore(settings.profiles_file)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    seat = WorkerSeat(
        index=args.index, socket=socket.socket(fileno=args.fd), emulator_url=args.emulator_url
    )
    asyncio.run(serve_forever(settings, profiles=profiles, worker=seat))


if __name__ == "__main__":
    worker_main()
