"""The one place that sets up matplotlib: a non-interactive backend (no display needed, safe in job scripts and
worker processes) and one plain style for every figure the package writes (`msvit.energy --plot`,
`python -m msvit.maps`).

Figures are written at a fixed size, `figsize` x `DPI` pixels, with no tight bounding box, so a figure's pixel
size is known before it is drawn.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["DPI", "pyplot", "save_figure", "STAGE_COLOURS"]

DPI = 100
# one colour per stage group (patch embedding and its blocks share it), cycled
STAGE_COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")

_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "savefig.dpi": DPI,
    "figure.dpi": DPI,
}


def pyplot() -> Any:
    """`matplotlib.pyplot` on the Agg backend with the package's style (imported on first use: plotting is
    optional for everything else)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(_STYLE)
    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write `fig` as a PNG at its own size (figsize x DPI pixels), atomically, and close it."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        fig.savefig(partial, format="png", dpi=DPI)
        partial.replace(path)
    finally:
        plt.close(fig)
        partial.unlink(missing_ok=True)
    return path
