"""``gateway loadtest``: usage errors, and a short self-contained --spawn run (the emulator and
a gateway as real processes) whose thresholds decide the exit status."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.loadtest import cli as loadtest_cli

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give the gateway URL, or --spawn"),
        (["http://127.0.0.1:1", "--spawn"], "give the gateway URL, or --spawn"),
        (["https://gateway.example.com"], "not on this machine"),
        (["http://127.0.0.1:1", "--scenario", "chat"], "unknown scenario 'chat'"),
        (["http://127.0.0.1:1", "--threshold", "speed<=1"], "unknown metric 'speed'"),
        (["--spawn", "--gateway-cpus", "999"], "may use CPUs"),
        (["http://127.0.0.1:1", "--carrier", "vonage"], "--carrier 'vonage'"),
        (["http://127.0.0.1:1", "--workers", "2"], "--workers sets a spawned"),
    ],
)
def test_usage_errors_exit_2_with_a_reason(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["loadtest", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


class _SlowRefusal(BaseHTTPRequestHandler):
    """Answers the webhook with 503 after a second (a call long enough to show progress)."""

    def do_POST(self) -> None:
        time.sleep(1.0)
        self.send_error(503)

    def do_GET(self) -> None:
        self.send_error(404)  # no /metrics

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def slow_refusal() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowRefusal)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_prints_no_progress_lines(
    slow_refusal: str, quiet: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loadtest_cli, "PROGRESS_EVERY_S", 0.1)
    args = ["loadtest", slow_refusal, "--calls", "1", "--scenario", "listen"]
    result = CliRunner().invoke(app, args + ["--quiet"] * quiet)
    assert result.exit_code == 1, result.output  # the call failed: webhook_http_503
    progress = [line for line in result.output.splitlines() if "started 1" in line]
    assert (progress == []) is quiet, result.output


def test_spawned_run_reports_and_gates_on_thresholds(tmp_path: Path) -> None:
    report, rows = tmp_path / "report.json", tmp_path / "calls.csv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENAI_"))}
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "loadtest", "--spawn", "--quiet",
         "--scenario", "listen", "--calls", "2", "--concurrency", "2",
         "--emulator-latency-ms", "100",
         "--threshold", "setup.p95<=5000", "--threshold", "setup.p50<=1",
         "--json", str(report), "--csv", str(rows)],
        capture_output=True, text=True, timeout=100, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr  # setup.p50<=1 ms cannot hold
    summary = json.loads(report.read_text())
    assert summary["calls"]["completed"] == 2, summary["calls"]
    assert summary["passed"] is False
    assert [t["passed"] for t in summary["thresholds"]] == [True, True, False]
    assert summary["latency_ms"]["setup"]["p50"] > 1
    assert summary["gateway"]["cpu_seconds_per_call_minute"] > 0
    assert summary["spawned"]["emulator_latency_ms"] == 100
    assert summary["pacing_lateness_ms"]["p99"] < 100
    with rows.open() as f:
        assert len(list(csv.DictReader(f))) == 2
    assert list((tmp_path / "tmp").iterdir()) == []  # the spawned stack's logs went with it
    assert "thresholds: FAIL" in proc.stdout
    assert "FAIL setup.p50 <= 1" in proc.stdout
