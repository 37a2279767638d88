"""Errors caused by the user's input (config, data, checkpoint): the CLIs print them as one line and exit 2."""
from __future__ import annotations

import functools
import importlib
import os
import sys
from typing import Callable, TypeVar

__all__ = ["EXIT_INTERRUPTED", "UserError", "ConfigError", "DataError", "MissingPackageError", "require",
           "user_message", "failure_line", "cli_entry"]

F = TypeVar("F", bound=Callable[..., object])
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a program ended by Ctrl-C (msvit.training.preemption uses it too)


class UserError(Exception):
    """Bad input that the user can fix; its message names the problem and the fix."""


class ConfigError(UserError, ValueError):
    """An unknown key, a value of the wrong type, or a malformed YAML file."""


class DataError(UserError, FileNotFoundError):
    """A dataset folder or archive that is missing or malformed."""


class MissingPackageError(UserError, ImportError):
    """An optional dependency that a command needs is not installed."""


def require(module: str, package: str, extra: str, purpose: str) -> None:
    """Raise a `MissingPackageError` naming `package` and the extra that installs it when `module` cannot be
    imported: the optional dependencies (pyproject.toml's extras) are needed only by some commands."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        install = f'pip install "msvit[{extra}]"'
        if exc.name == module:  # absent (a broken install names another module: say what failed)
            raise MissingPackageError(f"{purpose} needs {package}: {install}") from None
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise MissingPackageError(f"{purpose} needs {package}, which could not be imported ({detail}): "
                                  f"{install}") from None


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


def failure_line(exc: BaseException) -> str:
    """The one line that says how a program ended on `exc`: cli_entry's for a UserError or a Ctrl-C, else the
    last line of the traceback Python prints (type and the message's first line)."""
    if isinstance(exc, UserError):
        return f"error: {user_message(exc)}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def cli_entry(main: F) -> F:
    """Run a command-line `main`: a `UserError` becomes `error: <message>` on stderr and exit code 2, a Ctrl-C
    (KeyboardInterrupt) the line `interrupted` and exit code 130."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {user_message(exc)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:  # Ctrl-C outside a training loop (which saves and stops by itself): one line
            print("interrupted", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # `... --help | head`: the reader left; no traceback for that
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
    return wrapper  # type: ignore[return-value]
