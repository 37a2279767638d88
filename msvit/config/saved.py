"""Settings saved with a run and restored from its checkpoints: the run's config.yaml, the network a checkpoint
was trained as, and the data settings evaluation takes from it."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..data.registry import dataset_name
from ..errors import ConfigError, UserError
from ..models._registry import ALL_ARCHS
from .settings import DEFAULTS, MODEL_KEYS

__all__ = ["restore_model_settings", "restore_run_settings", "warn_other_dataset", "save_config", "EVAL_MAY_CHANGE",
           "DATA_KEYS"]

_log = logging.getLogger("msvit")


def restore_model_settings(cfg: dict[str, Any], checkpoint: Any, keys: tuple[str, ...] = MODEL_KEYS) -> None:
    """Set `keys` of `cfg` from the config saved in one of our checkpoints (the authors' carry none).

    A checkpoint of ours saved before `batch_coupled_ssa` existed was trained with per-sample SSA, so it
    gets False, said in one log line.
    """
    saved = checkpoint.get("config") if isinstance(checkpoint, Mapping) else None
    if not isinstance(saved, Mapping):
        return
    requested = cfg.get("batch_coupled_ssa")
    cfg.update({k: saved[k] for k in keys if k in saved})
    if "batch_coupled_ssa" not in keys or saved.get("model", "msvit_10_384") not in ALL_ARCHS:  # an ANN: no SSA
        return
    if "batch_coupled_ssa" not in saved:
        cfg["batch_coupled_ssa"] = False
        _log.info("the checkpoint predates the batch_coupled_ssa setting: its SSA output neuron ran per sample, "
                  "so it runs per sample here (batch_coupled_ssa false)")
    elif saved["batch_coupled_ssa"] != requested:
        _log.info("batch_coupled_ssa %s, as the checkpoint was trained (the recipe or command line says %s); "
                  "test.py --compare-ssa-coupling evaluates both", str(saved["batch_coupled_ssa"]).lower(),
                  str(requested).lower())


# what evaluation may change from the run's settings when the command line says so; the rest of MODEL_KEYS is the
# trained network. DATA_KEYS come from the run too unless given: the folder it read, its resolution, its workers.
EVAL_MAY_CHANGE = ("time_step",)
DATA_KEYS = ("data_dir", "verify_data", "workers", "pin_mem", "val_batch_size", "img_size", "mean", "std",
             "crop_pct", "interpolation")


def restore_run_settings(cfg: dict[str, Any], checkpoint: Any, given: tuple[str, ...] | list[str] = ()) -> None:
    """Take the network (MODEL_KEYS) and the data settings (DATA_KEYS) from the config saved in one of our
    checkpoints, except the keys `given` on the command line that evaluation may change, and a null num_classes
    from a run on the same dataset (an ImageFolder's class count). A `--model` given on the command line must be
    registered and, for one of our checkpoints, the one it was trained as (ConfigError)."""
    _check_given_model(cfg, checkpoint, given)
    keys = [k for k in MODEL_KEYS if not (k in given and k in EVAL_MAY_CHANGE)]
    restore_model_settings(cfg, checkpoint, keys=tuple(keys))
    restore_model_settings(cfg, checkpoint, keys=tuple(k for k in DATA_KEYS if k not in given))
    saved = _saved_config(checkpoint) or {}
    if cfg.get("num_classes") is None and saved.get("num_classes") and saved.get("dataset") and cfg.get("dataset") \
            and _dataset_key(saved["dataset"]) == _dataset_key(cfg["dataset"]):
        cfg["num_classes"] = saved["num_classes"]  # an ImageFolder run's count (the imagenet recipes say null)


def _saved_config(checkpoint: Any) -> Mapping[str, Any] | None:
    saved = checkpoint.get("config") if isinstance(checkpoint, Mapping) else None
    return saved if isinstance(saved, Mapping) else None


def _check_given_model(cfg: Mapping[str, Any], checkpoint: Any, given: tuple[str, ...] | list[str]) -> None:
    """Refuse a `--model` that is not registered (naming the closest) or that is not the checkpoint's."""
    if "model" not in given:
        return
    if cfg["model"] not in ALL_ARCHS:
        from .ann import is_ann, unknown_model_name

        if not is_ann(cfg["model"]):
            raise unknown_model_name(cfg["model"], where="--model")
    saved = (_saved_config(checkpoint) or {}).get("model")
    if saved is not None and saved != cfg["model"]:
        raise ConfigError(f"--model {cfg['model']} is not the checkpoint's model: it was trained as {saved}; "
                          f"drop --model (the model comes from the checkpoint), or give a checkpoint of "
                          f"{cfg['model']}")


def warn_other_dataset(cfg: Mapping[str, Any], checkpoint: Any) -> None:
    """Log a warning when one of our checkpoints was trained on another dataset than the one `cfg` evaluates
    (the authors' carry no settings: nothing to compare)."""
    saved = (_saved_config(checkpoint) or {}).get("dataset")
    if saved and cfg.get("dataset") and _dataset_key(saved) != _dataset_key(cfg["dataset"]):
        _log.warning("warning: the checkpoint was trained on %s but runs here on %s, another dataset: its outputs "
                     "are the classes of %s; evaluate it with the test.py of its own dataset's folder", saved,
                     cfg["dataset"], saved)


def _dataset_key(name: str) -> str:
    try:
        return dataset_name(name)
    except UserError:
        return str(name)


def save_config(cfg: dict[str, Any], path: str | Path) -> None:
    """Write the keys of DEFAULTS in `cfg` to `path` as YAML, in DEFAULTS order, atomically
    (a temporary file, then os.replace). `load_config(path)` reads them back unchanged."""
    path = Path(path)
    header = f"# resolved settings (recipe: {cfg.get('config') or 'none'})\n"
    body = yaml.safe_dump({key: cfg[key] for key in DEFAULTS if key in cfg},
                          sort_keys=False, default_flow_style=None)
    tmp = path.with_name(f".{path.name}.tmp")  # open() honours the umask: readable by the group, as last.pth is
    try:
        with tmp.open("w") as f:
            f.write(header + body)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
