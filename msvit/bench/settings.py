"""The settings of one training-step benchmark (`benchmark(BenchSettings(...))`), field by field; `None` means
the model's default, or for the batch size the recipe's. The checks of these settings live in `step.check_settings`
(they name the command line's flags, which `cli.settings_from_args` maps to these fields)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["BenchSettings"]


@dataclass(frozen=True)
class BenchSettings:
    """What `benchmark` times and how: `warmup` untimed and `repeats` timed training steps of `model_name`.

    Comparisons: `alternate` (reference vs optimised path, with `compile` also the compiled step) and
    `alternate_ssa` (per-sample vs batch-coupled SSA) each time two or three paths on the same model and batch
    in turns in one process, which cancels most of the drift between separate runs; the last path of each
    round is the measured one, reported as the model's."""

    model_name: str
    """A registered model (`msvit.models`): `--model`."""
    batch_size: int | None = None
    """Images per step; None: the recipe's per-GPU batch (CIFAR 64, DVS 16, ImageNet 32). `--batch-size`."""
    T: int | None = None
    """Time steps; None: the model's (4, DVS 16). `--time-step`."""
    device: str = "cpu"
    """'cpu' or 'cuda'. `--device`."""
    backend: str = "auto"
    """The LIF neuron backend (`msvit.neurons.BACKENDS`); the result's `backend` is the one the neurons used,
    `requested_backend` this one. `--backend`."""
    warmup: int = 2
    """Untimed steps first (each a round of every path when alternating). `--warmup`."""
    repeats: int = 5
    """Timed steps; the result holds their medians (milliseconds). `--repeats`."""
    img_size: int | None = None
    """Input size; None: the model's dataset size (32, 128, 224). `--img-size`."""
    model_kwargs: dict[str, Any] | None = field(default=None, hash=False)
    """More arguments of `timm.create_model`, checked as train.py checks them (`config.check_model_kwargs`);
    None: none. `--model-kwargs`."""
    reference: bool = False
    """Time the reference path alone (`msvit.use_reference_implementation(model)`). `--reference`."""
    channels_last: bool = False
    """A channels_last model, and channels_last inputs where they are 4-D. `--channels-last`."""
    compile: bool = False
    """torch.compile the model; its first step, compilation included, is timed apart from the others
    (`compile_s`). If compiling fails, a warning goes to stderr, the eager model is timed and the result holds
    `compile_error`. With `alternate`, each round is a reference step, an optimised eager step and a compiled
    step: the result adds `eager_step_ms`, `speedup` (eager / compiled median) and `speedup_over_reference`
    (reference / compiled). `--compile`."""
    amp: bool = False
    """Autocast: float16 with a GradScaler on CUDA, bfloat16 on CPU. `--amp`."""
    amp_dtype: str | None = None
    """With `amp`: 'float16' or 'bfloat16' instead of the device's default. `--amp-dtype`."""
    threads: int | None = None
    """`torch.set_num_threads` (process-wide, and left so); None: torch's choice. `--threads`."""
    seed: int = 0
    """`torch.manual_seed` before the model and its random batch are made (no flag)."""
    profile_rows: int = 0
    """With more than 0, one more step runs under torch.profiler and the result's `profile` holds its busiest
    operators (by self CUDA time on CUDA, self CPU time on CPU) as a table of this many rows. `--profile`."""
    alternate: bool = False
    """Alternate a reference step and an optimised step each round (`msvit.use_reference_implementation`
    switched in between); the result adds `reference_step_ms`, `speedup` (reference / optimised median),
    `reference_held_mb` and, on CUDA, `reference_peak_memory_mb` (on CPU the peak RSS covers both paths).
    `--alternate`."""
    batch_coupled_ssa: bool | None = None
    """The SSA output neuron along T*B as in the release (True) or per sample (False); None: the model's
    default, the release's batch-coupled SSA. Checked like `model_kwargs`. `--batch-coupled-ssa`."""
    alternate_ssa: bool = False
    """Alternate per-sample and batch-coupled SSA steps (the batch-coupled one is measured, reported as the
    model's); the result adds `per_sample_step_ms`, `coupling_cost` (batch-coupled / per-sample median) and, on
    CUDA, `per_sample_peak_memory_mb`. `--alternate-ssa`."""
    grad_checkpointing: bool = False
    """Recompute each block's activations in backward (`model.set_grad_checkpointing`). `--grad-checkpointing`."""
    compile_mode: str = "default"
    """torch.compile's mode with `compile` ('reduce-overhead': CUDA graphs on GPU). `--compile-mode`."""
