"""The stem's first layer once per static image against once per time step: training steps of one model
alternating in one process, and the bytes each path saves for backward.

    python tools/stem_once_ab.py --model msvit_10_384 --batch-size 2 --threads 2 [--device cuda --amp]

Prints one JSON object: the median step of each path (`once_ms`, `per_step_ms`), their ratio, and the
distinct storages autograd holds for backward after one forward (`once_saved_mb`, `per_step_saved_mb`).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from msvit.bench import DEFAULT_BATCH, make_batch, mixed_precision, train_step  # noqa: E402
from msvit.console import print_json  # noqa: E402
from msvit.layers import PatchEmbed  # noqa: E402
from msvit.models import ARCHS  # noqa: E402


def set_once_per_image(model: nn.Module, once: bool) -> None:
    for module in model.modules():
        if isinstance(module, PatchEmbed):
            module.once_per_image = once


def saved_megabytes(model: nn.Module, inputs: torch.Tensor, autocast: Any) -> float:
    """MiB of the distinct storages that one forward saves for backward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast():
        model(inputs).sum()
    return sum(storages.values()) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="msvit_10_384", choices=sorted(ARCHS))
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--threads", type=int)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    arch = ARCHS[args.model]
    batch = args.batch_size or DEFAULT_BATCH[arch["stem"]]
    model = timm.create_model(args.model).to(device).train()
    inputs, targets = make_batch(arch["stem"], batch, arch["T"], arch["in_chans"], arch["img_size"],
                                 model.num_classes, device)
    autocast, scaler, _ = mixed_precision(device, args.amp, None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    steps: dict[bool, list[float]] = {True: [], False: []}
    for i in range(args.warmup + args.repeats):
        for once in (False, True):
            set_once_per_image(model, once)
            seconds = sum(train_step(model, inputs, targets, optimizer, criterion, autocast, scaler, sync))
            if i >= args.warmup:
                steps[once].append(1000 * seconds)
    saved = {}
    for once in (False, True):
        set_once_per_image(model, once)
        saved[once] = saved_megabytes(model, inputs, autocast)
    once_ms, per_step_ms = statistics.median(steps[True]), statistics.median(steps[False])
    print_json(dict(model=args.model, batch_size=batch, T=arch["T"], device=args.device, amp=args.amp,
                    threads=torch.get_num_threads(), once_ms=once_ms, per_step_ms=per_step_ms,
                    ratio=once_ms / per_step_ms, once_ms_all=steps[True], per_step_ms_all=steps[False],
                    once_saved_mb=saved[True], per_step_saved_mb=saved[False]))


if __name__ == "__main__":
    main()
