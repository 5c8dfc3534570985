"""PNG figures for reports: confusion matrices, image grids, curves, and the attention map they show.

Figures are ``matplotlib.figure.Figure`` objects drawn on their own
``FigureCanvasAgg``: no pyplot, no global backend switch, so writing a PNG
from a notebook leaves the user's inline plotting as it was.
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping, Sequence

import numpy as np


def attention_map(attention_BHWC: np.ndarray) -> np.ndarray:
    """The map shown in the figures: sigmoid of the attention logits, mean over channels."""
    from scipy.special import expit

    return expit(np.asarray(attention_BHWC, np.float64)).mean(axis=-1)


def new_figure(figsize: tuple[float, float], nrows: int = 1, ncols: int = 1, **subplots_kw: Any) -> tuple[Any, Any]:
    """A ``Figure`` on its own Agg canvas and its axes (``Figure.subplots``; nrows=0: no axes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, (fig.subplots(nrows, ncols, **subplots_kw) if nrows else None)


def confusion_matrix_figure(matrix: np.ndarray, class_names: Sequence[str], title: str = ""):
    """Row-normalised confusion matrix (rows = truth) with counts in each cell, as a ``Figure``."""
    matrix = np.asarray(matrix, np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    fig, ax = new_figure((1.0 + 0.7 * len(class_names), 0.8 + 0.6 * len(class_names)))
    im = ax.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=7, color="white" if normalised[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def confusion_matrix_png(path: str | pathlib.Path, matrix: np.ndarray, class_names: Sequence[str], title: str = "") -> None:
    """Row-normalised confusion matrix (rows = truth) with counts in each cell."""
    fig = confusion_matrix_figure(matrix, class_names, title)
    fig.savefig(path, dpi=110)


def confusion_matrix_image(matrix: np.ndarray, class_names: Sequence[str], title: str = "") -> np.ndarray:
    """The figure of :func:`confusion_matrix_png` as an (H, W, 3) float image in [0, 1] (for TensorBoard)."""
    fig = confusion_matrix_figure(matrix, class_names, title)
    fig.set_dpi(80)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return rgba[..., :3].astype(np.float32) / 255.0


def image_grid_png(path: str | pathlib.Path, columns: Mapping[str, np.ndarray], row_labels: Sequence[str] = ()) -> None:
    """One column per named image batch (N, H, W[, C]) in [0, 1]; one row per example."""
    names = list(columns)
    n = min(len(v) for v in columns.values())
    fig, axes = new_figure((1.6 * len(names), 1.6 * n), n, len(names), squeeze=False)
    for j, name in enumerate(names):
        for i in range(n):
            img = np.asarray(columns[name][i], np.float32)
            if img.ndim == 3 and img.shape[-1] == 1:
                img = img[..., 0]
            ax = axes[i, j]
            ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
            if j == 0 and i < len(row_labels):
                ax.set_ylabel(row_labels[i], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def target_band(text: str) -> tuple[float, float, str] | None:
    """``"65,85"`` -> the ``band`` of :func:`curves_png` (``None`` for ""); ValueError otherwise."""
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError("expected LO,HI in percent") from None
    return lo, hi, f"target {lo:g}-{hi:g} %"


def curves_png(
    path: str | pathlib.Path,
    x: Sequence[float],
    series: Mapping[str, Sequence[float] | tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    band: tuple[float, float, str] | None = None,
) -> None:
    """Line plot of named series over ``x``; a series given as ``(xs, ys)`` has its own x.

    ``band = (lo, hi, label)`` shades a horizontal target range.
    """
    fig, ax = new_figure((5, 3.5))
    if band is not None:
        ax.axhspan(band[0], band[1], color="tab:green", alpha=0.12, label=band[2])
    for name, ys in series.items():
        xs, ys = ys if isinstance(ys, tuple) else (x, ys)
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    # Below the x label: run labels are long enough to cover the curves and the y label inside
    # the axes. Where the label ends depends on fonts and figure size, so it is measured.
    fig.canvas.draw()
    label_bottom = ax.xaxis.label.get_window_extent().y0
    top = ax.transAxes.inverted().transform((0.0, label_bottom))[1]
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, top - 0.02), fontsize="small", frameon=False)
    fig.savefig(path, dpi=110, bbox_inches="tight")
