"""The neuron settings of a model, for ablations: one frozen `NeuronSettings` that a model builds from its
constructor keywords (`NEURON_KEYWORDS`) and threads through its layers, which make every neuron with
`settings.make()` (the attention-mask neurons with their own threshold: `settings.make(v_threshold=0.5)`).

The defaults are the releases' neuron (spikingjelly's LIF, tau 2, threshold 1, sigmoid surrogate alpha 4,
detached hard reset); `describe_neurons(model)` says in one line what a built model's neurons are and whether
the fused kernels or spikingjelly's torch loop run them.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, Callable, Mapping

from torch import nn

from ..errors import ConfigError
from .lif import BACKENDS, KINDS, LIF, SURROGATE_ALPHA, TAU, make_surrogate
from .surrogates import DSPIKE_REGION, SURROGATES, Dspike

__all__ = ["NeuronSettings", "Neurons", "NEURON_KEYWORDS", "as_settings", "check_neuron_arguments",
           "describe_neurons"]

DSPIKE_GAMMA = 2.5  # STMixer's


@dataclasses.dataclass(frozen=True)
class NeuronSettings:
    """Every neuron of a model: `kind` ('lif', 'if', 'plif'), `tau` (LIF's time constant, PLIF's initial one;
    IF has none), `v_threshold` (all but the attention-mask neurons, which keep their family's threshold),
    `surrogate` ('sigmoid' with `surrogate_alpha`, or 'dspike' with `surrogate_gamma` on `surrogate_region`),
    `detach_reset`, and the
    kernels' `backend` ('auto', 'cupy', 'torch')."""

    kind: str = "lif"
    tau: float = TAU
    v_threshold: float = 1.0
    surrogate: str = "sigmoid"
    surrogate_alpha: float = SURROGATE_ALPHA
    surrogate_gamma: float = DSPIKE_GAMMA
    surrogate_region: float = DSPIKE_REGION
    detach_reset: bool = True
    backend: str = "auto"

    def __post_init__(self) -> None:
        args = model_keywords(self)
        check_neuron_arguments(args, lambda key: f"{key} {args[key]!r}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NeuronSettings:
        """The settings of a model's `config` (its constructor keywords, `NEURON_KEYWORDS` and `neuron_backend`);
        absent keywords take the defaults."""
        fields = {field: config[key] for key, field in _FIELDS.items() if key in config}
        return cls(**fields)

    def replace(self, **changes: Any) -> NeuronSettings:
        return dataclasses.replace(self, **changes)

    def make(self, v_threshold: float | None = None) -> LIF:
        """A neuron with these settings (`v_threshold`: the attention-mask neurons' own threshold)."""
        return LIF(self.v_threshold if v_threshold is None else v_threshold, self.backend, self.tau,
                   kind=self.kind, surrogate_function=make_surrogate(self.surrogate, self.surrogate_alpha,
                                                                     self.surrogate_gamma, self.surrogate_region),
                   detach_reset=self.detach_reset)


# constructor keyword -> NeuronSettings field
_FIELDS = {"neuron": "kind", "tau": "tau", "v_threshold": "v_threshold", "surrogate": "surrogate",
           "surrogate_alpha": "surrogate_alpha", "surrogate_gamma": "surrogate_gamma",
           "surrogate_region": "surrogate_region", "detach_reset": "detach_reset", "neuron_backend": "backend"}
NEURON_KEYWORDS = ("neuron", "tau", "v_threshold", "surrogate", "surrogate_alpha", "surrogate_gamma",
                   "surrogate_region", "detach_reset")

Neurons = NeuronSettings | str  # what a layer takes: the settings, or a backend name for the releases' neurons


def model_keywords(settings: NeuronSettings) -> dict[str, Any]:
    """`settings` as a model's constructor keywords (`neuron`, `tau`, ..., `neuron_backend`)."""
    return {key: getattr(settings, field) for key, field in _FIELDS.items()}


def as_settings(neurons: Neurons, tau: float | None = None) -> NeuronSettings:
    """A layer's `neurons` argument as settings (a backend name: the releases' neurons on it), with `tau` if given."""
    settings = NeuronSettings(backend=neurons) if isinstance(neurons, str) else neurons
    return settings if tau is None else settings.replace(tau=tau)


def check_neuron_arguments(args: Mapping[str, Any], named: Callable[[str], str]) -> None:
    """Check a model's neuron keywords (those of `NEURON_KEYWORDS` in `args`; raise a one-line ConfigError naming
    the argument with `named`, as the families' `check_arguments` do)."""
    get = {key: args[key] for key in NEURON_KEYWORDS if key in args}.get
    kind = get("neuron", "lif")
    if kind not in KINDS:
        raise ConfigError(f"{named('neuron')} is not a neuron kind; choose one of {', '.join(KINDS)}")
    if kind != "if" and not get("tau", TAU) > 1:
        raise ConfigError(f"{named('tau')} must be greater than 1 (the neurons' time constant)")
    if not get("v_threshold", 1.0) > 0:
        raise ConfigError(f"{named('v_threshold')} must be positive (the neurons' firing threshold)")
    if get("surrogate", "sigmoid") not in SURROGATES:
        raise ConfigError(f"{named('surrogate')} is not a surrogate gradient; choose one of {', '.join(SURROGATES)}")
    for key in ("surrogate_alpha", "surrogate_gamma"):
        if not get(key, 1.0) > 0:
            raise ConfigError(f"{named(key)} must be positive (the surrogate's sharpness)")
    if not get("surrogate_region", 1.0) > 0:
        raise ConfigError(f"{named('surrogate_region')} must be positive (Dspike's half-width around the threshold)")
    if not isinstance(get("detach_reset", True), bool):
        raise ConfigError(f"{named('detach_reset')} must be true or false")
    if args.get("neuron_backend", "auto") not in BACKENDS:
        raise ConfigError(f"{named('neuron_backend')} is not a neuron backend; choose one of {', '.join(BACKENDS)}")


def _values(neurons: list[LIF], read: Callable[[LIF], Any]) -> str:
    """The values `read` takes over `neurons`, the most frequent first: '1 (and 0.5)'."""
    words = [f"{v:g}" if isinstance(v, float) else str(v) for v, _ in Counter(map(read, neurons)).most_common()]
    return words[0] + (f" (and {', '.join(words[1:])})" if len(words) > 1 else "")


def _surrogate_words(m: LIF) -> str:
    fn = m.surrogate_function
    if isinstance(fn, Dspike):
        return f"dspike gamma {fn.gamma:g}" + ("" if fn.region == DSPIKE_REGION else f" region {fn.region:g}")
    return f"sigmoid alpha {fn.alpha:g}" if hasattr(fn, "alpha") else type(fn).__name__


def describe_neurons(model: nn.Module) -> str:
    """One line for a run header: the neurons' kind, tau, thresholds, surrogate and reset, and whether the fused
    kernels or spikingjelly's torch loop run them, e.g. 'neurons: 120 lif, tau 2, threshold 1 (and 0.5),
    surrogate sigmoid alpha 4, detached reset; fused kernels'."""
    neurons = [m for m in model.modules() if isinstance(m, LIF)]
    if not neurons:
        return "neurons: none"
    kinds = _values(neurons, lambda m: m.kind)
    taus = [m for m in neurons if m.kind != "if"]
    tau = f", {'initial ' if kinds == 'plif' else ''}tau {_values(taus, lambda m: float(m.tau))}" if taus else ""
    resets = {bool(m.detach_reset) for m in neurons}
    reset = "detached reset" if resets == {True} else "reset not detached" if resets == {False} else "mixed resets"
    if not all(m.fused for m in neurons):
        path = "spikingjelly's node (reference path)"
    elif all(m.kernels_apply for m in neurons):
        path = "fused kernels"
    else:
        path = "spikingjelly's torch loop (settings outside the fused kernels)"
    return (f"neurons: {len(neurons)} {kinds}{tau}, threshold {_values(neurons, lambda m: float(m.v_threshold))}, "
            f"surrogate {_values(neurons, _surrogate_words)}, {reset}; {path}")
