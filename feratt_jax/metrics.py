"""Classification and embedding metrics (docs/reference.md section 3).

Two groups:

* In-training metrics, jit-safe jnp functions that mirror the reference's `netlosses.py`:
  `topk_accuracy` (``TopkAccuracy``) and `nearest_class_mean_accuracy` (``GMMAccuracy``, each
  row left out of its own class mean unless ``include_self``). Both return **percent**, like
  the reference.
* Offline evaluation metrics, numpy functions that mirror `eval.py`'s scikit-learn calls without
  depending on scikit-learn: `confusion_matrix`, `per_class_precision_recall_f1`,
  `macro_precision_recall`, `reference_f1`, `macro_f1`, `classification_report` (these return
  **fractions in [0, 1]**, like scikit-learn) and `knn_predict` / `knn_accuracy` (the
  reference's "recovery" test with k = 11; `knn_accuracy` returns percent like the other
  ``*_accuracy`` functions).

Conventions shared with scikit-learn (``average='macro'``, ``zero_division=0``):

* A class with no predictions has precision 0; a class with no true samples has recall 0; a class
  with neither has F1 0.
* Macro averages run over the classes that occur in the labels *or* the predictions (scikit-learn's
  default label set, which `eval.py` relies on); classes that occur in neither are left out
  rather than counted as 0.

The paper's F1 is ``2 P R / (P + R)`` of the macro precision P and macro recall R
(`reference_f1`); the usual macro-F1 (mean of per-class F1) is `macro_f1`. They differ in general.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from feratt_jax.losses import leave_one_out_scale

__all__ = [
    "topk_accuracy",
    "nearest_class_mean_accuracy",
    "confusion_matrix",
    "per_class_precision_recall_f1",
    "macro_precision_recall",
    "reference_f1",
    "macro_f1",
    "classification_report",
    "knn_predict",
    "knn_accuracy",
]


# ----------------------------------------------------------------------------------------------
# In-training metrics (jnp, jit-safe)
# ----------------------------------------------------------------------------------------------


def topk_accuracy(
    logits_BC: jax.Array, labels_B: jax.Array, k: int | Sequence[int] = (1,)
) -> jax.Array | list[jax.Array]:
    """Top-k accuracy in percent, like the reference's ``TopkAccuracy``.

    Args:
      logits_BC: (B, C) scores.
      labels_B: (B,) integer labels (floats are truncated).
      k: one k or a sequence of k's (static).

    Returns:
      For an int k, a scalar ``100 * mean(label in top-k)``; for a sequence, a list with one such
      scalar per k (the reference's return type). Ties between equal scores are broken by
      `jax.lax.top_k` (lower index first).
    """
    logits_BC = jnp.asarray(logits_BC)
    labels_B = jnp.asarray(labels_B).astype(jnp.int32)
    ks = (k,) if isinstance(k, int) else tuple(k)
    max_k = max(ks)
    _, top_idx_BK = jax.lax.top_k(logits_BC, max_k)
    hit_BK = top_idx_BK == labels_B[:, None]
    results = [100.0 * jnp.mean(jnp.any(hit_BK[:, :kk], axis=-1).astype(jnp.float32)) for kk in ks]
    return results[0] if isinstance(k, int) else results


def nearest_class_mean_accuracy(embedding_BD: jax.Array, labels_B: jax.Array, *, include_self: bool = False) -> jax.Array:
    """In-batch nearest-class-mean accuracy in percent (the reference's ``GMMAccuracy``, fixed).

    Transductive, as in the reference: the class means come from the same batch and its labels.
    For each row, the prediction is the class c, among the classes present in the batch, with the
    smallest ``||z - mu_c||^2``; ties go to the smallest class label (the reference's argmin over
    the sorted class list). Each row's own class mean is the mean of the *other* rows of its class:
    the reference's contains the row itself, which scores random embeddings with no class
    information at about 93 % (B = 32, C = 8, dimension 32; docs/reference.md section 7, defect
    20). ``include_self=True`` is the reference's metric. Without the row, a row alone in its class
    has no own-class mean and is left out of the average (0 when every row is alone).

    Needs no ``num_classes``: the mean of each row's own class is formed with a (B, B) same-label
    mask, so it is jit-safe for any label values.

    Args:
      embedding_BD: (B, D) embeddings.
      labels_B: (B,) integer labels.
      include_self: the reference's class means, which contain the row being classified.

    Returns:
      Scalar ``100 * mean(prediction == label)`` over the rows that have an own-class mean.
    """
    z_BD = jnp.asarray(embedding_BD)
    labels_B = jnp.asarray(labels_B).astype(jnp.int32)
    same_BB = (labels_B[:, None] == labels_B[None, :]).astype(z_BD.dtype)
    counts_B = jnp.sum(same_BB, axis=1)  # class size of each row's class
    # Row j of means_BD is the mean of the class of sample j (identical rows for equal labels).
    means_BD = jnp.einsum("jk,kd->jd", same_BB, z_BD, precision=jax.lax.Precision.HIGHEST) / counts_B[:, None]
    diff_BBD = z_BD[:, None, :] - means_BD[None, :, :]
    sq_dist_BB = jnp.sum(diff_BBD * diff_BBD, axis=-1)  # [i, j]: sample i to class of sample j
    eligible_B = jnp.ones_like(counts_B, dtype=bool)
    if not include_self:
        # Column j is "the class of sample j": row i is one of its members iff same_BB[i, j], the
        # loss's membership matrix, so the DGMM loss's rule gives the distances without row i.
        scale_BB, present_BB = leave_one_out_scale(same_BB)
        sq_dist_BB = jnp.where(present_BB, sq_dist_BB * scale_BB, jnp.inf)
        eligible_B = counts_B > 1
    best_B = jnp.min(sq_dist_BB, axis=1)
    # Among the candidate classes at the minimal distance, take the smallest label.
    big = jnp.iinfo(jnp.int32).max
    candidates_BB = jnp.where(
        sq_dist_BB == best_B[:, None], jnp.broadcast_to(labels_B[None, :], sq_dist_BB.shape), big
    )
    pred_B = jnp.min(candidates_BB, axis=1)
    hits = jnp.sum(((pred_B == labels_B) & eligible_B).astype(jnp.float32))
    return 100.0 * hits / jnp.maximum(jnp.sum(eligible_B.astype(jnp.float32)), 1.0)


# ----------------------------------------------------------------------------------------------
# Offline evaluation metrics (numpy)
# ----------------------------------------------------------------------------------------------


def _as_int_labels(labels: Any, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr.astype(np.int64)


def confusion_matrix(
    labels: Any, preds: Any, num_classes: int, normalize: bool = False
) -> np.ndarray:
    """Confusion matrix with rows = true class and columns = predicted class.

    Args:
      labels: (N,) true labels in [0, num_classes).
      preds: (N,) predicted labels in [0, num_classes).
      num_classes: C.
      normalize: divide each row by its number of true samples (rows without samples stay 0), like
        the reference's ``ConfusionMeter(normalized=True)``.

    Returns:
      (C, C) int64 counts, or float64 row fractions when `normalize`.
    """
    labels = _as_int_labels(labels, "labels")
    preds = _as_int_labels(preds, "preds")
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} differ in shape")
    for name, arr in (("labels", labels), ("preds", preds)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes})")
    cm = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    cm = cm.reshape(num_classes, num_classes).astype(np.int64)
    if not normalize:
        return cm
    row_sums = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, row_sums, out=np.zeros(cm.shape, np.float64), where=row_sums > 0)


def per_class_precision_recall_f1(
    labels: Any, preds: Any, num_classes: int
) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support (scikit-learn semantics, zero_division=0).

    Args:
      labels: (N,) true labels.
      preds: (N,) predicted labels.
      num_classes: C.

    Returns:
      Dict of (C,) arrays: ``precision`` = TP/(TP+FP) (0 when the class is never predicted),
      ``recall`` = TP/(TP+FN) (0 when the class has no true sample), ``f1`` = 2TP/(2TP+FP+FN)
      (0 when that is 0/0), ``support`` = number of true samples, and ``predicted`` = number of
      predictions of the class.
    """
    cm = confusion_matrix(labels, preds, num_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    f1_den = support + predicted  # = 2TP + FP + FN

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros(num.shape, np.float64), where=den > 0)

    return {
        "precision": ratio(tp, predicted),
        "recall": ratio(tp, support),
        "f1": ratio(2.0 * tp, f1_den),
        "support": support,
        "predicted": predicted,
    }


def _macro_classes(stats: dict[str, np.ndarray]) -> np.ndarray:
    """Mask of the classes scikit-learn averages over: present in labels or predictions."""
    return (stats["support"] > 0) | (stats["predicted"] > 0)


def macro_precision_recall(labels: Any, preds: Any, num_classes: int) -> tuple[float, float]:
    """Macro-averaged precision and recall, as ``sklearn.metrics.precision_score/recall_score(
    average='macro', zero_division=0)`` (what the reference's eval.py reports).

    Args:
      labels: (N,) true labels.
      preds: (N,) predicted labels.
      num_classes: C.

    Returns:
      (macro_precision, macro_recall) as fractions in [0, 1]; averages over the classes present
      in the labels or the predictions.
    """
    stats = per_class_precision_recall_f1(labels, preds, num_classes)
    used = _macro_classes(stats)
    if not used.any():
        return 0.0, 0.0
    return float(stats["precision"][used].mean()), float(stats["recall"][used].mean())


def reference_f1(labels: Any, preds: Any, num_classes: int) -> float:
    """The paper's/eval.py's "F1": harmonic mean of the macro precision and the macro recall.

    ``2 P R / (P + R)`` with P, R from `macro_precision_recall` (0 when P + R = 0). This is *not*
    scikit-learn's macro-F1 (see `macro_f1`); the paper's tables use this one.

    Returns:
      A fraction in [0, 1].
    """
    precision, recall = macro_precision_recall(labels, preds, num_classes)
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def macro_f1(labels: Any, preds: Any, num_classes: int) -> float:
    """The usual macro-F1: the mean of the per-class F1, as ``sklearn.metrics.f1_score(
    average='macro', zero_division=0)``.

    Returns:
      A fraction in [0, 1].
    """
    stats = per_class_precision_recall_f1(labels, preds, num_classes)
    used = _macro_classes(stats)
    return float(stats["f1"][used].mean()) if used.any() else 0.0


def classification_report(
    labels: Any,
    preds: Any,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """All offline classification metrics in one JSON-serialisable dict.

    Args:
      labels: (N,) true labels.
      preds: (N,) predicted labels.
      num_classes: C.
      class_names: optional names for the per-class entries.

    Returns:
      Dict (plain Python floats/ints/lists, fractions in [0, 1]) with ``num_samples``,
      ``accuracy``, ``macro_precision``, ``macro_recall``, ``reference_f1`` (paper's F1),
      ``macro_f1`` (scikit-learn's), ``per_class`` (a list of ``{class, name, precision, recall,
      f1, support}``), ``confusion_matrix`` (C x C counts, rows = truth) and
      ``confusion_matrix_normalized`` (row fractions).
    """
    labels_arr = _as_int_labels(labels, "labels")
    preds_arr = _as_int_labels(preds, "preds")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    stats = per_class_precision_recall_f1(labels_arr, preds_arr, num_classes)
    precision, recall = macro_precision_recall(labels_arr, preds_arr, num_classes)
    per_class = [
        {
            "class": c,
            "name": class_names[c] if class_names is not None else str(c),
            "precision": float(stats["precision"][c]),
            "recall": float(stats["recall"][c]),
            "f1": float(stats["f1"][c]),
            "support": int(stats["support"][c]),
        }
        for c in range(num_classes)
    ]
    accuracy = float(np.mean(labels_arr == preds_arr)) if labels_arr.size else 0.0
    return {
        "num_samples": int(labels_arr.size),
        "accuracy": accuracy,
        "macro_precision": precision,
        "macro_recall": recall,
        "reference_f1": reference_f1(labels_arr, preds_arr, num_classes),
        "macro_f1": macro_f1(labels_arr, preds_arr, num_classes),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(labels_arr, preds_arr, num_classes).tolist(),
        "confusion_matrix_normalized": confusion_matrix(
            labels_arr, preds_arr, num_classes, normalize=True
        ).tolist(),
    }


def knn_predict(
    train_emb: Any,
    train_labels: Any,
    test_emb: Any,
    k: int = 11,
    *,
    chunk_size: int = 1024,
) -> np.ndarray:
    """k-nearest-neighbour majority vote in Euclidean distance (numpy, no scikit-learn).

    Matches ``KNeighborsClassifier(n_neighbors=k)`` (uniform weights, Euclidean metric): each
    test point takes the most common label among its k nearest training points, ties between
    labels going to the smallest label. Ties in *distance* at the k-th neighbour may be resolved
    differently from scikit-learn (measure-zero for real-valued embeddings).

    Args:
      train_emb: (N, D) training embeddings.
      train_labels: (N,) non-negative integer labels.
      test_emb: (M, D) query embeddings.
      k: number of neighbours (clipped to N).
      chunk_size: query rows per block, bounding memory at chunk_size x N distances.

    Returns:
      (M,) int64 predicted labels.
    """
    train = np.asarray(train_emb, dtype=np.float64)
    test = np.asarray(test_emb, dtype=np.float64)
    train_labels = _as_int_labels(train_labels, "train_labels")
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D), got {train.shape} and {test.shape}")
    if train.shape[0] != train_labels.shape[0] or train.shape[0] == 0:
        raise ValueError("train_emb and train_labels must be non-empty and of equal length")
    k = min(k, train.shape[0])
    num_labels = int(train_labels.max()) + 1
    train_sq = np.sum(train * train, axis=1)
    preds = np.empty(test.shape[0], dtype=np.int64)
    for start in range(0, test.shape[0], chunk_size):
        block = test[start : start + chunk_size]
        # Squared distances up to the per-row constant ||q||^2, which does not change the order.
        dist = train_sq[None, :] - 2.0 * block @ train.T
        nearest = np.argpartition(dist, k - 1, axis=1)[:, :k]
        votes = np.zeros((block.shape[0], num_labels), dtype=np.int64)
        np.add.at(votes, (np.arange(block.shape[0])[:, None], train_labels[nearest]), 1)
        preds[start : start + block.shape[0]] = np.argmax(votes, axis=1)  # first max = smallest
    return preds


def knn_accuracy(
    train_emb: Any,
    train_labels: Any,
    test_emb: Any,
    test_labels: Any,
    k: int = 11,
) -> float:
    """Accuracy in percent of `knn_predict` (k = 11 as in the reference's recovery test).

    Returns:
      ``100 * mean(knn_predict(...) == test_labels)``.
    """
    test_labels = _as_int_labels(test_labels, "test_labels")
    preds = knn_predict(train_emb, train_labels, test_emb, k)
    return 100.0 * float(np.mean(preds == test_labels)) if test_labels.size else 0.0
