"""Load our checkpoints and the authors' (the MSViT, QKFormer and baseline releases) into the models of this package."""
from __future__ import annotations

import argparse
import os
import re
from typing import Any, Mapping, NamedTuple

import torch
from torch import nn

from ..errors import UserError

__all__ = ["EMA_KEYS", "CheckpointError", "LoadResult", "load_checkpoint", "read_checkpoint", "save_checkpoint",
           "extract_state_dict", "to_native_keys", "to_model_keys", "release_filter"]

# Where a state_dict sits inside a checkpoint dict, in order of preference.
_MODEL_KEYS = ("model", "state_dict", "state_dict_ema", "model_ema")
# Where EMA weights sit: timm's key (ours since 2026-12; timm's --use-ema finds it), the authors', ours before.
EMA_KEYS = ("state_dict_ema", "model_ema", "ema")
# The authors' attribute names -> ours (applied to dotted key segments).
_RENAMES = ((re.compile(r"\.(tssa|ssa)\."), ".attn."),
            (re.compile(r"\.mlp\.mlp([12])_"), r".mlp.fc\1_"))
_PREFIXES = ("module.", "_orig_mod.")
_CHECKPOINT_MAGIC = (b"PK", b"\x80\x02")  # torch.save's zip archive; a legacy (protocol 2) pickle


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read, or whose tensors do not fit the model."""


class LoadResult(NamedTuple):
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]


def read_checkpoint(path: str | os.PathLike) -> Any:
    """`torch.load` with `weights_only=True`, allowing the `argparse.Namespace` the authors store as `args`."""
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder: give a file in it, such as {os.path.join(path, 'best.pth')}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}: check the path")
    allow = getattr(torch.serialization, "safe_globals", None)
    try:
        if allow is None:  # torch < 2.4 has no allow-list context
            return torch.load(path, map_location="cpu", weights_only=True)
        with allow([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's unpickler raises many types (IndexError, KeyError, ...) on junk
        with open(path, "rb") as f:
            head = f.read(2)
        if head not in _CHECKPOINT_MAGIC:
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle): "
                                  f"pass a .pth file, such as a run folder's best.pth") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path} ({first.split('. ')[0]}): the file is damaged or incomplete; "
                              f"use another copy (a run folder holds last.pth and best.pth)") from None


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write atomically: a temporary file in the same folder, flushed to disk, then renamed over `path`.
    A crash mid-write leaves the previous file at `path` intact."""
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(dict(checkpoint), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def extract_state_dict(checkpoint: Mapping[str, Any], use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Unwrap `model` / `state_dict` / `state_dict_ema` (with `use_ema`, the EMA weights, or a CheckpointError
    when there are none), strip `module.`."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"a checkpoint must be a dict, got {type(checkpoint).__name__}")
    state = checkpoint
    bare = all(isinstance(v, torch.Tensor) for v in checkpoint.values())
    if use_ema and (bare or not any(isinstance(checkpoint.get(k), Mapping) for k in EMA_KEYS)):
        held = ("bare weights" if bare else "its run trained without model_ema" if "config" in checkpoint
                else f"keys {', '.join(map(str, list(checkpoint)[:8]))}; EMA sits under {' or '.join(EMA_KEYS)}")
        raise CheckpointError(f"the checkpoint holds no EMA weights ({held}): drop --use-ema / --finetune-ema, "
                              f"or train with --model-ema true")
    if not bare:
        keys = EMA_KEYS if use_ema else _MODEL_KEYS
        found = next((k for k in keys if isinstance(checkpoint.get(k), Mapping)), None)
        if found is None:
            raise CheckpointError(f"no state_dict in checkpoint: expected one of {', '.join(keys)} "
                                  f"among its keys ({', '.join(map(str, list(checkpoint)[:8]))})")
        state = checkpoint[found]
    return _without_prefixes(state)


def _without_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """`state` with the wrappers' key prefixes (`module.` of DDP, `_orig_mod.` of torch.compile) removed."""
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def to_native_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the authors' attribute names (`tssa`, `ssa`, `mlp1_conv`, ...) to this package's."""
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def to_model_keys(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state_dict in `model`'s names and shapes: `to_native_keys`, then the model's own adaptation of its
    release's layout where it has one (the baselines: renames, reshaped 1x1 weights, never-used tensors dropped)."""
    state = to_native_keys(state_dict)
    adapt = getattr(model, "adapt_release_state_dict", None)
    return adapt(state) if adapt is not None else state


def release_filter(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
    """timm's `pretrained_filter_fn` of the registered models: the weights of a file that timm read
    (`pretrained_cfg_overlay=dict(file=PATH)`), in any of the authors' layouts, under `model`'s names."""
    return to_model_keys(model, _without_prefixes(state_dict))


def _listing(label: str, keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
    return f"{len(keys)} {label} ({shown})"


def load_checkpoint(model: nn.Module, path_or_dict: str | os.PathLike | Mapping[str, Any],
                    strict: bool = True, use_ema: bool = False) -> LoadResult:
    """Load a checkpoint file or dict into `model`, in any of the supported layouts.

    Accepts our checkpoints, the authors' (wrapped under `state_dict`, `model` or `state_dict_ema`,
    with or without `module.` prefixes, with their attribute names) and bare state_dicts.
    With `strict=True` any missing, unexpected or mis-shaped key raises `CheckpointError` naming them;
    with `strict=False` the fitting tensors are loaded and the rest reported in the result.
    """
    checkpoint = path_or_dict if isinstance(path_or_dict, Mapping) else read_checkpoint(path_or_dict)
    state = to_model_keys(model, extract_state_dict(checkpoint, use_ema))
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in target if k in state and state[k].shape != target[k].shape]
    if strict and (missing or unexpected or mismatched):
        parts = [_listing(label, keys) for label, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected),
                  ("shape mismatches", mismatched)) if keys]
        name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise CheckpointError(f"checkpoint does not fit {name}: {'; '.join(parts)}. Check the model "
                              f"name and its num_classes/mlp_ratio/embed_dim (--model, --num-classes, --model-kwargs); from "
                              f"Python, load_checkpoint(..., strict=False) loads the tensors that fit")
    fitting = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    model.load_state_dict(fitting, strict=False)
    return LoadResult(missing, unexpected, mismatched)
