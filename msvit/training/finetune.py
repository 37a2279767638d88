"""Starting a new run from existing weights (`finetune: PATH`): fine-tuning, transfer to another dataset, another
resolution or another T.

The run is new: its own run folder, a fresh optimizer and schedule, epoch `start_epoch` (0 by default). Only the
weights come from the checkpoint, ours (raw or, with `finetune_ema`, the average) or any layout the release
uses. `read_source` reads and checks them before any data is read; `load_source` puts them in the built model.
What may differ between the checkpoint and the run, each logged in one line: img_size and time_step (no
weight depends on them), num_classes (the head starts anew), batch_coupled_ssa, drop_path_rate, the neuron
backend. Anything else that does not fit (another family or width) is a ConfigError naming the tensors and, for
one of our checkpoints, the model and model_kwargs it was trained with (else the registered models that could take
the checkpoint).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import timm
import torch
from timm.layers import trunc_normal_
from torch import nn

from ..models._checkpoint import CheckpointError, extract_state_dict, read_checkpoint, to_model_keys
from ..errors import ConfigError
from ..models._registry import ALL_ARCHS
from ..config import DEFAULTS
from ..config import architecture_kwargs, model_kwargs, yaml_flow
from ..zoo import create_dataset_model

__all__ = ["FinetuneSource", "read_source", "load_source", "finetune_variants"]

log = logging.getLogger("msvit")
HEAD_STD = 2e-5  # the release's re-initialisation of the head weight (trunc. normal)
# the classifiers: a missing or mis-shaped one starts anew (head_kd: SDT V2's distillation head, which a T=1
# checkpoint trained without distillation lacks; the release's fine-tune loads such a file with strict=False)
_HEADS = ("head.", "head_kd.")
# settings that may differ from the checkpoint's, with what the difference means for the weights
_MAY_DIFFER = {"img_size": "no weight depends on the resolution", "time_step": "no weight depends on T",
               "batch_coupled_ssa": "the same weights, the SSA integrates another way",
               "drop_path_rate": "regularisation only", "neuron_backend": "the same neurons, another kernel"}


@dataclass
class FinetuneSource:
    path: str
    state: dict[str, torch.Tensor]        # the weights, in this package's names
    settings: Mapping[str, Any] | None    # the run settings saved with it (ours), None for the release's
    head: list[str]                       # the head tensors that do not fit and start anew


def finetune_variants(variants: Sequence[str]) -> tuple[str, ...]:
    """The models a dataset folder may fine-tune: its own, then every registered model for the same input
    (images or events), so that an ImageNet model can be transferred to CIFAR."""
    channels = ALL_ARCHS[variants[0]]["in_chans"]
    return tuple(variants) + tuple(n for n, a in ALL_ARCHS.items() if a["in_chans"] == channels and n not in variants)


def read_source(cfg: dict[str, Any], variants: Sequence[str]) -> FinetuneSource:
    """Read `cfg['finetune']` and check its tensors against the run's model (built on the meta device, so
    nothing is allocated; `variants`: the models the folder may fine-tune): every tensor but the head must fit."""
    path = os.path.abspath(cfg["finetune"])
    try:
        checkpoint = read_checkpoint(path)
        saved = extract_state_dict(checkpoint, use_ema=cfg["finetune_ema"])
    except CheckpointError as exc:
        raise CheckpointError(f"--finetune: {exc}") from None
    with torch.device("meta"):
        model = create_dataset_model(cfg, variants)
    state = to_model_keys(model, saved)
    target = model.state_dict()
    head = _head_keys(target)
    misfits = _misfits(state, target, head)
    settings = checkpoint.get("config") if isinstance(checkpoint.get("config"), Mapping) else None
    if misfits:
        problem = f"--finetune {cfg['finetune']} does not fit {cfg['model']}: {'; '.join(misfits)}. "
        if settings is not None and settings.get("model") in ALL_ARCHS:  # ours: it says what it was trained as
            raise ConfigError(problem + _trained_as(settings))
        fitting = _fitting_models(saved, cfg) or ["none of the registered models"]
        raise ConfigError(problem + f"Models whose tensors fit it: {', '.join(fitting)} (choose one with --model)")
    new_head = [k for k in head if k in target and (k not in state or state[k].shape != target[k].shape)]
    return FinetuneSource(path, state, settings, new_head)


def load_source(model: nn.Module, source: FinetuneSource, cfg: Mapping[str, Any]) -> None:
    """Load the checked weights into `model`, start the head anew where it does not fit (or, with
    `finetune_head: reinit`, its weight in any case, as the release does), and log each difference."""
    state = {k: v for k, v in source.state.items() if k not in source.head}
    model.load_state_dict(state, strict=False)
    which = "EMA" if cfg["finetune_ema"] else "raw"
    log.info("finetune: %s weights of %s; a new run (fresh optimizer and schedule, epoch %d)", which,
             source.path, cfg["start_epoch"])
    for line in _differences(source, cfg, model):
        log.info("finetune: %s", line)
    if source.head:
        log.info("finetune: %s initialised anew (not in the checkpoint, or not fitting %d classes)",
                 ", ".join(source.head), model.num_classes)
    classifier = model.get_classifier()
    if cfg["finetune_head"] == "reinit" and hasattr(classifier, "weight"):  # the release's, loaded or not
        trunc_normal_(classifier.weight, std=HEAD_STD)
        log.info("finetune: head.weight re-initialised (trunc. normal, std %g; finetune_head reinit, as the "
                 "release)%s", HEAD_STD, "" if source.head else "; head.bias kept")


def _head_keys(state: Mapping[str, Any]) -> list[str]:
    return [k for k in state if k.startswith(_HEADS)]


def _misfits(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], head: list[str]) -> list[str]:
    """What keeps the checkpoint from fitting, the head aside: missing, unexpected and mis-shaped tensors."""
    missing = [k for k in target if k not in state and k not in head]
    unexpected = [k for k in state if k not in target and not k.startswith(_HEADS)]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in target
              if k in state and k not in head and state[k].shape != target[k].shape]
    return [f"{len(keys)} {label} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)) if keys]


def _trained_as(settings: Mapping[str, Any]) -> str:
    """What one of our checkpoints was trained as (its saved config), and the options that build it."""
    flow = yaml_flow(architecture_kwargs({**DEFAULTS, **settings}))  # {} : the model's own arguments
    return (f"It was trained as {settings['model']} with model_kwargs {flow}: pass --model {settings['model']} "
            f"--model-kwargs \"{flow}\"")


def _fitting_models(state: Mapping[str, torch.Tensor], cfg: Mapping[str, Any]) -> list[str]:
    """The registered models that take `state`: as registered, or with the run's widths (model_kwargs)."""
    widths = {k: v for k, v in model_kwargs(cfg).items()
              if k in ("embed_dim", "num_heads", "depths", "depth", "mlp_ratio")}
    fitting = []
    for name in ALL_ARCHS:
        for kwargs, note in (({}, ""), (widths, " with this run's model_kwargs")):
            try:
                with torch.device("meta"):
                    model = timm.create_model(name, **kwargs)
            except (ValueError, TypeError):  # widths that this family cannot take
                continue
            target = model.state_dict()
            if not _misfits(to_model_keys(model, state), target, _head_keys(target)):
                fitting.append(name + note)
                break
    return fitting


def _differences(source: FinetuneSource, cfg: Mapping[str, Any], model: nn.Module) -> list[str]:
    """One line per setting that differs from the checkpoint's (ours carry their settings)."""
    if source.settings is None:
        return ["the checkpoint carries no settings (the release's layout): its resolution, T and SSA setting "
                "are not known here; the run's are used"]
    saved = source.settings
    now = dict(cfg, drop_path_rate=model.config.get("drop_path_rate"))
    before = dict(saved, drop_path_rate=(saved.get("model_kwargs") or {}).get("drop_path_rate",
                                                                               now["drop_path_rate"]))
    lines = [f"{key} {before.get(key)!r} -> {now.get(key)!r} ({why})" for key, why in _MAY_DIFFER.items()
             if key in before and before.get(key) != now.get(key)]
    if saved.get("num_classes") not in (None, cfg["num_classes"]):
        lines.append(f"num_classes {saved['num_classes']} -> {cfg['num_classes']} (a new head)")
    return lines
