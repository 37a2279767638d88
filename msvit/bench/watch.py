"""What training's firing watch costs (`python -m msvit.bench --model M --firing-watch`): evaluation forwards of
one model, timed alternately without and with the watch's neuron hooks in one process (which cancels most of a
busy machine's drift), and the one read of the rates that ends an evaluation pass."""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any

import torch

from ..training.firing_watch import FiringWatch
from .device import check_device, cpu_name
from ..models._inputs import make_batch
from .step import DEFAULT_BATCH, check_counts, check_model_name, create_bench_model

__all__ = ["firing_watch_cost", "format_watch_cost"]


def firing_watch_cost(model_name: str, batch_size: int | None = None, T: int | None = None, device: str = "cpu",
                      backend: str = "auto", warmup: int = 2, repeats: int = 5, img_size: int | None = None,
                      model_kwargs: dict[str, Any] | None = None, threads: int | None = None,
                      seed: int = 0) -> dict[str, Any]:
    """Median milliseconds of an evaluation forward (no_grad, eval mode) without (`plain_ms`) and with the
    watch (`watched_ms`), over `repeats` rounds that run both in turns (which goes first alternates), their
    the median of the rounds' ratios minus one (`overhead`; `rounds_ms` holds each round's pair), and the time
    of the read that follows each evaluation pass (`read_ms`)."""
    check_model_name(model_name)
    check_device(device, backend)
    check_counts(batch_size, warmup, repeats, threads)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dev = torch.device(device)
    model, arch = create_bench_model(model_name, T, img_size, backend, model_kwargs)
    batch_size = batch_size or DEFAULT_BATCH[arch["stem"]]
    model.to(dev).eval()
    inputs, _ = make_batch(arch["stem"], batch_size, arch["T"], arch["in_chans"], arch["img_size"],
                           model.num_classes, dev)
    watch = FiringWatch(model)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def forward(watched: bool) -> float:
        sync()
        start = time.perf_counter()
        with torch.no_grad(), (watch.measuring() if watched else contextlib.nullcontext()):
            model(inputs)
        sync()
        return (time.perf_counter() - start) * 1e3

    times: dict[bool, list[float]] = {False: [], True: []}
    reads = []
    for i in range(warmup + repeats):
        for watched in ((False, True) if i % 2 == 0 else (True, False)):
            ms = forward(watched)
            if i >= warmup:
                times[watched].append(ms)
        start = time.perf_counter()
        watch.read()
        if i >= warmup:
            reads.append((time.perf_counter() - start) * 1e3)
    plain, watched = statistics.median(times[False]), statistics.median(times[True])
    # the median of each round's ratio: the two forwards of a round share the machine's state of the moment
    overhead = statistics.median(w / p for w, p in zip(times[True], times[False])) - 1.0
    return dict(model=model_name, batch_size=batch_size, T=arch["T"], img_size=arch["img_size"], device=device,
                cpu=cpu_name() if device == "cpu" else None, threads=torch.get_num_threads(), repeats=repeats,
                plain_ms=plain, watched_ms=watched, overhead=overhead,
                rounds_ms=[[p, w] for p, w in zip(times[False], times[True])],
                read_ms=statistics.median(reads), neurons=len(watch.meter.neurons))


def format_watch_cost(result: dict[str, Any]) -> str:
    """One line: the two medians and the overhead."""
    return (f"{result['model']} batch {result['batch_size']} T {result['T']} on {result['device']}: evaluation "
            f"forward {result['plain_ms']:.1f} ms, with the firing watch {result['watched_ms']:.1f} ms "
            f"(median ratio {result['overhead']:+.1%}; {result['neurons']} neurons hooked); reading the rates after the pass "
            f"{result['read_ms']:.2f} ms (median of {result['repeats']} alternating rounds)")
