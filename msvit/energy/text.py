"""The report as text: the layer, stage and firing tables that `python -m msvit.energy` prints, and the lines
`test.py --energy` prints."""
from __future__ import annotations

import json
from typing import Any

from .report import RATE_ROWS

__all__ = ["format_report", "format_totals", "format_firing", "model_label"]


def model_label(report: dict[str, Any]) -> str:
    """The report's model as the text and the figures name it: the registered name, followed by the arguments
    that changed it (`report['model_kwargs']`) when there are any, so a reduced model is not taken for the full
    one: 'msvit_cifar_4_384 (embed_dim 32, depths [1, 1, 1])'."""
    kwargs = report.get("model_kwargs") or {}
    args = ", ".join(f"{key} {value if isinstance(value, str) else json.dumps(value)}"
                     for key, value in kwargs.items())
    return f"{report['model']} ({args})" if args else str(report["model"])


def _si(value: float | None) -> str:
    if value is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.4g}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _steps(values: list[float] | None) -> str:
    """Rates per time step, 't1 t2 ...' with 3 decimals."""
    return "-" if values is None else " ".join(f"{v:.3f}" for v in values)


def format_totals(totals: dict[str, Any]) -> str:
    """One line: energy per image, MACs and SOPs per image."""
    line = (f"energy {totals['energy_mj']:.4g} mJ/image  (MACs {_si(totals['mac_flops'])}, "
            f"SOPs {_si(totals['sops'])} per image")
    if "e_mac_pj" in totals:
        line += f"; E_MAC {totals['e_mac_pj']:g} pJ, E_AC {totals['e_ac_pj']:g} pJ"
    return line + ")"


def format_firing(report: dict[str, Any]) -> str:
    """Every neuron's output firing rate, the mean over T and each time step, then each stage's and the
    network's (all spikes over all neuron updates)."""
    names = list(report["neurons"])
    width = max([len(name) for name in names] + [len("neuron")])
    T = max([len(steps or []) for steps in report["neurons_per_step"].values()] + [1])
    steps = f"per step t=1..{T}"
    header = f"{'neuron':<{width}}  {'rate':>6}  {steps}"
    lines = ["firing rate of every spiking layer (its output spikes)", header, "-" * len(header)]
    for name in names:
        lines.append(f"{name:<{width}}  {_rate(report['neurons'][name]):>6}  "
                     f"{_steps(report['neurons_per_step'][name])}")
    lines.append("-" * len(header))
    for stage, rate in report["stage_firing_rates"].items():
        lines.append(f"{stage:<{width}}  {_rate(rate):>6}")
    lines.append(f"{'network':<{width}}  {_rate(report['firing_rate']):>6}")
    return "\n".join(lines)


def _table4(table: dict[str, Any], per_step: bool) -> list[str]:
    columns = [f"{stage} ({entry['attention']}, {entry['blocks']})" for stage, entry in table.items()]
    cells = {key: [_steps(entry["per_step"].get(key)) if per_step else _rate(entry.get(key))
                   for entry in table.values()] for key, _ in RATE_ROWS}
    col = max(len(c) for c in columns + [cell for row in cells.values() for cell in row])
    label = max(len(text) for _, text in RATE_ROWS)
    title = ("firing rates per time step (the same table, t=1..T)" if per_step
             else "firing rates (QKFormer Table 4 layout; mean over the blocks of each stage)")
    lines = ["", title, f"{'':<{label}}  " + "  ".join(f"{c:>{col}}" for c in columns)]
    for key, text in RATE_ROWS:
        if any(key in entry for entry in table.values()):
            lines.append(f"{text:<{label}}  " + "  ".join(f"{cell:>{col}}" for cell in cells[key]))
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The report as readable tables: layers, stages and total, the firing rates (QKFormer Table 4) as means
    and per time step, and every neuron's rate."""
    lines = []
    title = f"{model_label(report)}: " if report.get("model") else ""
    ssa = ("" if "batch_coupled_ssa" not in report
           else f", SSA {'batch-coupled' if report['batch_coupled_ssa'] else 'per sample'}")
    lines.append(f"{title}energy per image over {report['images']} images, T={report['T']}{ssa}, "
                 f"E_MAC {report['e_mac_pj']:g} pJ, E_AC {report['e_ac_pj']:g} pJ")
    width = max([len(layer["name"]) for layer in report["layers"]] + [len("layer")])
    header = (f"{'layer':<{width}}  {'kind':<9}  {'in rate':>7}  {'FLOPs/step':>10}  {'MACs/SOPs':>10}  {'mJ':>10}  "
              f"in rate per step")
    lines += ["", header, "-" * len(header)]
    for layer in report["layers"]:
        ops = layer["mac_flops"] if layer["kind"] == "MAC" else layer["sops"]
        lines.append(f"{layer['name']:<{width}}  {layer['kind']:<9}  {_rate(layer['firing_rate']):>7}  "
                     f"{_si(layer['flops']):>10}  {_si(ops):>10}  {layer['energy_mj']:>10.4g}  "
                     f"{_steps(layer['firing_rate_per_step']) if layer['firing_rate_per_step'] else ''}".rstrip())
    header = f"{'stage':<14}  {'MACs':>10}  {'SOPs':>10}  {'mJ':>10}"
    lines += ["", header, "-" * len(header)]
    for stage, values in list(report["stages"].items()) + [("total", report)]:
        if stage == "total":
            lines.append("-" * len(header))
        lines.append(f"{stage:<14}  {_si(values['mac_flops']):>10}  {_si(values['sops']):>10}  "
                     f"{values['energy_mj']:>10.4g}")
    if report["firing_rates"]:
        lines += _table4(report["firing_rates"], per_step=False) + _table4(report["firing_rates"], per_step=True)
    lines += ["", format_firing(report)]
    if report.get("unmetered"):
        lines += ["", "not metered (unknown to the energy model): " + ", ".join(report["unmetered"])]
    lines += ["", format_totals(report)]
    return "\n".join(lines)
