"""Firing rates watched while a model trains: measured in each epoch's evaluation pass with the energy meter's
neuron hooks (`EnergyMeter(neurons_only=True)`), logged to TensorBoard (each stage's rate, the network's, and a
histogram of every layer's), and one warning line when spiking layers die: silent over the whole evaluation set,
or firing at nearly every step. Setting `watch_firing: false` turns it off."""
from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np
from torch import nn

from ..energy import EnergyMeter

__all__ = ["FiringWatch", "SATURATED"]

log = logging.getLogger("msvit")

SATURATED = 0.99  # a layer firing at this share of its neuron updates or more passes almost no information
_LISTED = 4       # layer names a warning spells out


class FiringWatch:
    """Wrap the evaluation pass in `measuring()`, then call `read()` on every process (a collective call)
    and `log()` on the main one. Disabled, it measures nothing and `read()` returns None."""

    def __init__(self, model: nn.Module, enabled: bool = True) -> None:
        self.meter = EnergyMeter(model, neurons_only=True) if enabled else None
        self._warned: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    def measuring(self) -> contextlib.AbstractContextManager:
        if self.meter is None:
            return contextlib.nullcontext()
        self.meter.reset()
        return self.meter

    def read(self) -> dict[str, Any] | None:
        """The rates of the last evaluation pass over all processes: `msvit.energy.report.neuron_rates`' dict."""
        return self.meter.firing() if self.meter is not None else None

    def log(self, writer: Any, epoch: int, firing: dict[str, Any] | None) -> None:
        """TensorBoard: firing/network, firing/<stage> and the histogram firing/layers; a warning line when the
        set of silent or saturated layers changes (a layer that stays dead is not repeated every epoch)."""
        if firing is None:
            return
        rates = {name: rate for name, rate in firing["neurons"].items() if rate is not None}
        if writer is not None:
            if firing["firing_rate"] is not None:  # None: no neuron saw an update
                writer.add_scalar("firing/network", firing["firing_rate"], epoch)
            for stage, rate in firing["stage_firing_rates"].items():
                if rate is not None:
                    writer.add_scalar(f"firing/{stage}", rate, epoch)
            if rates:
                writer.add_histogram("firing/layers", np.asarray(list(rates.values())), epoch)
            writer.flush()
        silent = tuple(name for name, rate in rates.items() if rate == 0.0)
        saturated = tuple(name for name, rate in rates.items() if rate >= SATURATED)
        if (silent, saturated) != self._warned and (silent or saturated):
            parts = []
            if silent:
                parts.append(f"{_count(silent)} never fired over the evaluation set ({_names(silent)})")
            if saturated:
                parts.append(f"{_count(saturated)} fired at {SATURATED:.0%} or more of the steps "
                             f"({_names(saturated)})")
            log.warning("warning: epoch %d: of %d spiking layers, %s: such a layer passes almost no information; "
                        "its firing rates are in TensorBoard (firing/)", epoch, len(rates), "; ".join(parts))
        self._warned = (silent, saturated)


def _count(names: tuple[str, ...]) -> str:
    return f"{len(names)} layer{'s' if len(names) > 1 else ''}"


def _names(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
