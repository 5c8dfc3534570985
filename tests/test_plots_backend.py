"""Writing the library's PNGs leaves matplotlib's backend (a notebook's inline plotting) as the user set it."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

CHILD = r"""
import pathlib, sys
import matplotlib
import numpy as np

matplotlib.use("svg")  # the user's choice (a notebook has its inline backend); any non-Agg one shows a switch
out = pathlib.Path(sys.argv[1])

from feratt_jax import plots, predict, represent
from feratt_jax.data import preview

assert matplotlib.get_backend() == "svg", "importing the plotting modules switched the backend"
rng = np.random.default_rng(0)
plots.confusion_matrix_png(out / "cm.png", rng.integers(0, 5, (3, 3)), ["a", "b", "c"], "t")
plots.image_grid_png(out / "grid.png", {"x": rng.random((2, 8, 8)), "y": rng.random((2, 8, 8, 1))}, ["r0", "r1"])
plots.curves_png(out / "curves.png", [1, 2], {"s": [0.1, 0.2]}, "x", "y")
z = rng.normal(size=(12, 4))
represent.embedding_plot_png(out / "pca.png", z, np.arange(12) % 3, z[:6], np.arange(6) % 3, ["a", "b", "c"])
face = predict.FaceCrop(box=(0, 0, 8, 8), detected=True, crop=rng.random((8, 8)).astype(np.float32), detections=1)
predict.overlay_png(out / "overlay.png", rng.random((16, 16)), face, rng.random((8, 8)), np.array([0.7, 0.3]), ["a", "b"], "t")
preview.write_preview(out / "preview.png", {"num_classes": 2, "num_procedural_backgrounds": 2}, num_subjects=1)
print("backend after:", matplotlib.get_backend())
"""


def test_library_plots_do_not_switch_the_matplotlib_backend(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**__import__("os").environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend after: svg" in proc.stdout, proc.stdout
    for name in ("cm", "grid", "curves", "pca", "overlay", "preview"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
