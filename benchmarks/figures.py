"""PNG figures for the benchmarks: image montages side by side, and simple line charts.

matplotlib (the ``bench`` extra) draws them with the Agg backend: no display is needed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # the backend must be chosen first


def montage(tiles: np.ndarray, gap: int = 1) -> np.ndarray:
    """Tile a ``(rows, cols, H, W[, C])`` grid of images into one ``(R, C[, C])`` picture."""
    rows, cols, height, width = tiles.shape[:4]
    channels = tiles.shape[4:]
    out = np.ones(
        (rows * (height + gap) - gap, cols * (width + gap) - gap, *channels), dtype=np.float32
    ) * float(np.max(tiles))
    for r in range(rows):
        for c in range(cols):
            y, x = r * (height + gap), c * (width + gap)
            out[y : y + height, x : x + width] = tiles[r, c]
    return out


def save_panels(
    panels: list[np.ndarray], titles: list[str], path: str | Path, suptitle: str = ""
) -> Path:
    """Save pictures side by side (grey, or RGB in 0..1) with a title over each.

    Each panel keeps its aspect ratio at a common height, so a long strip stays legible.
    """
    height = 3.2 if all(p.shape[1] <= 1.5 * p.shape[0] for p in panels) else 1.6
    widths = [height * p.shape[1] / p.shape[0] for p in panels]
    figure, axes = plt.subplots(
        1,
        len(panels),
        figsize=(sum(widths) + 0.2 * len(panels), height + 0.8),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    for axis, panel, title in zip(axes[0], panels, titles, strict=True):
        rgb = panel.ndim == 3
        axis.imshow(np.clip(panel, 0, 1) if rgb else panel, cmap=None if rgb else "gray")
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    if suptitle:
        figure.suptitle(suptitle, fontsize=10)
    return _save(figure, path)


def save_lines(
    series: dict[str, tuple[list[float], list[float]]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
) -> Path:
    """Save a line chart: ``series[label] = (x values, y values)``."""
    figure, axis = plt.subplots(figsize=(4.5, 3.4))
    for label, (x, y) in series.items():
        axis.plot(x, y, marker="o", label=label)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return _save(figure, path)


def _save(figure: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
