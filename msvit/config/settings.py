"""Every training and evaluation setting: its default, --help group and description (`SETTINGS`), its accepted
types where the default does not say (`TYPES`), choices, minimums, and the key lists that other modules share.

`checks.py` checks values against this table; `parse.py` reads recipes and command lines with it.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ..neurons import BACKENDS

__all__ = ["SETTINGS", "DEFAULTS", "GROUPS", "TYPES", "CHOICES", "MINIMUM", "COMPILE_MODES", "MODEL_KEYS",
           "NETWORK_KEYS", "NO_EFFECT", "ALIASES", "Setting"]

# Keys that define the network: test.py and msvit.energy take them from a checkpoint's saved config.
# num_classes is not among them: it belongs to the dataset evaluated, so a checkpoint trained on
# another dataset fails to load with its head keys listed instead of being scored nonsensically.
MODEL_KEYS = ("model", "model_kwargs", "time_step", "dim", "num_heads", "mlp_ratio", "batch_coupled_ssa")

# settings a resumed run may not change: they define the network, which samples train and evaluate, or (layer_decay)
# the optimizer's parameter groups that the checkpoint holds
NETWORK_KEYS = ("dataset", "model", "model_kwargs", "num_classes", "time_step", "batch_coupled_ssa", "seed",
                "dim", "num_heads", "mlp_ratio", "layer_decay")

class Setting(NamedTuple):
    default: Any
    group: str   # one of GROUPS: where --help lists it
    help: str    # one line for --help


GROUPS = ("model", "data", "optimisation", "schedule", "augmentation", "run", "fine-tuning", "distillation",
          "evaluation")
NO_EFFECT = "(legacy: accepted, no effect)"  # keys of the authors' recipes that nothing reads

# Every setting: its default, its --help group and its description, in --help order.
SETTINGS: dict[str, Setting] = {
    "model": Setting(None, "model", "registered model; the folder's model.py lists those that suit its dataset"),
    "model_kwargs": Setting({}, "model", "more model arguments, a YAML mapping checked against the model, e.g. "
                            "{embed_dim: 192, num_heads: 4, depths: [1, 1, 1]}; wins over dim/num_heads/mlp_ratio"),
    "num_classes": Setting(None, "model", "classifier outputs; null: the dataset's class count (an ImageFolder's: its class "
                         "folders)"),
    "time_step": Setting(4, "model", "T: time steps the network runs each input for (DVS: frames per sample)"),
    "batch_coupled_ssa": Setting(True, "model", "SSA's output neuron integrates along T*B as in the authors' "
                                 "release (true) or per sample (false)"),
    "neuron_backend": Setting("auto", "model", "LIF kernels; auto: CuPy for CUDA inputs when it works, else torch"),
    "dim": Setting(None, "model", "legacy spelling of model_kwargs.embed_dim: feeds the model"),
    "num_heads": Setting(None, "model", "legacy spelling of model_kwargs.num_heads: feeds the model"),
    "mlp_ratio": Setting(None, "model", "legacy spelling of model_kwargs.mlp_ratio: feeds the model"),
    "layer": Setting(None, "model", f"the authors' block count {NO_EFFECT}; blocks come from model_kwargs.depths"),
    "depths": Setting(None, "model", f"the authors' depth {NO_EFFECT}; use model_kwargs.depths"),
    "patch_size": Setting(None, "model", f"the authors' patch size {NO_EFFECT}; the model's stem fixes it"),

    "dataset": Setting(None, "data", "which dataset, split and input pipeline"),
    "data_dir": Setting("", "data", "the dataset's folder"),
    "download": Setting(False, "data", "fetch a missing dataset into data_dir (CIFAR, CIFAR10-DVS)"),
    "verify_data": Setting(True, "data", "check downloaded archives and files against their published MD5 sums"),
    "img_size": Setting(None, "data", "input height and width in pixels; null: 224 (digits: 32; DVS: the sensor's 128, another size resizes the frames)"),
    "mean": Setting(None, "data", "per-channel normalisation mean; null: ImageNet's"),
    "std": Setting(None, "data", "per-channel normalisation standard deviation; null: ImageNet's"),
    "crop_pct": Setting(None, "data", "evaluation: centre crop of img_size / crop_pct; null: the release's rule, "
                     "0.875 up to 224 px, 1.0 above"),
    "interpolation": Setting("bicubic", "data", "evaluation: resize interpolation"),
    "workers": Setting(4, "data", "DataLoader worker processes per process; 0: load in the main process"),
    "pin_mem": Setting(True, "data", "page-locked host memory for faster copies to CUDA"),

    "opt": Setting("adamw", "optimisation", "optimizer, any name timm.optim.create_optimizer_v2 takes"),
    "lr": Setting(None, "optimisation", "peak learning rate; null: blr x effective batch / 256"),
    "blr": Setting(None, "optimisation", "base learning rate when lr is null: lr = blr x batch_size x accum_iter "
                   "x processes / 256"),
    "weight_decay": Setting(0.05, "optimisation", "weight decay (not applied to biases and norm parameters)"),
    "opt_eps": Setting(1e-8, "optimisation", "optimizer epsilon (Adam family)"),
    "opt_betas": Setting([0.9, 0.999], "optimisation", "optimizer betas (Adam family)"),
    "momentum": Setting(0.9, "optimisation", "momentum of the optimizers that have one (SGD family)"),
    "clip_grad": Setting(None, "optimisation", "clip the gradient norm to this; null: no clipping"),
    "batch_size": Setting(64, "optimisation", "training batch per process (with the batch-coupled SSA, part of "
                          "the network)"),
    "accum_iter": Setting(1, "optimisation", "batches whose gradients add up to one optimizer update"),
    "smoothing": Setting(0.1, "optimisation", "label smoothing"),
    "tet": Setting(False, "optimisation", "TET loss: the criterion on every time step's logits (msvit.training.losses); "
                   "evaluation averages them"),
    "tet_means": Setting(1.0, "optimisation", "TET: the constant its MSE term pulls the logits towards"),
    "tet_lambda": Setting(0.0, "optimisation", "TET: the weight of the MSE term, in [0, 1]"),
    "sml_temperature": Setting(3.0, "optimisation", "surrogate module learning (a model with side branches, "
                               "STMixer's sml: true; msvit.training.sml): the KL's temperature"),
    "sml_alpha": Setting(0.5, "optimisation", "SML: the weight of each side output's criterion beside the main one"),
    "sml_lambda": Setting(0.9, "optimisation", "SML: loss = lambda x the outputs' symmetric KL + (1 - lambda) x "
                          "their criterion, lambda in [0, 1]"),
    "amp": Setting(True, "optimisation", "mixed precision on CUDA (CPU runs in float32)"),
    "amp_dtype": Setting("float16", "optimisation", "the mixed-precision type"),
    "model_ema": Setting(False, "optimisation", "also keep and evaluate an exponential moving average of the weights"),
    "model_ema_decay": Setting(0.9998, "optimisation", "decay of that average per update"),
    "best_weights": Setting("ema", "optimisation", "with model_ema: the weights whose top-1 chooses best.pth (ema, "
                            "as timm's train.py, or raw)"),
    "layer_decay": Setting(None, "optimisation", "layer-wise learning-rate decay: each parameter group's lr x "
                           "layer_decay^(its depth below the head), groups by the model's group_matcher; null: none "
                           "(the release's 1.0)"),
    "sync_bn": Setting(False, "optimisation", "synchronise BatchNorm statistics across CUDA processes"),

    "sched": Setting("cosine", "schedule", "learning-rate schedule: timm's cosine with warmup"),
    "epochs": Setting(300, "schedule", "length of the cosine in epochs; cooldown_epochs follow"),
    "cooldown_epochs": Setting(0, "schedule", "epochs at min_lr after the cosine"),
    "warmup_epochs": Setting(5, "schedule", "epochs of linear warmup from warmup_lr"),
    "warmup_lr": Setting(1e-5, "schedule", "learning rate the warmup starts from"),
    "warmup_prefix": Setting(False, "schedule", "warm up before the cosine starts (true) or over its first "
                             "epochs (false)"),
    "min_lr": Setting(1e-5, "schedule", "learning rate at the end of the cosine and during the cooldown"),
    "sched_on_updates": Setting(False, "schedule", "step the schedule at every optimizer update, not every epoch"),
    "start_epoch": Setting(0, "schedule", "epoch of the schedule a new run starts at: N trains the tail of the "
                           "schedule, epochs N to the end (the 384 fine-tune: 200 of 210)"),

    "scale": Setting([0.08, 1.0], "augmentation", "random-resized-crop area range"),
    "ratio": Setting([0.75, 1.3333333333], "augmentation", "random-resized-crop aspect-ratio range"),
    "hflip": Setting(0.5, "augmentation", "horizontal flip probability"),
    "color_jitter": Setting(0.0, "augmentation", "colour jitter strength (ignored with aa)"),
    "train_interpolation": Setting("bicubic", "augmentation", "training resize interpolation"),
    "aa": Setting(None, "augmentation", "timm auto-augment policy, e.g. rand-m9-n1-mstd0.4-inc1; null: none"),
    "aa_ops": Setting(None, "augmentation", "RandAugment's operations (timm names); null: timm's full list "
                      "(Spikformer's CIFAR recipe: its five)"),
    "reprob": Setting(0.0, "augmentation", "random-erasing probability"),
    "remode": Setting("pixel", "augmentation", "random-erasing fill"),
    "recount": Setting(1, "augmentation", "random-erasing regions per image"),
    "dvs_aug": Setting(False, "augmentation", "DVS: event-frame augmentation of the training split"),
    "mixup": Setting(0.0, "augmentation", "mixup alpha; 0: off (mixup and cutmix need an even batch_size)"),
    "cutmix": Setting(0.0, "augmentation", "cutmix alpha; 0: off"),
    "cutmix_minmax": Setting(None, "augmentation", "cutmix box size range as image fractions (overrides cutmix)"),
    "mixup_prob": Setting(1.0, "augmentation", "probability that a batch is mixed"),
    "mixup_switch_prob": Setting(0.5, "augmentation", "probability of cutmix instead of mixup when both are on"),
    "mixup_mode": Setting("batch", "augmentation", "mix parameters drawn per batch, pair or element"),
    "mixup_off_epoch": Setting(0, "augmentation", "epoch from which mixup and cutmix stop; 0: never"),

    "experiment": Setting("", "run", "run folder name when output is empty: output/<dataset>/<experiment>-<time>, "
                          "relative to the current directory (default: the model's name)"),
    "output": Setting("", "run", "run folder (config.yaml, log.txt, summary.csv, last.pth, best.pth); empty: "
                      "output/<dataset>/<experiment or model>-<time> under the current directory; made once the "
                      "settings, data and model are checked"),
    "resume": Setting("", "run", "checkpoint to continue, or auto: output's last.pth (a new run when it has none; "
                      "its config.yaml when the run stopped before a checkpoint); changed schedule keys (epochs, "
                      "lr, min_lr, warmup, cooldown) take effect from the resumed position"),
    "seed": Setting(42, "run", "random seed of initialisation, shuffling and augmentation"),
    "threads": Setting(None, "run", "torch intra-op threads per process (torch.set_num_threads); null: torch's "
                       "default (OMP_NUM_THREADS, else one per core); results depend on it (docs/training.md)"),
    "log_interval": Setting(50, "run", "optimizer updates between progress lines (when no progress bar shows)"),
    "checkpoint_interval": Setting(0, "run", "optimizer updates between mid-epoch checkpoints (last.pth); "
                                   "0: at epoch ends only"),
    "channels_last": Setting(False, "run", "channels-last memory format (see docs/benchmarks.md)"),
    "compile": Setting(False, "run", "torch.compile the training forward (test.py: the evaluation forward)"),
    "compile_mode": Setting("default", "run", "torch.compile mode; reduce-overhead adds CUDA graphs on GPU"),
    "grad_checkpointing": Setting(False, "run", "recompute each block's activations in backward instead of storing "
                                                "them: far less memory, about one more forward per step"),
    "watch_firing": Setting(True, "run", "measure the firing rates in each evaluation: TensorBoard firing/, "
                            "summary.csv firing_rate, a warning when layers go silent or saturate"),
    "pack_saved_spikes": Setting(True, "run", "keep the spikes that layers save for backward as bits: the same "
                                              "step in less memory (docs/benchmarks.md)"),

    "finetune": Setting("", "fine-tuning", "start a new run from the weights of this checkpoint (ours or the "
                        "authors'): fresh optimizer and schedule; img_size, time_step, num_classes and more may differ"),
    "finetune_ema": Setting(False, "fine-tuning", "take the checkpoint's EMA weights instead of its raw weights"),
    "finetune_head": Setting("keep", "fine-tuning", "keep: load a head of the same shape; reinit: a fresh head weight "
                             "(trunc. normal, std 2e-5) even then, as the release does; another class count always "
                             "gets a new head"),

    "distillation_type": Setting("none", "distillation", "knowledge distillation from teacher_model, DeiT-style: "
                                 "hard (cross-entropy to the teacher's top class), soft (KL at tau) or none"),
    "teacher_model": Setting(None, "distillation", "the teacher: a timm model name, e.g. "
                             "caformer_b36.sail_in22k_ft_in1k; built with the run's num_classes, frozen, in eval mode"),
    "teacher_checkpoint": Setting("", "distillation", "the teacher's weights (a state dict or a checkpoint holding "
                                  "one); empty: timm's pretrained weights with teacher_pretrained, else none"),
    "teacher_pretrained": Setting(False, "distillation", "let timm download the teacher's pretrained weights"),
    "distillation_alpha": Setting(0.5, "distillation", "loss = (1 - alpha) x the criterion + alpha x the "
                                  "distillation term, alpha in [0, 1]"),
    "distillation_tau": Setting(1.0, "distillation", "soft distillation: the temperature of both softmaxes"),

    "checkpoint": Setting("", "evaluation", "test.py, msvit.energy: the weights to evaluate"),
    "val_batch_size": Setting(None, "evaluation", "evaluation batch per process; null: batch_size"),
    "use_ema": Setting(False, "evaluation", "test.py, msvit.energy: evaluate the checkpoint's EMA weights"),
    "json": Setting(False, "evaluation", "test.py, msvit.energy: print one JSON object on stdout"),
    "energy": Setting(False, "evaluation", "test.py: also estimate the energy per image"),
    "compare_ssa_coupling": Setting(False, "evaluation", "test.py: evaluate again with the other SSA setting and "
                                    "report both"),
}
DEFAULTS: dict[str, Any] = {key: setting.default for key, setting in SETTINGS.items()}

# The accepted types of the keys whose default is None or that accept several types; every other
# key takes the type of its default (a list default: a list of its first element's type).
# `object` accepts anything, `None` accepts null.
TYPES: dict[str, tuple[Any, ...]] = {
    "dataset": (str, None),
    "model": (str, None),
    "num_classes": (int, None),
    "img_size": (int, None),
    "layer": (object,),
    "depths": (object,),
    "patch_size": (object,),
    "dim": (int, None),
    "num_heads": (int, None),
    "mlp_ratio": (float, None),
    "mean": (list[float], None),
    "std": (list[float], None),
    "crop_pct": (float, None),
    "layer_decay": (float, None),
    "aa": (str, None),
    "aa_ops": (list[str], None),
    "lr": (float, None),
    "blr": (float, None),
    "clip_grad": (float, None),
    "val_batch_size": (int, None),
    "threads": (int, None),
    "cutmix_minmax": (list[float], None),
    "teacher_model": (str, None),
}

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": ("cifar10", "cifar100", "imagenet", "dvs128_gesture", "cifar10_dvs", "digits"),
    "neuron_backend": BACKENDS,
    "amp_dtype": ("float16", "bfloat16"),
    "mixup_mode": ("batch", "pair", "elem"),
    "remode": ("pixel", "const", "rand"),
    "sched": ("cosine",),
    "compile_mode": COMPILE_MODES,
    "finetune_head": ("keep", "reinit"),
    "best_weights": ("ema", "raw"),
    "distillation_type": ("none", "hard", "soft"),
}

# The lowest value of integer settings (null, where allowed, means unset and passes).
MINIMUM: dict[str, int] = {
    "batch_size": 1, "val_batch_size": 1, "accum_iter": 1, "time_step": 1, "num_classes": 1, "img_size": 1,
    "workers": 0, "epochs": 1, "cooldown_epochs": 0, "warmup_epochs": 0, "mixup_off_epoch": 0, "log_interval": 1,
    "checkpoint_interval": 0, "start_epoch": 0, "threads": 1,
}

# Values of the authors' recipes that mean one of our choices (their timm-style dataset names).
ALIASES: dict[str, dict[str, str]] = {
    "dataset": {"torch/cifar10": "cifar10", "torch/cifar100": "cifar100"},
}
