"""What every schema module shares: the error type and the choice check (no torch, no Hydra)."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the valid choices."""


def check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of {list(choices)}")
