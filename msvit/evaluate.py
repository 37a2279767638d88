"""The evaluation program behind every dataset folder's `test.py`.

    python test.py --checkpoint PATH [--json] [--energy] [--data-dir ...]

Accepts our checkpoints (the model is rebuilt from the run's saved config) and the authors'
(the model comes from the folder's YAML and the command line).
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from .checkpoint import load_checkpoint, read_checkpoint
from .config import parse_args
from .data import build_datasets
from .distributed import cleanup, init_distributed, main_process_first
from .energy import EnergyMeter, format_totals
from .errors import ConfigError, cli_entry
from .train import amp_settings, build_eval_loader, setup_logging
from .engine import evaluate
from .zoo import create_dataset_model

__all__ = ["main", "run", "MODEL_KEYS"]

# Keys that define the architecture: taken from a checkpoint's saved config when it has one.
# num_classes is not among them: it belongs to the dataset evaluated, so a checkpoint trained on
# another dataset fails to load with its head keys listed instead of being scored nonsensically.
MODEL_KEYS = ("model", "model_kwargs", "time_step", "dim", "num_heads", "mlp_ratio")
log = logging.getLogger("msvit")


def run(cfg: dict[str, Any], variants: Sequence[str]) -> dict[str, Any]:
    """Evaluate `cfg['checkpoint']` on the validation set; returns top1, top5 (%), loss and n."""
    if not cfg["checkpoint"]:
        raise ConfigError("no checkpoint given: pass --checkpoint PATH (a best.pth/last.pth of a run, "
                          "or a downloaded model)")
    env = init_distributed()
    setup_logging(env)
    checkpoint = read_checkpoint(cfg["checkpoint"])
    saved = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if isinstance(saved, dict):
        cfg.update({k: saved[k] for k in MODEL_KEYS if k in saved})
    try:
        model = create_dataset_model(cfg, variants)
        load_checkpoint(model, checkpoint)
        model.to(env.device)
        with main_process_first(env):
            _, val_set = build_datasets(cfg, train=False)
        meter = EnergyMeter(model) if cfg["energy"] else contextlib.nullcontext()
        with meter:
            metrics = evaluate(model, build_eval_loader(val_set, cfg, env), env, amp_settings(cfg, env.device))
        energy = meter.totals() if cfg["energy"] else {}  # per image, summed over all processes
    finally:
        cleanup()
    if env.is_main:
        if cfg["json"]:
            print(json.dumps({**{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
                              **energy}))
        else:
            print(f"{cfg['model']} on {cfg['dataset']}: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
                  f"loss {metrics['loss']:.4f}  images {metrics['n']}")
            if energy:
                print(format_totals(energy))
    return {**metrics, **energy}


@cli_entry
def main(config: str | Path, variants: Sequence[str], argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of `<dataset>/test.py`."""
    return run(parse_args(None if argv is None else list(argv), config), variants)
