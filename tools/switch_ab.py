"""One optimisation of the default path switched on and off: training steps of one model alternating in one
process, and the memory one training forward leaves held for backward.

    python tools/switch_ab.py --switch packed-spikes --model msvit_cifar_4_384 --batch-size 8 --threads 2
    python tools/switch_ab.py --switch stem-once --model msvit_10_384 --batch-size 2 [--device cuda --amp]

Switches: `stem-once`, the stem's first layer once per static image (`PatchEmbed.once_per_image`);
`packed-spikes`, spikes saved for backward as bits (`SpikingTransformer.pack_saved_spikes`).
Prints one JSON object: the median step with the switch on and off (`on_ms`, `off_ms`), their ratio, and the
bytes one training forward leaves held (`on_held_mb`, `off_held_mb`): on CUDA the growth of
`torch.cuda.memory_allocated()`, on CPU that of the live heap bytes glibc reports (`mallinfo2`), which count
every tensor the autograd graph keeps, however it keeps it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import timm
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from msvit.bench import (DEFAULT_BATCH, held_megabytes, live_bytes_counter, make_batch,  # noqa: E402
                         mixed_precision, train_step)
from msvit.console import print_json  # noqa: E402
from msvit.layers import PatchEmbed  # noqa: E402
from msvit.models import ARCHS, SpikingTransformer  # noqa: E402

# switch name -> (module type, attribute) that the default path sets to True
SWITCHES = {"stem-once": (PatchEmbed, "once_per_image"), "packed-spikes": (SpikingTransformer, "pack_saved_spikes")}


def set_switch(model: nn.Module, switch: str, on: bool) -> None:
    kind, attribute = SWITCHES[switch]
    for module in model.modules():
        if isinstance(module, kind):
            setattr(module, attribute, on)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--switch", required=True, choices=sorted(SWITCHES))
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
        for on in (False, True):
            set_switch(model, args.switch, on)
            seconds = sum(train_step(model, inputs, targets, optimizer, criterion, autocast, scaler, sync))
            if i >= args.warmup:
                steps[on].append(1000 * seconds)
    live, held = live_bytes_counter(device), {}

    def forward() -> torch.Tensor:
        with autocast():
            return model(inputs)
    for on in (False, True):
        set_switch(model, args.switch, on)
        held[on] = held_megabytes(forward, live, sync)
    on_ms, off_ms = statistics.median(steps[True]), statistics.median(steps[False])
    print_json(dict(switch=args.switch, model=args.model, batch_size=batch, T=arch["T"], device=args.device,
                    amp=args.amp, threads=torch.get_num_threads(), on_ms=on_ms, off_ms=off_ms, ratio=on_ms / off_ms,
                    on_ms_all=steps[True], off_ms_all=steps[False], on_held_mb=held[True], off_held_mb=held[False]))


if __name__ == "__main__":
    main()
