"""The pictures of an evaluated split: confusion matrix and attention/reconstruction grid.

Pure drawing on host arrays: the caller runs the model (the trainer with the
step it compiled, ``feratt eval`` with a loaded run) and hands over the
report and the outputs of the first few images.
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from feratt_jax import plots
from feratt_jax.step import as_rgb

# The outputs the attention grid draws, when the model has them.
GRID_OUTPUTS = ("logits", "reconstruction", "attention", "warped")


def confusion_png(path: pathlib.Path, report: Mapping[str, Any], class_names: Sequence[str], split: str) -> None:
    """The report's confusion matrix, titled with the split and its accuracy."""
    plots.confusion_matrix_png(path, np.asarray(report["confusion_matrix"]), class_names, f"{split}: accuracy {report['accuracy']:.3f}")


def attention_grid_png(path: pathlib.Path, arrays: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], class_names: Sequence[str]) -> None:
    """Input, target face, attention, reconstruction (and STN warp) of the images ``outputs`` were predicted for.

    ``outputs`` holds the model's outputs (:data:`GRID_OUTPUTS`) for the
    first ``n`` images of ``arrays``; each row is titled "true -> predicted".
    """
    n = outputs["logits"].shape[0]
    columns = {"input": as_rgb(np.asarray(arrays["image"][:n], np.float32))}
    if "x_org" in arrays:
        columns["target face"] = np.asarray(arrays["x_org"][:n])
    if "attention" in outputs:
        columns["attention"] = plots.attention_map(outputs["attention"])
    if "reconstruction" in outputs:
        recon = outputs["reconstruction"]
        columns["reconstruction"] = recon / max(float(recon.max()), 1e-6)
    if "warped" in outputs:
        warped = outputs["warped"]
        columns["STN warped"] = (warped - warped.min()) / max(float(np.ptp(warped)), 1e-6)
    labels = np.asarray(arrays["label"][:n]).astype(int)
    preds = outputs["logits"].argmax(-1)
    rows = [f"{class_names[t]} -> {class_names[p]}" for t, p in zip(labels, preds)]
    plots.image_grid_png(path, columns, rows)
