"""Evaluate a trained run: metrics, confusion matrix, attention grid, noise sweep.

Everything starts from a workdir written by :func:`feratt_jax.train.train_and_evaluate`
(its ``config.json`` and checkpoints), so a notebook or the CLI can call
these functions on any finished or interrupted run.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from feratt_jax import EXPRESSION_NAMES, configs, factory, model_io, plots, sharding
from feratt_jax.checkpointing import Checkpointer
from feratt_jax.diagnostics import attention_map
from feratt_jax.step import TrainState, as_rgb, evaluate_split, make_eval_step, predict_dataset
from feratt_jax.train import _write_json

NOISE_SIGMAS = (0.01, 0.05, 0.1, 0.2, 0.3)


def load_run_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {workdir} a feratt training workdir?")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


class LoadedRun:
    """A trained model ready for inference: config, module, state, eval step.

    ``source`` is a ``feratt train`` workdir (its best checkpoint, or the
    latest with ``which="latest"``) or a model export written by
    ``feratt convert`` / :func:`feratt_jax.model_io.save_model`; for an
    export, the data settings are the defaults of the model's base config.
    """

    def __init__(self, source: str | pathlib.Path, which: str = "best", overrides: Sequence[str] = ()):
        self.workdir = pathlib.Path(source)
        self.mesh = sharding.make_mesh()
        if (self.workdir / model_io.SPEC_FILENAME).is_file():
            self._load_export()
        else:
            self._load_workdir(which)
        # e.g. --config.data.test_size=256 for an export, whose data settings
        # are otherwise its base config's defaults.
        configs.apply_overrides(self.config, overrides)
        self.image_size = int(self.config.data.image_size)
        self.eval_step = jax.jit(make_eval_step(self.model, factory.model_input_fn(self.config)))
        self.class_names = list(EXPRESSION_NAMES[: int(self.config.model.num_classes)])

    def _load_workdir(self, which: str) -> None:
        self.config = load_run_config(self.workdir)
        self.model, _, _, init_state = factory.build_training(self.config, int(self.config.data.image_size))
        abstract, _ = factory.abstract_train_state(init_state, self.mesh)
        checkpointer = Checkpointer(self.workdir, keep=int(self.config.train.keep_checkpoints))
        restored = checkpointer.restore_best(abstract) if which == "best" else None
        if restored is None:
            restored = checkpointer.restore_latest(abstract)
        checkpointer.close()
        if restored is None:
            raise FileNotFoundError(f"no readable checkpoint in {self.workdir / 'checkpoints'} or {self.workdir / 'best'}")
        self.state = restored[0]
        self.step = int(self.state.step)

    def _load_export(self) -> None:
        self.model, variables, spec = model_io.load_model(self.workdir)
        self.config = factory.config_from_spec(spec)
        self.state = TrainState(
            step=jnp.asarray(int(spec.get("extra", {}).get("step", 0))),
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            opt_state=None,
        )
        self.step = int(self.state.step)

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.state.params, "batch_stats": self.state.batch_stats}

    def predict(self, images_BHWC: np.ndarray, keep: tuple[str, ...] = ("logits", "embedding")) -> dict[str, np.ndarray]:
        batch = int(self.config.train.eval_batch_size)
        return predict_dataset(self.eval_step, self.state, {"image": images_BHWC}, batch, self.mesh, keep=keep)


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
    plots.confusion_matrix_png(out / f"confusion_{split}.png", np.asarray(report["confusion_matrix"]), run.class_names, f"{split}: accuracy {report['accuracy']:.3f}")
    attention_grid(run, arrays, out / f"attention_{split}.png")

    if noise_sweep:
        report["noise_sweep"] = _noise_sweep(run, arrays, sigmas, out, split)

    metrics_path = out / "metrics.json"
    merged = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    merged[split] = report
    _write_json(metrics_path, merged)
    return report


def attention_grid(run: LoadedRun, arrays: dict[str, np.ndarray], path: pathlib.Path, n: int = 8) -> None:
    """PNG of the first ``n`` images: input, target face, attention, reconstruction (and STN warp)."""
    images = as_rgb(np.asarray(arrays["image"][:n], np.float32))
    outputs = run.predict(images, keep=("logits", "reconstruction", "attention", "warped"))
    columns = {"input": images}
    if "x_org" in arrays:
        columns["target face"] = np.asarray(arrays["x_org"][:n])
    if "attention" in outputs:
        columns["attention"] = attention_map(outputs["attention"])
    if "reconstruction" in outputs:
        recon = outputs["reconstruction"]
        columns["reconstruction"] = recon / max(float(recon.max()), 1e-6)
    if "warped" in outputs:
        warped = outputs["warped"]
        columns["STN warped"] = (warped - warped.min()) / max(float(np.ptp(warped)), 1e-6)
    labels = np.asarray(arrays["label"][:n]).astype(int)
    preds = outputs["logits"].argmax(-1)
    rows = [f"{run.class_names[t]} -> {run.class_names[p]}" for t, p in zip(labels, preds)]
    plots.image_grid_png(path, columns, rows)


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
    _write_json(out / f"noise_sweep_{split}.json", rows)
    plots.curves_png(out / f"noise_sweep_{split}.png", [r["sigma"] for r in rows], {"accuracy": [r["accuracy"] for r in rows]}, "Gaussian noise sigma", "accuracy", f"{run.config.model.name} ({split})")
    return rows
