"""The call core is sans-I/O: it imports no event loop, socket, WebRTC or HTTP library, directly
or through the modules it uses (the parts it is made of included)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

BRIDGE = Path(__file__).resolve().parents[2] / "gateway" / "bridge"
PURE = ["core.py", "machine.py", "control.py", "stats.py"]
IO_LIBRARIES = ("asyncio", "starlette", "fastapi", "aiortc", "httpx", "websockets", "uvicorn")


@pytest.mark.parametrize("module", PURE)
def test_the_core_and_its_parts_import_no_io_library(module: str) -> None:
    tree = ast.parse((BRIDGE / module).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & set(IO_LIBRARIES), f"gateway/bridge/{module}"


def test_importing_the_core_loads_no_socket_webrtc_or_http_library() -> None:
    code = (
        "import sys, gateway.bridge.core; "
        f"print(' '.join(m for m in {IO_LIBRARIES[1:]!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == ""
