"""Evaluate a trained run: metrics, confusion matrix, attention grid, noise sweep.

Everything starts from a workdir written by :func:`feratt_jax.train.train_and_evaluate`
(its ``config.json`` and checkpoints), so a notebook or the CLI can call
these functions on any finished or interrupted run.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import numpy as np

from feratt_jax import factory, figures, plots
from feratt_jax.runs import LoadedRun, write_json
from feratt_jax.step import as_rgb, evaluate_split

NOISE_SIGMAS = (0.01, 0.05, 0.1, 0.2, 0.3)


def evaluate_run(
    workdir: str | pathlib.Path,
    *,
    split: str = "test",
    noise_sweep: bool = False,
    sigmas: Sequence[float] = NOISE_SIGMAS,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Write ``eval/metrics.json`` (merged per split) and the PNG figures; return the report."""
    if split not in ("val", "test"):
        raise ValueError(f"split must be val or test, got {split!r}")
    run = LoadedRun(workdir, overrides=overrides)
    arrays = getattr(factory.make_inputs(run.config), split)
    batch = int(run.config.train.eval_batch_size)
    num_classes = int(run.config.model.num_classes)
    report = evaluate_split(run.eval_step, run.state, arrays, batch, run.mesh, num_classes)
    report["checkpoint_step"] = run.step

    out = run.workdir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    figures.confusion_png(out / f"confusion_{split}.png", report, run.class_names, split)
    attention_grid(run, arrays, out / f"attention_{split}.png")

    if noise_sweep:
        report["noise_sweep"] = _noise_sweep(run, arrays, sigmas, out, split)

    metrics_path = out / "metrics.json"
    merged = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    merged[split] = report
    write_json(metrics_path, merged)
    return report


def attention_grid(run: LoadedRun, arrays: dict[str, np.ndarray], path: pathlib.Path, n: int = 8) -> None:
    """PNG of the first ``n`` images: input, target face, attention, reconstruction (and STN warp)."""
    outputs = run.predict(as_rgb(np.asarray(arrays["image"][:n], np.float32)), keep=figures.GRID_OUTPUTS)
    figures.attention_grid_png(path, arrays, outputs, run.class_names)


def _noise_sweep(run: LoadedRun, arrays: dict[str, np.ndarray], sigmas: Sequence[float], out: pathlib.Path, split: str) -> list[dict[str, float]]:
    """Accuracy under additive Gaussian noise (clipped to [0, 1]), seeded."""
    rng = np.random.default_rng(0)
    batch = int(run.config.train.eval_batch_size)
    num_classes = int(run.config.model.num_classes)
    rows = []
    for sigma in (0.0, *sigmas):
        images = np.asarray(arrays["image"], np.float32)
        noisy = np.clip(images + rng.normal(0.0, sigma, images.shape).astype(np.float32), 0.0, 1.0) if sigma else images
        report = evaluate_split(run.eval_step, run.state, {"image": noisy, "label": arrays["label"]}, batch, run.mesh, num_classes)
        rows.append({"sigma": float(sigma), "accuracy": report["accuracy"], "reference_f1": report["reference_f1"]})
    table = ["| noise sigma | accuracy | reference F1 |", "|---|---|---|"]
    table += [f"| {r['sigma']:.2f} | {r['accuracy']:.4f} | {r['reference_f1']:.4f} |" for r in rows]
    (out / f"noise_sweep_{split}.md").write_text("\n".join(table) + "\n")
    write_json(out / f"noise_sweep_{split}.json", rows)
    plots.curves_png(out / f"noise_sweep_{split}.png", [r["sigma"] for r in rows], {"accuracy": [r["accuracy"] for r in rows]}, "Gaussian noise sigma", "accuracy", f"{run.config.model.name} ({split})")
    return rows
