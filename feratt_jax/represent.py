"""``feratt represent``: embeddings of a trained run and the reference's kNN "recovery" test.

The reference (docs/reference.md section 3, ``eval.py``/``represent.py``) fits a
``KNeighborsClassifier(k=11)`` on training embeddings and scores it on held-out
embeddings, reporting accuracy, NMI, macro P/R and the paper's F1. Here:

* the *training* side is a fixed, seeded, class-balanced sample of training
  faces rendered exactly like the val/test sets
  (:func:`feratt_jax.data.device.render_eval_set` on the train records, with
  its own stream tag), so the two sides differ only in their subjects;
* the *evaluation* side is the run's fixed val or test set;
* the representation is the model's ``embedding`` output (the GMM/"Rep"
  variants and the embedding baselines); models without one fall back to their
  logits, and the output says so.

Outputs in ``<workdir>/represent/``: ``embeddings.npz``, ``metrics.json`` and
``embedding_<split>.png`` (a PCA projection coloured by class).
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import numpy as np

from feratt_jax import metrics as metrics_lib
from feratt_jax.data import device, pipeline
from feratt_jax.data.splits import split_record_indices
from feratt_jax.factory import make_inputs
from feratt_jax.runs import LoadedRun, write_json

# Stream tag of the training sample; val and test use 1 and 2 in pipeline.make_datasets.
TRAIN_SAMPLE_TAG = 3
DEFAULT_K = 11


# ==========================================================================
# Metrics
# ==========================================================================


def _entropy(counts: np.ndarray) -> float:
    """Shannon entropy (nats) of a histogram."""
    p = counts[counts > 0].astype(np.float64)
    p /= p.sum()
    return float(-np.sum(p * np.log(p)))


def normalized_mutual_info(labels_true: Any, labels_pred: Any) -> float:
    """Normalised mutual information, as ``sklearn.metrics.normalized_mutual_info_score``.

    ``MI(true, pred) / mean(H(true), H(pred))`` (the arithmetic normalisation,
    scikit-learn's default), in nats; 1.0 when both labelings are a single
    cluster (a perfect, trivial match) and 0.0 when the MI is 0.

    Args:
      labels_true: (N,) integer labels.
      labels_pred: (N,) integer cluster or class assignments.

    Returns:
      NMI in [0, 1].
    """
    true = np.asarray(labels_true).reshape(-1)
    pred = np.asarray(labels_pred).reshape(-1)
    if true.shape != pred.shape:
        raise ValueError(f"labels_true {true.shape} and labels_pred {pred.shape} differ in shape")
    classes, t = np.unique(true, return_inverse=True)
    clusters, p = np.unique(pred, return_inverse=True)
    # scikit-learn's special cases: nothing split (or nothing at all) is a perfect match.
    if len(classes) == len(clusters) == 1 or len(classes) == len(clusters) == 0:
        return 1.0
    contingency = np.zeros((len(classes), len(clusters)), np.float64)
    np.add.at(contingency, (t, p), 1.0)
    n = contingency.sum()
    pij = contingency / n
    pi = pij.sum(axis=1, keepdims=True)
    pj = pij.sum(axis=0, keepdims=True)
    nz = pij > 0
    mi = float(np.sum(pij[nz] * np.log(pij[nz] / (pi @ pj)[nz])))
    if mi <= 0.0:
        return 0.0
    normaliser = max(0.5 * (_entropy(contingency.sum(axis=1)) + _entropy(contingency.sum(axis=0))), np.finfo(np.float64).eps)
    return float(min(mi / normaliser, 1.0))


def recovery_metrics(
    train_z: np.ndarray,
    train_y: np.ndarray,
    eval_z: np.ndarray,
    eval_y: np.ndarray,
    num_classes: int,
    k: int = DEFAULT_K,
    class_names: Sequence[str] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """The reference's kNN recovery test on a pair of embedding sets.

    Args:
      train_z: (N, D) training embeddings (the kNN's memory).
      train_y: (N,) their labels.
      eval_z: (M, D) held-out embeddings.
      eval_y: (M,) their labels.
      num_classes: C.
      k: neighbours (the reference uses 11).
      class_names: names for the per-class entries.

    Returns:
      ``(report, preds)``: the classification report of the kNN predictions
      (fractions in [0, 1]) plus ``nmi`` and ``k``, and the (M,) predictions.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    preds = metrics_lib.knn_predict(train_z, train_y, eval_z, k)
    report = metrics_lib.classification_report(eval_y, preds, num_classes, class_names)
    report["nmi"] = normalized_mutual_info(eval_y, preds)
    report["k"] = int(min(k, len(train_y)))
    return report, preds


def pca_2d(fit_z: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Project arrays onto the top two principal axes of ``fit_z`` (numpy SVD).

    Args:
      fit_z: (N, D) points defining the mean and the axes.
      *others: further (M, D) arrays projected with the same axes.

    Returns:
      The (N, 2) projection of ``fit_z`` followed by those of ``others``;
      a missing second axis (D = 1 or rank 1) is filled with zeros.
    """
    fit_z = np.asarray(fit_z, np.float64)
    mean = fit_z.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(fit_z - mean, full_matrices=False)
    axes = np.zeros((fit_z.shape[1], 2))
    take = min(2, vt.shape[0])
    axes[:, :take] = vt[:take].T
    return tuple((np.asarray(z, np.float64) - mean) @ axes for z in (fit_z, *others))


def embedding_plot_png(
    path: str | pathlib.Path,
    train_z: np.ndarray,
    train_y: np.ndarray,
    eval_z: np.ndarray,
    eval_y: np.ndarray,
    class_names: Sequence[str],
    title: str = "",
) -> None:
    """2-D PCA scatter: held-out points coloured by class, the training sample faint behind.

    The axes are fitted on the training sample, so the picture shows how the
    held-out subjects fall into the space the kNN memorised.
    """
    import matplotlib

    from feratt_jax.plots import new_figure

    train_2d, eval_2d = pca_2d(train_z, eval_z)
    cmap = matplotlib.colormaps["tab10"]
    fig, ax = new_figure((6.5, 5.0))
    for c, name in enumerate(class_names):
        colour = cmap(c % 10)
        tr = train_2d[np.asarray(train_y) == c]
        ev = eval_2d[np.asarray(eval_y) == c]
        ax.scatter(tr[:, 0], tr[:, 1], s=6, color=colour, alpha=0.3, linewidths=0)
        ax.scatter(ev[:, 0], ev[:, 1], s=14, color=colour, alpha=0.85, linewidths=0, label=f"{name} ({len(ev)})")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, markerscale=1.5, loc="best", title="held-out (faint: train)", title_fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ==========================================================================
# Driver
# ==========================================================================


def render_train_sample(datasets: Any, size: int) -> dict[str, np.ndarray]:
    """A fixed, class-balanced sample of training faces, rendered like val/test.

    Args:
      datasets: :class:`feratt_jax.data.pipeline.Datasets` of the run.
      size: number of samples.

    Returns:
      The :func:`render_eval_set` dict for the training subjects (seeded by
      the run's ``eval_seed`` and :data:`TRAIN_SAMPLE_TAG`).
    """
    cfg = datasets.config
    idx = split_record_indices(datasets.bank["subject"], datasets.split)
    # The same pool make_datasets built (same config, same seed), so the
    # training sample sees the same backgrounds as the held-out sets.
    pool = pipeline.build_background_pool(cfg, seed=cfg.face_seed)
    return device.render_eval_set(
        datasets.bank, idx["train"], pool, size, seed=cfg.eval_seed, tag=TRAIN_SAMPLE_TAG, config=datasets.eval_render_config
    )


def represent_run(
    workdir: str | pathlib.Path,
    *,
    split: str = "test",
    k: int = DEFAULT_K,
    train_size: int = 0,
    out: str | pathlib.Path | None = None,
) -> dict[str, Any]:
    """Compute embeddings of a run, run the kNN recovery test, write the outputs.

    Args:
      workdir: a ``feratt train`` workdir or a model export.
      split: held-out set to score, "val" or "test".
      k: neighbours of the kNN.
      train_size: rendered training samples (0 = max of the run's val and test sizes).
      out: output folder (default ``<workdir>/represent``).

    Returns:
      The metrics written to ``metrics.json``.
    """
    if split not in ("val", "test"):
        raise ValueError(f"split must be val or test, got {split!r}")
    if k < 1:
        raise ValueError(f"--k must be >= 1, got {k}")
    if train_size < 0:
        raise ValueError(f"--train-size must be >= 0, got {train_size}")
    run = LoadedRun(workdir)
    datasets = make_inputs(run.config)
    eval_set = getattr(datasets, split)
    if len(eval_set["label"]) == 0:
        raise ValueError(f"the {split} split of {workdir} is empty (data.{split}_size = 0?)")
    size = train_size or max(int(run.config.data.val_size), int(run.config.data.test_size))
    train_set = render_train_sample(datasets, size)

    keep = ("logits", "embedding")
    train_out = run.predict(train_set["image"], keep=keep)
    eval_out = run.predict(eval_set["image"], keep=keep)
    representation = "embedding" if "embedding" in eval_out else "logits"
    train_z, eval_z = train_out[representation], eval_out[representation]
    num_classes = int(run.config.model.num_classes)
    train_y = np.asarray(train_set["label"], np.int64)
    eval_y = np.asarray(eval_set["label"], np.int64)

    report, knn_preds = recovery_metrics(train_z, train_y, eval_z, eval_y, num_classes, k, run.class_names)
    classifier_acc = float(np.mean(eval_out["logits"].argmax(-1) == eval_y))
    metrics = {
        "representation": representation,
        "note": (
            "the model's embedding output"
            if representation == "embedding"
            else f"{run.config.model.name} has no embedding output: its logits are used as the representation"
        ),
        "dim": int(train_z.shape[-1]),
        "split": split,
        "num_train": int(len(train_y)),
        "num_eval": int(len(eval_y)),
        "classifier_accuracy": classifier_acc,
        "checkpoint_step": run.step,
        **report,
    }

    out_dir = pathlib.Path(out) if out is not None else run.workdir / "represent"
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out_dir / "embeddings.npz",
        representation=np.asarray(representation),
        class_names=np.asarray(run.class_names),
        train_embedding=np.asarray(train_z, np.float32),
        train_label=train_y,
        train_subject=np.asarray(train_set["subject"], np.int64),
        eval_embedding=np.asarray(eval_z, np.float32),
        eval_label=eval_y,
        eval_subject=np.asarray(eval_set["subject"], np.int64),
        eval_knn_prediction=knn_preds,
    )
    write_json(out_dir / "metrics.json", metrics)
    title = (
        f"{run.config.model.name} {representation} ({metrics['dim']}-d), {split}: "
        f"{report['k']}-NN acc {report['accuracy']:.3f}, NMI {report['nmi']:.3f}"
    )
    embedding_plot_png(out_dir / f"embedding_{split}.png", train_z, train_y, eval_z, eval_y, run.class_names, title)
    return metrics


# ==========================================================================
# CLI
__all__ = [
    "embedding_plot_png",
    "normalized_mutual_info",
    "pca_2d",
    "recovery_metrics",
    "render_train_sample",
    "represent_run",
]
