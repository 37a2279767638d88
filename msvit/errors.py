"""Errors caused by the user's input (config, data, checkpoint): the CLIs print them as one line and exit 2."""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

__all__ = ["UserError", "ConfigError", "DataError", "cli_entry"]

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """Bad input that the user can fix; its message names the problem and the fix."""


class ConfigError(UserError, ValueError):
    """An unknown key, a value of the wrong type, or a malformed YAML file."""


class DataError(UserError, FileNotFoundError):
    """A dataset folder or archive that is missing or malformed."""


def cli_entry(main: F) -> F:
    """Run a command-line `main`: a `UserError` becomes `error: <message>` on stderr and exit code 2."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
    return wrapper  # type: ignore[return-value]
