"""The ``./dev`` wrapper: the task becomes the process (signals reach the gateway), runs in the
caller's working directory, and keeps stdout for the task's own output."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "dev"

pytestmark = pytest.mark.timeout(60)


def _installed() -> bool:
    """Whether ``./dev`` would start the task at once (no install): true after ``./dev test``."""
    try:
        digest = (ROOT / ".venv" / ".dev-stamp").read_text().split(" ", 1)[0]
    except OSError:
        return False
    return digest == hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


needs_env = pytest.mark.skipif(
    not _installed(), reason="the .venv is not current: run ./dev test (it installs, then tests)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@needs_env
def test_stdout_is_the_tasks_alone_and_relative_paths_are_the_callers(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text('default:\n  greeting: "Hello."\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    done = subprocess.run(
        [sys.executable, str(DEV), "check-config", "mine.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    assert "+ " not in done.stdout  # the wrapper's echo goes to stderr
    assert "mine.yaml" in done.stdout + done.stderr


@needs_env
@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_sigterm_reaches_the_gateway_and_frees_its_port(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(DEV), "emulator", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 40
        while not _listening(port):
            assert proc.poll() is None, "the emulator exited early"
            assert time.monotonic() < deadline, "the emulator never listened"
            time.sleep(0.1)  # a child process: nothing to await on
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert any(arg.endswith(b"gateway") for arg in cmdline), cmdline  # exec'd, not wrapped
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert not _listening(port), "SIGTERM left the port held by an orphan"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
