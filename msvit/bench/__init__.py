"""Training-step benchmark: `python -m msvit.bench --model msvit_cifar_4_384 --device cpu`.

Times full training steps (zero_grad, forward, loss, backward, AdamW step) of a registered model on
random data at its dataset's real input size, and reports the median step time split into forward
(zero_grad + forward + loss), backward and optimizer, images/s, peak memory and the parameter count.

    python -m msvit.bench --model msvit_cifar_4_384 --batch-size 8 --time-step 4 --device cpu
    python -m msvit.bench --all --models msvit_cifar_4_384,qkformer_cifar_4_384 --json
    python -m msvit.bench --model msvit_cifar_4_384 --model-kwargs '{embed_dim: 32, num_heads: 2}'
    python -m msvit.bench --model msvit_cifar_4_384 --batch-size 8 --alternate      # optimised vs reference path
    python -m msvit.bench --model msvit_cifar_4_384 --batch-size 8 --alternate-ssa  # batch-coupled vs per-sample SSA

Peak memory is `torch.cuda.max_memory_allocated()` over the timed steps on CUDA, and the peak
resident set size of the whole process (imports included) on CPU; `--all` therefore runs every
model in a fresh subprocess. `held_mb` is what one more training forward leaves allocated, the
activations kept for backward: CUDA's allocated bytes, or on CPU the heap bytes in use that glibc
counts (exact, where the peak RSS also holds the allocator's cached blocks). From Python:
`benchmark(BenchSettings("msvit_cifar_4_384", batch_size=8))` returns the same dict as `--json` prints.

One module per concern: `settings` holds what a run times and how (`BenchSettings`), `step` times training
steps (`benchmark`), `lif` one LIF neuron's bandwidth, `watch` what
training's firing watch adds to an evaluation forward (`--firing-watch`), `memory`
measures the process's memory, `device` checks the device and names the CPU, `cli` is the command line and its
table.
"""
from .cli import build_parser, child_argv, format_table, main, run_child
from .lif import format_lif, lif_bandwidth
from .memory import held_megabytes, live_bytes_counter
from .settings import BenchSettings
from ..models._inputs import make_batch
from .step import DEFAULT_BATCH, benchmark, check_counts, mixed_precision, train_step
from .watch import firing_watch_cost

__all__ = ["BenchSettings", "DEFAULT_BATCH", "benchmark", "build_parser", "check_counts", "child_argv", "format_lif",
           "format_table", "firing_watch_cost", "held_megabytes", "lif_bandwidth", "live_bytes_counter", "main", "make_batch", "mixed_precision",
           "run_child", "train_step"]
