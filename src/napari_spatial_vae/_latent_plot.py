"""The latent space as a pyqtgraph scatter plot with axes, a colour key and lasso selection.

Drag with the left mouse button to draw a lasso (a drag that stays nearly straight selects
the rectangle it spans); the right button and the wheel keep pyqtgraph's pan and zoom.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyqtgraph as pg
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QVBoxLayout, QWidget

#: Distinct colours for clusters (Okabe-Ito, then Tableau), readable on a dark background.
CLUSTER_COLOURS = (
    "#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7", "#ffffff",
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
)  # fmt: skip
_SELECTED = "#ff4081"


def points_in_polygon(x: np.ndarray, y: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Boolean ``(N,)``: which points lie inside a closed polygon (even-odd rule).

    Parameters
    ----------
    x, y
        ``(N,)`` point coordinates.
    polygon
        ``(M, 2)`` vertices; the last connects back to the first.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    inside = np.zeros(len(x), dtype=bool)
    if len(polygon) < 3:
        return inside
    px, py = polygon[:, 0], polygon[:, 1]
    qx, qy = np.roll(px, -1), np.roll(py, -1)
    for x0, y0, x1, y1 in zip(px, py, qx, qy, strict=True):  # M edges, vectorised over N
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < at)
    return inside


def cluster_colours(labels: np.ndarray) -> list[str]:
    """One colour per point from its cluster label."""
    return [CLUSTER_COLOURS[int(c) % len(CLUSTER_COLOURS)] for c in labels]


class _LassoViewBox(pg.ViewBox):
    """A ViewBox whose left-button drag draws a lasso instead of panning."""

    def __init__(self, on_lasso: Callable[[np.ndarray], None]) -> None:
        super().__init__()
        self._on_lasso = on_lasso
        self._path: list[tuple[float, float]] = []
        self._curve = pg.PlotCurveItem(
            pen=pg.mkPen(_SELECTED, width=1.5, style=Qt.PenStyle.DashLine)
        )
        self.addItem(self._curve, ignoreBounds=True)

    def mouseDragEvent(self, ev, axis=None):
        if ev.button() != Qt.MouseButton.LeftButton:
            super().mouseDragEvent(ev, axis)
            return
        ev.accept()
        point = self.mapSceneToView(ev.scenePos())
        if ev.isStart():
            start = self.mapSceneToView(ev.buttonDownScenePos())
            self._path = [(start.x(), start.y())]
        self._path.append((point.x(), point.y()))
        xs, ys = zip(*self._path, self._path[0], strict=False)
        self._curve.setData(np.array(xs), np.array(ys))
        if ev.isFinish():
            self._curve.setData([], [])
            self._on_lasso(lasso_polygon(np.array(self._path)))


def lasso_polygon(path: np.ndarray) -> np.ndarray:
    """The polygon a mouse path selects: itself, or the rectangle a straight drag spans."""
    if len(path) < 2:
        return path
    span = np.ptp(path, axis=0)
    start, end = path[0], path[-1]
    chord = end - start
    length = np.hypot(*chord)
    # distance of every path point from the start-end line, relative to the drag length
    relative = path - start
    cross = chord[0] * relative[:, 1] - chord[1] * relative[:, 0]
    offset = np.abs(cross) / length if length > 0 else span.max()
    if length > 0 and np.max(offset) < 0.05 * length:
        (x0, y0), (x1, y1) = start, end
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    return path


class LatentPlot(QWidget):
    """Scatter of the latent values; reports lasso selections to ``on_select(mask)``."""

    def __init__(
        self, on_select: Callable[[np.ndarray], None], parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._on_select = on_select
        self.view_box = _LassoViewBox(self._lasso_done)
        self.plot = pg.PlotWidget(background="#262930", viewBox=self.view_box)
        self.plot.setMinimumHeight(260)
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        for side in ("bottom", "left"):  # latent values read as they are, not as "x0.001"
            self.plot.getAxis(side).enableAutoSIPrefix(False)
        self.scatter = pg.ScatterPlotItem(size=5, pen=None)
        self.plot.addItem(self.scatter)
        self.legend = self.plot.addLegend(
            offset=(-10, 10), labelTextColor="#dddddd", brush=pg.mkBrush(38, 41, 48, 210)
        )
        self.colour_bar: pg.ColorBarItem | None = None
        self._legend_items: list[pg.ScatterPlotItem] = []
        self.xs = np.zeros(0)
        self.ys = np.zeros(0)
        self.selected = np.zeros(0, dtype=bool)
        self._brushes: list = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)

    def set_points(self, x: np.ndarray, y: np.ndarray, x_label: str, y_label: str) -> None:
        """Show new points (forgets the selection)."""
        self.xs, self.ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
        self.selected = np.zeros(len(self.xs), dtype=bool)
        self.plot.setLabel("bottom", x_label)
        self.plot.setLabel("left", y_label)
        self.scatter.setData(self.xs, self.ys)
        self.plot.autoRange()

    def colour_by_value(self, values: np.ndarray, label: str, limits: tuple[float, float]) -> None:
        """Colour points on a continuous colour map with a colour bar as the key."""
        self._clear_key()
        cmap = pg.colormap.get("CET-C6" if "theta" in label else "viridis")
        low, high = limits
        scaled = (np.asarray(values, np.float64) - low) / ((high - low) or 1.0)
        self._brushes = [pg.mkBrush(c) for c in cmap.map(np.clip(scaled, 0, 1), mode="qcolor")]
        self.colour_bar = pg.ColorBarItem(
            values=limits, colorMap=cmap, label=label, interactive=False, width=12
        )
        # beside the plot, where ColorBarItem.setImageItem(insert_in=...) puts it for images
        self.plot.getPlotItem().layout.addItem(self.colour_bar, 2, 5)
        self._redraw()

    def colour_by_cluster(self, labels: np.ndarray) -> None:
        """Colour points by cluster with a legend as the key."""
        self._clear_key()
        colours = cluster_colours(labels)
        self._brushes = [pg.mkBrush(c) for c in colours]
        for cluster in np.unique(labels):
            sample = pg.ScatterPlotItem(
                size=8, pen=None, brush=CLUSTER_COLOURS[int(cluster) % len(CLUSTER_COLOURS)]
            )
            count = int(np.sum(labels == cluster))
            self.legend.addItem(sample, f"cluster {cluster} ({count})")
            self._legend_items.append(sample)
        self._redraw()

    def set_selection(self, mask: np.ndarray) -> None:
        """Outline the selected points."""
        self.selected = np.asarray(mask, dtype=bool)
        self._redraw()

    def _clear_key(self) -> None:
        self.legend.clear()
        self._legend_items.clear()
        if self.colour_bar is not None:
            self.plot.getPlotItem().layout.removeItem(self.colour_bar)
            self.colour_bar.setParentItem(None)
            self.colour_bar = None

    def _redraw(self) -> None:
        n = len(self.xs)
        brushes = self._brushes if len(self._brushes) == n else [pg.mkBrush("#9e9e9e")] * n
        outline = pg.mkPen(_SELECTED, width=1.5)
        pens = [outline if s else None for s in self.selected] if n else []
        sizes = [8 if s else 5 for s in self.selected]
        self.scatter.setData(self.xs, self.ys, brush=brushes, pen=pens, size=sizes)

    def _lasso_done(self, polygon: np.ndarray) -> None:
        self._on_select(points_in_polygon(self.xs, self.ys, polygon))
