"""The report as figures (`python -m msvit.energy --plot DIR`): PNGs written through `msvit.plotting`.

- `firing_rates.png`: the output firing rate of every spiking layer in network order, grouped (coloured) by
  stage: the mean over T as bars, each time step as a line. One panel per run.
- `energy.png`: energy per image by stage, split into MAC, AC and attention, total in mJ in the title; the runs
  side by side within each stage.
- `firing_table.png`: QKFormer's Table 4 as a heat map, tensor x stage, one panel per run, one colour scale.

`figure_data(report)` is the one function that takes the numbers from a report; the drawing only reads its
output. Sizes (inches, x `plotting.DPI` for pixels) follow `figure_size` and depend only on the layer, stage and
run counts, so a figure's pixel size is known in advance.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from ..plotting import STAGE_COLOURS, new_figure, save_figure, style
from .readings import stage_of
from .report import KINDS, RATE_ROWS

__all__ = ["figure_data", "figure_size", "write_figures", "FIGURES"]

FIGURES = ("firing_rates", "energy", "firing_table")
KIND_COLOURS = {"MAC": "#C44E52", "AC": "#4C72B0", "attention": "#55A868"}
RUN_HATCHES = ("", "//", "..", "xx", "\\\\", "--")


def figure_data(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers behind each figure, read from one report (`EnergyMeter.report()` / `msvit.energy --json`):

    firing: names (every neuron, network order), stages, rates (the mean over T), per_step (per name, T rates),
    network (the rate of all neurons together);
    energy: stages, by_kind ({MAC, AC, attention: mJ per stage}), energy_mj (the total);
    firing_table: stages, attention (SSA/QKTA/MSSA per stage), keys and labels (QKFormer Table 4's rows that
    the model has), rates (rows x stages; None where a stage lacks the tensor)."""
    names = list(report["neurons"])
    stages = list(report["stages"])
    table = report["firing_rates"]
    rows = [(key, label) for key, label in RATE_ROWS if any(key in entry for entry in table.values())]
    return {
        "firing": dict(names=names, stages=[stage_of(name) for name in names],
                       rates=[report["neurons"][name] for name in names],
                       per_step=[report["neurons_per_step"][name] for name in names], network=report["firing_rate"]),
        "energy": dict(stages=stages, by_kind={kind: [report["stages"][s]["by_kind"][kind] for s in stages]
                                               for kind in KINDS},
                       energy_mj=report["energy_mj"]),
        "firing_table": dict(stages=list(table), attention=[entry["attention"] for entry in table.values()],
                             keys=[key for key, _ in rows], labels=[label for _, label in rows],
                             rates=[[entry.get(key) for entry in table.values()] for key, _ in rows]),
    }


def _stage_colour(stage: str) -> str:
    """patch_embed<i> and stage<i> share colour i."""
    digits = re.findall(r"\d+", stage)
    return STAGE_COLOURS[(int(digits[0]) - 1) % len(STAGE_COLOURS)] if digits else "#777777"


def figure_size(figure: str, data: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """Width and height in inches of `figure` for the runs' `figure_data`:
    firing_rates: width 2 + 0.16 per layer (of the longest run) within [8, 32], height 0.6 + 3.8 per run;
    energy: width 2 + 0.8 per stage and run, at least 6, height 4.5;
    firing_table: width 1.6 + (1.1 per stage + 1.0) per run, height 1.2 + 0.4 per row."""
    runs = len(data)
    if figure == "firing_rates":
        layers = max(len(d["firing"]["names"]) for d in data)
        return min(32.0, max(8.0, 2 + 0.16 * layers)), 0.6 + 3.8 * runs
    if figure == "energy":
        stages = len(_union(d["energy"]["stages"] for d in data))
        return max(6.0, 2 + 0.8 * stages * runs), 4.5
    if figure == "firing_table":
        stages = max(len(d["firing_table"]["stages"]) for d in data)
        rows = max(len(d["firing_table"]["keys"]) for d in data)
        return 1.6 + (1.1 * stages + 1.0) * runs, 1.2 + 0.4 * rows
    raise ValueError(f"unknown figure {figure!r}: one of {', '.join(FIGURES)}")


def _union(lists: Any) -> list[str]:
    return list(dict.fromkeys(item for items in lists for item in items))


def _draw_firing(labels: Sequence[str], data: Sequence[dict[str, Any]]) -> Any:
    from matplotlib import colormaps

    fig = new_figure(figure_size("firing_rates", data), layout="constrained")
    axes = fig.subplots(len(data), 1, squeeze=False)
    top = max([r for d in data for r in d["firing"]["rates"] if r is not None]
              + [r for d in data for steps in d["firing"]["per_step"] for r in (steps or [])] + [0.05])
    for ax, label, d in zip(axes[:, 0], labels, data):
        firing = d["firing"]
        x = range(len(firing["names"]))
        ax.bar(x, [r or 0.0 for r in firing["rates"]], color=[_stage_colour(s) for s in firing["stages"]],
               alpha=0.55, width=0.8, label="mean over T")
        T = max(len(steps or []) for steps in firing["per_step"])
        cmap = colormaps["viridis"]
        for t in range(T):
            ax.plot(x, [steps[t] if steps else None for steps in firing["per_step"]], marker="o", markersize=2.5,
                    linewidth=0.8, color=cmap(t / max(T - 1, 1) * 0.85), label=f"t={t + 1}")
        start = 0
        for i in range(1, len(firing["stages"]) + 1):  # stage boundaries and names
            if i == len(firing["stages"]) or firing["stages"][i] != firing["stages"][start]:
                ax.axvline(i - 0.5, color="#999999", linewidth=0.6, linestyle=":")
                ax.text(start - 0.4, top * 1.06, firing["stages"][start].replace("patch_", ""), ha="left", va="bottom",
                        fontsize=7, color=_stage_colour(firing["stages"][start]))
                start = i
        ax.set_xticks(list(x), [n.split(".", 1)[-1] for n in firing["names"]], rotation=90, fontsize=6)
        ax.set_xlim(-0.7, len(firing["names"]) - 0.3)
        ax.set_ylim(0, top * 1.2)
        ax.set_ylabel("firing rate")
        ax.set_title(_fit(f"{label}: firing rate of every spiking layer (network {_fmt(firing['network'])})",
                          fig.get_figwidth() - 1.5), loc="left")  # the legend takes about 1.5 inches
        ax.grid(axis="x", visible=False)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right upper")
    return fig


def _fit(text: str, inches: float, at: str = ": ") -> str:
    """`text` on one line, or broken after its first `at` when wider than `inches` (about 13 characters of a
    10-point title per inch): a reduced model's label, with its arguments, is long."""
    if len(text) <= 13 * inches or at not in text:
        return text
    head, tail = text.split(at, 1)
    return f"{head}{at.rstrip()}\n{tail}" if at == ": " else f"{head}\n{at.lstrip()}{tail}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _draw_energy(labels: Sequence[str], data: Sequence[dict[str, Any]]) -> Any:
    fig = new_figure(figure_size("energy", data), layout="constrained")
    ax = fig.subplots()
    stages = _union(d["energy"]["stages"] for d in data)
    runs = len(data)
    width = 0.8 / runs
    for r, (label, d) in enumerate(zip(labels, data)):
        energy = d["energy"]
        x = [i - 0.4 + width * (r + 0.5) for i in range(len(stages))]
        bottom = [0.0] * len(stages)
        for kind in KINDS:
            values = dict(zip(energy["stages"], energy["by_kind"][kind]))
            heights = [values.get(stage, 0.0) for stage in stages]
            ax.bar(x, heights, width * 0.92, bottom=bottom, color=KIND_COLOURS[kind],
                   hatch=RUN_HATCHES[r % len(RUN_HATCHES)], edgecolor="white", linewidth=0.4,
                   label=kind if r == 0 else None)
            bottom = [b + h for b, h in zip(bottom, heights)]
        if runs > 1:
            ax.bar([0], [0], color="white", edgecolor="#555555", hatch=RUN_HATCHES[r % len(RUN_HATCHES)],
                   label=label)
    ax.set_xticks(range(len(stages)), stages, rotation=30, ha="right")
    ax.set_ylabel("energy per image (mJ)")
    ax.yaxis.set_major_formatter(lambda value, _: f"{value:.3g}")  # mJ as numbers, no offset or exponent
    ax.legend()
    ax.grid(axis="x", visible=False)
    totals = ", ".join(f"{label} {d['energy']['energy_mj']:.4g} mJ" for label, d in zip(labels, data))
    ax.set_title(f"energy per image by stage: {totals}" if runs > 1 else _fit(
        f"{labels[0]}: energy per image {data[0]['energy']['energy_mj']:.4g} mJ", fig.get_figwidth() - 0.6), loc="left")
    return fig


def _draw_firing_table(labels: Sequence[str], data: Sequence[dict[str, Any]]) -> Any:
    fig = new_figure(figure_size("firing_table", data), layout="constrained")
    axes = fig.subplots(1, len(data), squeeze=False)
    top = max([v for d in data for row in d["firing_table"]["rates"] for v in row if v is not None] + [0.05])
    image = None
    for ax, label, d in zip(axes[0], labels, data):
        table = d["firing_table"]
        grid = [[float("nan") if v is None else v for v in row] for row in table["rates"]]
        image = ax.imshow(grid, cmap="Blues", vmin=0.0, vmax=top, aspect="auto")
        for i, row in enumerate(table["rates"]):
            for j, v in enumerate(row):
                ax.text(j, i, "–" if v is None else f"{v:.3f}", ha="center", va="center", fontsize=8,
                        color="white" if v is not None and v > 0.6 * top else "black")
        ax.set_xticks(range(len(table["stages"])),
                      [f"{s}\n{a}" for s, a in zip(table["stages"], table["attention"])])
        ax.set_yticks(range(len(table["labels"])), table["labels"])
        ax.grid(visible=False)
        ax.set_title(_fit(label, 1.1 * len(table["stages"]) + 0.6, at=" ("), loc="left")
    fig.colorbar(image, ax=list(axes[0]), label="firing rate", shrink=0.8)
    fig.suptitle("firing rates, QKFormer Table 4 layout (mean over each stage's blocks)", fontsize=10)
    return fig


_DRAW = {"firing_rates": _draw_firing, "energy": _draw_energy, "firing_table": _draw_firing_table}


def write_figures(runs: Sequence[tuple[str, dict[str, Any]]], folder: str | Path) -> list[Path]:
    """Draw every figure for the labelled reports `runs` into `folder` (created); returns the PNG paths. The
    caller's matplotlib backend and rcParams are left as they were (`msvit.plotting`)."""
    labels = [label for label, _ in runs]
    data = [figure_data(report) for _, report in runs]
    with style():  # the style applies while the artists are made, not only when saving
        return [save_figure(_DRAW[name](labels, data), Path(folder) / f"{name}.png") for name in FIGURES]
