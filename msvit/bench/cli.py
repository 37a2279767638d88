"""The command line of `python -m msvit.bench`: its parser, one model, every model in a fresh subprocess
(`--all`), or one LIF neuron (`--lif`), and the results as a table or JSON."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any, Sequence

from ..config import COMPILE_MODES, ArgumentParser, parse_model_kwargs
from ..console import print_json, stdout_to_stderr
from ..errors import UserError, cli_entry
from ..models._registry import ALL_MODEL_NAMES
from ..neurons import BACKENDS
from .device import check_device
from .lif import LIF_DTYPES, LIF_SHAPE, format_lif, lif_bandwidth
from .settings import BenchSettings
from .step import AMP_DTYPES, benchmark, check_counts, check_model_name
from .watch import firing_watch_cost, format_watch_cost

COLUMNS = (("model", "model", "{}"), ("batch", "batch_size", "{}"), ("T", "T", "{}"),
           ("input", "input_shape", "{}"), ("img/s", "images_per_s", "{:.2f}"),
           ("ms/step", "step_ms", "{:.1f}"), ("fwd ms", "forward_ms", "{:.1f}"),
           ("bwd ms", "backward_ms", "{:.1f}"), ("opt ms", "optimizer_ms", "{:.1f}"),
           ("peak MiB", "peak_memory_mb", "{:.0f}"), ("held MiB", "held_mb", "{:.0f}"),
           ("params", "params", "{:,}"))


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """The settings shared by the runs, then one row per model (failed runs show their error)."""
    ok = [r for r in results if "error" not in r]
    lines = []
    if ok:
        r = ok[0]
        flags = [f for f in ("reference", "alternate", "alternate_ssa", "channels_last", "grad_checkpointing", "compile")
                 if r.get(f)]
        flags += [] if r.get("alternate_ssa") else [f"SSA {'batch-coupled' if r['batch_coupled_ssa'] else 'per sample'}"]
        flags += [f"compile mode {r['compile_mode']}"] if r.get("compile_mode") not in (None, "default") else []
        flags += [f"amp {r['amp']}"] if r["amp"] else []
        lines.append(f"device {r['device']} ({r['gpu'] or r['cpu']}, {r['threads']} threads), backend {r['backend']}, "
                     f"torch {r['torch']}, warmup {r['warmup']}, median of {r['repeats']}"
                     + (f", {', '.join(flags)}" if flags else ""))
        lines.append(f"peak memory: {r['memory']}; load average {r['loadavg_before']:.2f} -> {r['loadavg_after']:.2f}")
    columns = COLUMNS
    if ok and ok[0]["device"] == "cpu":  # RSS includes the imports: show what was there before the model
        columns += (("pre-model MiB", "rss_before_model_mb", "{:.0f}"),)
    if ok and ok[0]["compile"]:
        columns += (("compile s", "compile_s", "{:.1f}"),)
    if ok and ok[0]["alternate"]:
        # what the measured path alternated with
        others = ("reference", "eager") if ok[0]["compile"] else ("reference",)
        for other in others:
            columns += ((f"{other} ms/step", f"{other}_step_ms", "{:.1f}"),
                        (f"{other} held MiB", f"{other}_held_mb", "{:.0f}"))
            if ok[0]["device"] == "cuda":
                columns += ((f"{other} peak MiB", f"{other}_peak_memory_mb", "{:.0f}"),)
        columns += (("speed-up", "speedup", "{:.2f}x"),)
        if ok[0]["compile"]:
            columns += (("over reference", "speedup_over_reference", "{:.2f}x"),)
    if ok and ok[0].get("alternate_ssa"):
        columns += (("per-sample ms/step", "per_sample_step_ms", "{:.1f}"),
                    ("coupled/per-sample", "coupling_cost", "{:.3f}x"))
        if ok[0]["device"] == "cuda":
            columns += (("per-sample peak MiB", "per_sample_peak_memory_mb", "{:.0f}"),)
    rows = [[head for head, _, _ in columns]]
    rows += [["-" if r.get(key) is None else fmt.format("x".join(map(str, r[key])) if key == "input_shape"
                                                        else r[key]) for _, key, fmt in columns] for r in ok]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("-" * len(lines[-1]))
    lines += [f"{r['model']}: error: {r['error']}" for r in results if "error" in r]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    summary = sys.modules[__package__].__doc__.split("\n\n")[0]  # the package's, not this module's
    p = ArgumentParser(prog="python -m msvit.bench", description=summary)
    p.add_argument("--model", help=f"one of {', '.join(ALL_MODEL_NAMES)}")
    p.add_argument("--all", action="store_true", help="every registered model, each in a fresh subprocess")
    p.add_argument("--models", help="with --all: only these, comma-separated (implies --all)")
    p.add_argument("--batch-size", type=int, help="default: the recipe's (CIFAR 64, DVS 16, ImageNet 32)")
    p.add_argument("--time-step", "--T", dest="T", type=int, help="time steps; default: the model's (4, DVS 16)")
    p.add_argument("--img-size", type=int, help="default: the model's dataset size (32, 128, 224)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="default: %(default)s")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="LIF neuron backend (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps, median reported (default: %(default)s)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads; default: torch's choice")
    p.add_argument("--model-kwargs", default="{}", help="model arguments as a YAML mapping, checked as train.py "
                   "checks them, e.g. '{embed_dim: 32, num_heads: 2}' (JSON works too)")
    p.add_argument("--batch-coupled-ssa", choices=("true", "false"), help="SSA output neuron along T*B as in the "
                   "release (true, the models' default) or per sample (false)")
    p.add_argument("--reference", action="store_true", help="msvit.use_reference_implementation(model)")
    p.add_argument("--alternate", action="store_true", help="alternate reference and optimised steps (with "
                   "--compile: reference, optimised eager and compiled) in one process and report the speed-ups")
    p.add_argument("--alternate-ssa", action="store_true", help="alternate per-sample and batch-coupled SSA steps "
                   "in one process and report what the coupling costs")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute each block's activations in "
                   "backward (model.set_grad_checkpointing)")
    p.add_argument("--channels-last", action="store_true", help="channels_last model (and 4-D inputs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (eager if it fails)")
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                   help="torch.compile mode with --compile; reduce-overhead: CUDA graphs on GPU")
    p.add_argument("--amp", action="store_true", help="autocast: float16 + GradScaler on CUDA, bfloat16 on CPU")
    p.add_argument("--amp-dtype", choices=tuple(AMP_DTYPES), help="override the --amp dtype")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="profile one more step and print its ROWS busiest operators (not with --all)")
    p.add_argument("--lif", action="store_true", help="time one LIF neuron (forward, backward, CuPy kernels) "
                   "and report its memory bandwidth instead of a model")
    p.add_argument("--lif-shape", default="x".join(map(str, LIF_SHAPE)), help="with --lif: T x neuron dims "
                   "(default: %(default)s)")
    p.add_argument("--lif-dtype", default="float32", choices=tuple(LIF_DTYPES), help="with --lif (default: %(default)s)")
    p.add_argument("--firing-watch", action="store_true", help="time evaluation forwards without and with "
                   "training's firing watch (watch_firing), alternately, instead of training steps")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p


def child_argv(args: argparse.Namespace, model: str) -> list[str]:
    """The command line that benchmarks `model` alone with the settings of `args`, printing JSON."""
    argv = ["--model", model, "--json", "--device", args.device, "--backend", args.backend,
            "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--model-kwargs", args.model_kwargs]
    for dest, flag in (("batch_size", "--batch-size"), ("T", "--time-step"), ("img_size", "--img-size"),
                       ("threads", "--threads"), ("amp_dtype", "--amp-dtype"),
                       ("batch_coupled_ssa", "--batch-coupled-ssa"), ("compile_mode", "--compile-mode")):
        if getattr(args, dest) is not None:
            argv += [flag, str(getattr(args, dest))]
    for flag in ("reference", "alternate", "alternate_ssa", "channels_last", "grad_checkpointing", "compile", "amp"):
        if getattr(args, flag):
            argv.append(f"--{flag.replace('_', '-')}")
    return argv


def run_child(argv: list[str]) -> dict[str, Any]:
    """Benchmark in a fresh interpreter (so the CPU peak RSS is this model's); errors become a dict."""
    proc = subprocess.run([sys.executable, "-m", "msvit.bench", *argv], capture_output=True, text=True)
    sys.stderr.write(proc.stderr)  # its warnings (such as a failed torch.compile) are the user's to see
    model = argv[argv.index("--model") + 1]
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return dict(model=model, error=last.removeprefix("error: "))
    return json.loads(proc.stdout.strip().splitlines()[-1])


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    kwargs = parse_model_kwargs(args.model_kwargs)
    check_counts(args.batch_size, args.warmup, args.repeats, args.threads, args.profile)
    with stdout_to_stderr(args.json):  # with --json, stdout holds the JSON object alone
        result = _run(args, kwargs)
    if args.json:
        print_json(result)
    elif args.lif:
        print(format_lif(result))
    elif args.firing_watch:
        print(format_watch_cost(result))
    else:
        print(format_table(result.get("results", [result])))
        if result.get("profile"):
            print(result["profile"])
    if any("error" in r for r in result.get("results", ())):
        sys.exit(1)


def _run(args: argparse.Namespace, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What `main` measures for `args`: one model's result, {'results': [...]} for --all, or the LIF's."""
    if args.lif:
        try:
            shape = tuple(int(n) for n in args.lif_shape.lower().split("x"))
        except ValueError:
            raise UserError(f"--lif-shape must look like 4x64x192x32x32, got {args.lif_shape!r}") from None
        if len(shape) < 2 or min(shape) < 1:
            raise UserError(f"--lif-shape needs T and at least one positive neuron dimension, got {args.lif_shape!r}")
        return lif_bandwidth(shape, args.device, args.backend, args.lif_dtype, args.warmup, args.repeats,
                             args.reference)
    if args.all or args.models:
        names = args.models.split(",") if args.models else list(ALL_MODEL_NAMES)
        if args.profile:
            raise UserError("--profile times one model; use --model NAME instead of --all")
        for name in names:
            check_model_name(name)
        check_device(args.device, args.backend)
        results = []
        for i, name in enumerate(names, 1):
            print(f"[{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
            results.append(run_child(child_argv(args, name)))
        return {"results": results}
    if not args.model:
        raise UserError(f"give --model NAME or --all; models: {', '.join(ALL_MODEL_NAMES)}")
    if args.firing_watch:
        return firing_watch_cost(args.model, args.batch_size, args.T, args.device, args.backend, args.warmup,
                                 args.repeats, args.img_size, kwargs, args.threads)
    return benchmark(settings_from_args(args, kwargs))


def settings_from_args(args: argparse.Namespace, kwargs: dict[str, Any]) -> BenchSettings:
    """The benchmark settings of the command line `args` (for one model, `args.model`); `kwargs`: its parsed
    `--model-kwargs`."""
    return BenchSettings(
        args.model, batch_size=args.batch_size, T=args.T, device=args.device, backend=args.backend,
        warmup=args.warmup, repeats=args.repeats, img_size=args.img_size, model_kwargs=kwargs,
        reference=args.reference, channels_last=args.channels_last, compile=args.compile, amp=args.amp,
        amp_dtype=args.amp_dtype, threads=args.threads, profile_rows=args.profile, alternate=args.alternate,
        batch_coupled_ssa=None if args.batch_coupled_ssa is None else args.batch_coupled_ssa == "true",
        alternate_ssa=args.alternate_ssa, grad_checkpointing=args.grad_checkpointing,
        compile_mode=args.compile_mode)
