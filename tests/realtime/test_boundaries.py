"""The Realtime client stands alone: nothing under ``gateway/realtime/`` imports the gateway's
settings or number profiles (the composition root, :mod:`gateway.upstream`, maps them)."""

from __future__ import annotations

import ast
from pathlib import Path

import gateway.realtime

FORBIDDEN = ("gateway.numbers", "gateway.settings")


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_realtime_imports_neither_settings_nor_profiles() -> None:
    package = Path(gateway.realtime.__file__).parent
    modules = sorted(package.glob("*.py"))
    assert len(modules) > 2
    offending = {
        f"{path.name}: {name}"
        for path in modules
        for name in _imported_modules(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    }
    assert not offending


def test_the_check_sees_type_checking_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from gateway.numbers import Profile\n"
        "import gateway.settings as s\n"
        "from gateway import settings\n"
    )
    assert {"gateway.numbers", "gateway.settings"} <= _imported_modules(sample)
