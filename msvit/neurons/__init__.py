"""The spiking neuron: the multi-step LIF (`lif`), its C kernel for CPUs (`lif_cpu`), its CuPy kernel for CUDA
(`lif_cuda`), and the bit-packing of the spikes that layers save for backward (`spike_bits`)."""
from .lif import (BACKENDS, TAU, LIF, BackendUnavailableError, cupy_unavailable_reason, implementation,
                  import_spikingjelly, quiet_spikingjelly, reset_neurons, set_neuron_backend, validate_backend)

__all__ = ["LIF", "TAU", "BACKENDS", "BackendUnavailableError", "cupy_unavailable_reason", "implementation",
           "import_spikingjelly", "quiet_spikingjelly", "reset_neurons", "set_neuron_backend", "validate_backend"]
