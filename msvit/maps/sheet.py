"""Drawing of the maps that `msvit.maps.collect_maps` records: one PNG sheet per image (matplotlib via
`msvit.plotting`).

Layout: a header (the caller's title and a legend line), then a grid of equal square cells, one panel each:

- row 1: the input, then each stage's output spike count (summed over channels and T; colourbar);
- per token-attention stage (QKTA, MSSA): one row per head, one column per time step, the binary mask
  (dark = token open), titled e.g. "stage1.0 MSSA head 0 t=1" (t counts from 1) (stage1.0: block 0 of stage 1);
- per SSA stage: one row per head, one column per chosen query token, the q.k scores over the key tokens
  (colourbar), the query token framed in red.

Size rule (pixels, at `plotting.DPI` = 100): width = CELL_W x columns, height = HEADER_H + CELL_H x rows, with
columns = max(1 + stages, T of the token-attention stages, K of the SSA stages) and rows = 1 + the heads of every
stage with attention maps. `sheet_size` computes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..plotting import DPI, new_figure, save_figure, style

__all__ = ["draw_sheet", "input_display", "sheet_size", "CELL_W", "CELL_H", "HEADER_H"]

CELL_W, CELL_H = 190, 175   # pixels of one panel with its two-line title and colourbar
HEADER_H = 70               # pixels of the title and legend lines
# inside a cell, in pixels from its lower left corner: the image axes and the colourbar beside it
_AXES = (25, 10, 118, 118)
_COLOURBAR = (148, 10, 7, 118)
_MASK_COLOURS = ("#e8e8e8", "#27408b")   # closed, open
_TITLE_SIZE = 8


def input_display(x: np.ndarray, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> np.ndarray:
    """The model input of one sample for display: event frames `[T, C, H, W]` -> counts summed over time and
    polarity `[H, W]`; an image `[C, H, W]` -> de-normalised (`x * std + mean` when given), clipped to [0, 1],
    `[H, W, 3]` for three channels, `[H, W]` otherwise (the channel mean)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 4:
        return x.sum(axis=(0, 1))
    if mean is not None and std is not None:
        x = x * np.asarray(std).reshape(-1, 1, 1) + np.asarray(mean).reshape(-1, 1, 1)
    x = np.clip(x, 0.0, 1.0)
    return x.transpose(1, 2, 0) if x.shape[0] == 3 else x.mean(axis=0)


def _grid(maps: dict[str, Any]) -> tuple[int, int]:
    """(rows, columns) of the panel grid of one image's maps."""
    stages = maps["stages"]
    columns, rows = 1 + len(stages), 1
    for stage in stages:
        if "mask" in stage:
            columns, rows = max(columns, stage["mask"].shape[1]), rows + stage["mask"].shape[0]
        elif "scores" in stage:
            columns, rows = max(columns, stage["scores"].shape[1]), rows + stage["scores"].shape[0]
    return rows, columns


def sheet_size(maps: dict[str, Any]) -> tuple[int, int]:
    """(width, height) in pixels of the sheet `draw_sheet` writes for `maps` (the module's size rule)."""
    rows, columns = _grid(maps)
    return CELL_W * columns, HEADER_H + CELL_H * rows


class _Sheet:
    """A figure of fixed size with panels placed by (row, column) in pixel units."""

    def __init__(self, maps: dict[str, Any]) -> None:
        self.width, self.height = sheet_size(maps)
        self.fig = new_figure((self.width / DPI, self.height / DPI))

    def _box(self, row: int, column: int, box: tuple[int, int, int, int]) -> list[float]:
        left, bottom, w, h = box
        x = column * CELL_W + left
        y = self.height - HEADER_H - (row + 1) * CELL_H + bottom
        return [x / self.width, y / self.height, w / self.width, h / self.height]

    def panel(self, row: int, column: int, values: np.ndarray, title: str, colourbar: bool = False,
              **imshow: Any) -> Any:
        """An image panel; with `colourbar` a bar beside it showing the value range."""
        ax = self.fig.add_axes(self._box(row, column, _AXES))
        shown = ax.imshow(values, interpolation="nearest", **imshow)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(True)
        ax.set_title(title, fontsize=_TITLE_SIZE, pad=3)
        if colourbar:
            bar = self.fig.colorbar(shown, cax=self.fig.add_axes(self._box(row, column, _COLOURBAR)))
            bar.ax.tick_params(labelsize=7, length=2, pad=1)
            bar.ax.grid(False)
            from matplotlib.ticker import MaxNLocator

            bar.locator = MaxNLocator(nbins=4, integer=True)
            bar.update_ticks()
        return ax


def _count_range(values: np.ndarray) -> dict[str, float]:
    """imshow's value range for counts: 0 to the maximum (at least 1)."""
    return {"vmin": 0.0, "vmax": max(float(values.max()), 1.0)}


def _legend(maps: dict[str, Any]) -> str:
    parts = ["stage spikes: output of the stage's last block, summed over channels and T"]
    if any("kind" in s for s in maps["stages"]):
        parts.append("stage1.0: block 0 of stage 1")
    if any("mask" in s for s in maps["stages"]):
        parts.append("masks: dark = token open")
    if any("scores" in s for s in maps["stages"]):
        parts.append("SSA: q.k summed over T and the head's channels, red = query token (row, col)")
    return ";  ".join(parts)


def draw_sheet(maps: dict[str, Any], path: str | Path, image: np.ndarray | None = None, title: str = "") -> Path:
    """Write the sheet of one image's `maps` (one entry of `collect_maps`) as a PNG at `path`, at the size
    `sheet_size(maps)`. `image`: the input as displayed (default `input_display(maps['input'])`, without
    de-normalisation); `title`: the header's first line. The caller's matplotlib state is left as it was."""
    with style():  # the style applies while the artists are made, not only when saving
        return save_figure(_draw(maps, image, title), path)


def _draw(maps: dict[str, Any], image: np.ndarray | None, title: str) -> Any:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    sheet = _Sheet(maps)
    fig = sheet.fig
    fig.text(0.5, 1 - 8 / sheet.height, title, ha="center", va="top", fontsize=9, fontweight="bold", wrap=True)
    fig.text(0.5, 1 - 40 / sheet.height, _legend(maps), ha="center", va="top", fontsize=7.5, color="#444444",
             wrap=True)

    frames = np.ndim(maps["input"]) == 4
    shown = input_display(maps["input"]) if image is None else np.asarray(image)
    if frames:
        sheet.panel(0, 0, shown, "input: events\n(sum over T, polarity)", colourbar=True, cmap="magma",
                    **_count_range(shown))
    else:
        sheet.panel(0, 0, shown, "input", cmap="gray", vmin=0.0, vmax=1.0)
    for column, stage in enumerate(maps["stages"], start=1):
        spikes = stage["spikes"]
        sheet.panel(0, column, spikes, f"{stage['name']} output spikes\n{spikes.shape[0]}x{spikes.shape[1]} tokens, "
                    f"total {spikes.sum():.0f}", colourbar=True, cmap="viridis", **_count_range(spikes))

    row = 1
    mask_map = ListedColormap(_MASK_COLOURS)
    for stage in maps["stages"]:
        name = f"{stage['name']}.{stage.get('block')} {stage.get('kind')}"
        if "mask" in stage:
            heads, steps, H, W = stage["mask"].shape
            for head in range(heads):
                for t in range(steps):
                    mask = stage["mask"][head, t]
                    sheet.panel(row + head, t, mask, f"{name} head {head} t={t + 1}\n{int(mask.sum())} of {H * W} open",
                                cmap=mask_map, vmin=0.0, vmax=1.0)
            row += heads
        elif "scores" in stage:
            heads, count, H, W = stage["scores"].shape
            for head in range(heads):
                for j in range(count):
                    token = int(stage["queries"][head, j])
                    r, c = divmod(token, W)
                    scores = stage["scores"][head, j]
                    ax = sheet.panel(row + head, j, scores, f"{name} head {head}\nquery ({r},{c}), "
                                     f"{stage['query_spikes'][head, j]:.0f} Q spikes",
                                     colourbar=True, cmap="viridis", **_count_range(scores))
                    ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5,
                                           clip_on=False))
            row += heads
    return fig
