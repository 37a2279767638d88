"""Errors caused by the user's input (config, data, checkpoint): the CLIs print them as one line and exit 2."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable, TypeVar

__all__ = ["UserError", "ConfigError", "DataError", "user_message", "cli_entry"]

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """Bad input that the user can fix; its message names the problem and the fix."""


class ConfigError(UserError, ValueError):
    """An unknown key, a value of the wrong type, or a malformed YAML file."""


class DataError(UserError, FileNotFoundError):
    """A dataset folder or archive that is missing or malformed."""


def user_message(exc: UserError) -> str:
    """The one-line message of `exc`, also when a DataLoader worker raised it.

    torch re-raises a worker's exception in the main process as the same type, with a message that holds the
    worker's whole traceback, ending in the line `<module>.<Type>: <original message>`.
    """
    text = str(exc)
    if "\n" not in text:
        return text
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ in ("__main__", "builtins") else f"{cls.__module__}.{cls.__qualname__}"
    lines = text.splitlines()
    for line in reversed(lines):
        if line.startswith(f"{name}: "):
            return line[len(name) + 2:]
    return " ".join(line.strip() for line in lines if line.strip())


def cli_entry(main: F) -> F:
    """Run a command-line `main`: a `UserError` becomes `error: <message>` on stderr and exit code 2."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {user_message(exc)}", file=sys.stderr)
            sys.exit(2)
        except BrokenPipeError:  # `... --help | head`: the reader left; no traceback for that
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
    return wrapper  # type: ignore[return-value]
