"""What the programs print: the `msvit` logger (rank 0, stdout or stderr), and `--json` output.

With `--json` stdout holds exactly one JSON object: the work runs inside `stdout_to_stderr(True)`, so its
log lines and libraries' messages go to stderr, and `print_json` writes the result, floats rounded to
6 significant digits.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
from typing import Any

__all__ = ["log", "setup_logging", "stdout_to_stderr", "rounded", "print_json"]

log = logging.getLogger("msvit")
SIGNIFICANT_DIGITS = 6


def setup_logging(is_main: bool) -> None:
    """Lines of the `msvit` logger on the current stdout, from the main process only (others: warnings)."""
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    handler = logging.StreamHandler(sys.stdout)  # the current stdout, also when called again in-process
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]


def stdout_to_stderr(enabled: bool) -> contextlib.AbstractContextManager:
    """With `--json`: while the work runs, whatever it prints (log lines, libraries' messages) goes to stderr,
    so that stdout holds only the JSON object printed afterwards."""
    return contextlib.redirect_stdout(sys.stderr) if enabled else contextlib.nullcontext()


def rounded(value: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """`value` with every float (also inside dicts, lists and tuples) rounded to `digits` significant digits."""
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return value
        return round(value, digits - 1 - math.floor(math.log10(abs(value))))
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def print_json(value: Any) -> None:
    """One JSON object on stdout, floats rounded to 6 significant digits."""
    print(json.dumps(rounded(value)), flush=True)
