"""Plots shared by the notebooks: live training curves and label overlays on slices.

Introduced in ``00_quickstart`` (live curves) and ``01_data_prep`` (overlays). matplotlib only;
in a headless run (papermill) the figures are stored in the executed notebook.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["LivePlot", "overlay", "orthogonal_slices"]


class LivePlot:
    """A :func:`brainkit.train.fit` callback that redraws the curves while a run trains.

    ``metrics`` names the per-epoch values to plot beside the step loss (e.g. ``["val_loss"]``
    or ``["val_dice"]``). The figure replaces itself in the cell output, so a notebook shows one
    figure that grows, not one per epoch. It redraws after an epoch when ``every_seconds`` have passed
    since the last drawing (drawing costs ~0.3 s, as much as a short epoch), and always at the end of
    the run, so the figure that stays holds every epoch.
    """

    def __init__(self, metrics: Sequence[str] = ("val_loss",), title: str | None = None,
                 every_seconds: float = 5.0):
        self.metrics = list(metrics)
        self.title = title
        self.every_seconds = float(every_seconds)
        self._drawn_at: float | None = None
        self._drawn_epochs = -1

    def on_epoch_end(self, state) -> None:
        import time

        now = time.monotonic()
        if self._drawn_at is None or now - self._drawn_at >= self.every_seconds or state.finished:
            self.draw(state)

    def on_fit_end(self, state) -> None:
        if len(state.history["epochs"]) != self._drawn_epochs:
            self.draw(state)

    def draw(self, state) -> None:
        import time

        import matplotlib.pyplot as plt
        from IPython.display import clear_output, display

        steps, epochs = state.history["steps"], state.history["epochs"]
        fig, axes = plt.subplots(1, 1 + len(self.metrics), figsize=(4.2 * (1 + len(self.metrics)), 3))
        axes = np.atleast_1d(axes)
        axes[0].plot([s["step"] for s in steps], [s["loss"] for s in steps], lw=1)
        axes[0].set(xlabel="step", ylabel="training loss")
        for ax, name in zip(axes[1:], self.metrics):
            xs = [e["epoch"] for e in epochs if name in e]
            ax.plot(xs, [e[name] for e in epochs if name in e], "o-")
            ax.set(xlabel="epoch", ylabel=name)
        if self.title:
            fig.suptitle(self.title)
        fig.tight_layout()
        clear_output(wait=True)
        display(fig)
        plt.close(fig)
        self._drawn_at, self._drawn_epochs = time.monotonic(), len(epochs)


def overlay(ax, image: np.ndarray, mask: np.ndarray | None = None, *, alpha: float = 0.45,
            cmap_mask: str = "autumn", title: str | None = None) -> None:
    """Show a 2D ``image`` in grey with the non-zero voxels of ``mask`` in colour (label values kept)."""
    ax.imshow(np.asarray(image).T, cmap="gray", origin="lower")
    if mask is not None and np.any(mask):
        m = np.ma.masked_where(np.asarray(mask).T == 0, np.asarray(mask).T)
        ax.imshow(m, cmap=cmap_mask, alpha=alpha, origin="lower", interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def orthogonal_slices(volume: np.ndarray, mask: np.ndarray | None = None, *, at: Sequence[int] | None = None,
                      title: str | None = None):
    """Sagittal, coronal and axial slices of a RAS ``volume`` (X, Y, Z) through ``at``
    (default: the mask's centre of mass, else the volume's centre), with ``mask`` overlaid."""
    import matplotlib.pyplot as plt

    vol = np.asarray(volume)
    if at is None:
        if mask is not None and np.any(mask):
            at = [int(round(c)) for c in np.argwhere(np.asarray(mask) > 0).mean(axis=0)]
        else:
            at = [s // 2 for s in vol.shape]
    x, y, z = at
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    views = [(vol[x], None if mask is None else mask[x], f"sagittal x={x}"),
             (vol[:, y], None if mask is None else mask[:, y], f"coronal y={y}"),
             (vol[:, :, z], None if mask is None else mask[:, :, z], f"axial z={z}")]
    for ax, (img, m, name) in zip(axes, views):
        overlay(ax, img, m, title=name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
