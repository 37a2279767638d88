"""The one place that sets up matplotlib for the figures the package writes (`msvit.energy --plot`,
`python -m msvit.maps`): one plain style, applied only while a figure is drawn and saved.

Figures are `matplotlib.figure.Figure` objects, never pyplot's: no backend is chosen, no figure is registered
with pyplot, and the style is a `matplotlib.rc_context`, so a caller's backend and rcParams (a notebook's) are
as they were after the call. Saving a PNG attaches the Agg canvas to that figure alone.

Figures are written at a fixed size, `figsize` x `DPI` pixels, with no tight bounding box, so a figure's pixel
size is known before it is drawn. matplotlib is optional (`pip install "msvit[figures]"`): `require_matplotlib`
turns its absence into one `error: ...` line.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from .errors import require

__all__ = ["DPI", "new_figure", "require_matplotlib", "save_figure", "style", "STAGE_COLOURS"]

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


def require_matplotlib(purpose: str = "drawing figures") -> None:
    """Raise a `MissingPackageError` (one line, exit 2 in the CLIs) when matplotlib is not installed."""
    require("matplotlib", "matplotlib", "figures", purpose)


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The package's figure style for the duration of the block (drawing and saving): rcParams are restored on
    exit, whatever the caller had set."""
    require_matplotlib()
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        yield


def new_figure(figsize: tuple[float, float], **kwargs: Any) -> Any:
    """A `matplotlib.figure.Figure` of `figsize` inches at `DPI` (kwargs: e.g. layout="constrained"), outside
    pyplot; call it inside `style()`."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=DPI, **kwargs)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write `fig` as a PNG at its own size (figsize x DPI pixels), atomically, in the package's style."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with style():
            fig.savefig(partial, format="png", dpi=DPI)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path
