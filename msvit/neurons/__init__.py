"""The spiking neuron: the multi-step LIF (`lif`, also IF and parametric LIF), its C kernel for CPUs (`lif_cpu`), its
CuPy kernel for CUDA (`lif_cuda`), the bit-packing of the spikes that layers save for backward (`spike_bits`), the
Dspike surrogate (`surrogates`) and a model's neuron settings (`settings`)."""
from .lif import (BACKENDS, KINDS, TAU, LIF, BackendUnavailableError, cupy_unavailable_reason, implementation,
                  import_spikingjelly, make_surrogate, quiet_spikingjelly, reset_neurons, set_neuron_backend,
                  validate_backend)
from .settings import (NEURON_KEYWORDS, NeuronSettings, Neurons, as_settings, check_neuron_arguments,
                       describe_neurons)
from .surrogates import SURROGATES, Dspike

__all__ = ["LIF", "TAU", "KINDS", "BACKENDS", "SURROGATES", "BackendUnavailableError", "Dspike", "NEURON_KEYWORDS",
           "NeuronSettings", "Neurons", "as_settings", "check_neuron_arguments", "cupy_unavailable_reason",
           "describe_neurons", "implementation", "import_spikingjelly", "make_surrogate", "quiet_spikingjelly",
           "reset_neurons", "set_neuron_backend", "validate_backend"]
