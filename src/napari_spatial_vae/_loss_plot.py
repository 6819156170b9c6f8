"""Live plot of the train and test ELBO per epoch (pyqtgraph: fast, no matplotlib canvas)."""

from __future__ import annotations

import pyqtgraph as pg
from qtpy.QtWidgets import QVBoxLayout, QWidget


class LossPlot(QWidget):
    """Two curves, ELBO per image (nats; higher is better) against epoch."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = pg.PlotWidget(background="#262930")  # napari's dark panel colour
        self.plot.setMinimumHeight(160)
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.plot.setLabel("bottom", "epoch")
        self.plot.setLabel("left", "ELBO / image (nats)")
        self.plot.addLegend(offset=(10, 10))  # top left: the ELBO rises to the right
        self.train_curve = self.plot.plot(
            [], [], name="train", pen=pg.mkPen("#4fc3f7", width=2), symbol="o", symbolSize=4,
            symbolBrush="#4fc3f7",
        )  # fmt: skip
        self.test_curve = self.plot.plot(
            [], [], name="test", pen=pg.mkPen("#ffb74d", width=2), symbol="o", symbolSize=4,
            symbolBrush="#ffb74d",
        )  # fmt: skip
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)
        self.clear()

    def clear(self) -> None:
        """Forget all points (a new run starts)."""
        self.epochs: list[int] = []
        self.train: list[float] = []
        # coarse-to-fine epochs: their train ELBO covers 2x2 bins (a quarter of the pixels),
        # far above the full-size values, so they are kept but not drawn
        self.binned: list[bool] = []
        self.test_epochs: list[int] = []
        self.test: list[float] = []
        self._redraw()

    def add_epoch(
        self, epoch: int, train_elbo: float, test_elbo: float | None, binned: bool = False
    ) -> None:
        """Append one epoch's values and redraw (a binned epoch's train ELBO is not drawn)."""
        self.epochs.append(epoch)
        self.train.append(train_elbo)
        self.binned.append(binned)
        if test_elbo is not None:
            self.test_epochs.append(epoch)
            self.test.append(test_elbo)
        self._redraw()

    def set_history(self, rows: list[dict]) -> None:
        """Show a run folder's ``history.csv`` rows (a loaded or resumed model)."""
        self.clear()
        for row in rows:
            if row.get("elbo") is None:
                continue
            if row["split"] == "train":
                self.epochs.append(int(row["epoch"]))
                self.train.append(float(row["elbo"]))
                self.binned.append(bool(row.get("binned")))
            elif row["split"] == "test":
                self.test_epochs.append(int(row["epoch"]))
                self.test.append(float(row["elbo"]))
        self._redraw()

    def _redraw(self) -> None:
        full_size = [i for i, binned in enumerate(self.binned) if not binned]
        self.train_curve.setData(
            [self.epochs[i] for i in full_size], [self.train[i] for i in full_size]
        )
        self.test_curve.setData(self.test_epochs, self.test)
