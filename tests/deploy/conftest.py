"""Shared by the deploy tests: what the gateway's own configuration calls itself."""

from __future__ import annotations

import pytest
from pydantic import AliasChoices

from gateway.settings import Settings


def setting_env_names() -> set[str]:
    """Every environment variable :class:`Settings` reads, derived from the class itself."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(c for c in alias.choices if isinstance(c, str))
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{name}".upper())
    return names


@pytest.fixture(scope="session")
def setting_names() -> set[str]:
    return setting_env_names()
