"""What every entry point shares: a user's mistake (a missing or invalid key, a missing folder, bad data)
ends the command with one line on stderr naming the key, file or episode, and exit status 2; anything
else is a bug and keeps its traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from vla.config.base import ConfigError


def _is_user_error(err: BaseException) -> bool:
    if isinstance(err, ConfigError | FileNotFoundError | OmegaConfBaseException):
        return True
    # The project's own error types (CheckpointError, DataError, ExportError, UnsafePickleError, ...)
    # carry messages written for the user.
    return type(err).__module__.startswith("vla.") and isinstance(err, ValueError | RuntimeError)


def message(err: BaseException) -> str:
    if isinstance(err, MissingMandatoryValue):
        key = err.full_key or "?"
        return f"{key}: required, give {key}=..."
    if isinstance(err, OmegaConfBaseException) and err.full_key:
        return f"{err.full_key}: {str(err.msg).splitlines()[0]}"
    return str(err)


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except Exception as err:
        if not _is_user_error(err):
            raise
        print(f"error: {message(err)}", file=sys.stderr)
        raise SystemExit(2) from None
