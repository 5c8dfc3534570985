"""Tests for feratt_jax.metrics: hand-computed values and scikit-learn on random labels."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from feratt_jax import metrics as M

sklearn_metrics = pytest.importorskip("sklearn.metrics")


# ---------------------------------------------------------------------------------------------
# In-training metrics
# ---------------------------------------------------------------------------------------------


def test_topk_accuracy_by_hand():
    logits = jnp.asarray(
        [[0.1, 0.5, 0.4], [0.9, 0.05, 0.05 - 1e-3], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]
    )
    labels = jnp.asarray([1, 2, 0, 0])
    # Top-1 hits: rows 0 and 3 -> 50 %. Top-2: row 1's label 2 ranks third (0.049 < 0.05) and
    # row 2's label 0 ranks third (0.2 < 0.3 < 0.5) -> still 50 %. Top-3 -> 100 %.
    top1, top2, top3 = M.topk_accuracy(logits, labels, k=(1, 2, 3))
    assert float(top1) == pytest.approx(50.0)
    assert float(top2) == pytest.approx(50.0)
    assert float(top3) == pytest.approx(100.0)
    assert float(M.topk_accuracy(logits, jnp.asarray([1, 0, 1, 1]), k=2)) == pytest.approx(100.0)


def test_topk_accuracy_matches_sklearn_and_jits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=200)
    jitted = jax.jit(M.topk_accuracy, static_argnames="k")
    for k in (1, 3):
        expected = 100 * sklearn_metrics.top_k_accuracy_score(labels, logits, k=k, labels=range(7))
        assert float(
            M.topk_accuracy(jnp.asarray(logits), jnp.asarray(labels), k=k)
        ) == pytest.approx(expected, rel=1e-5)
        assert float(jitted(jnp.asarray(logits), jnp.asarray(labels), k=k)) == pytest.approx(
            expected, rel=1e-5
        )


def test_nearest_class_mean_accuracy_by_hand():
    # 1-D. Class 0 = {0, 2.9} (mean 1.45), class 1 = {3, 10} (mean 6.5). Sample 3 (class 1) is
    # 1.55 from mean 0 and 3.5 from mean 1 -> wrong; the other three are right: 75 %.
    # (The reference's means, which contain the row itself.)
    z = jnp.asarray([[0.0], [2.9], [3.0], [10.0]])
    labels = jnp.asarray([0, 0, 1, 1])
    assert float(M.nearest_class_mean_accuracy(z, labels, include_self=True)) == pytest.approx(75.0)
    # Non-contiguous labels (classes 2 and 5 in a C = 8 problem) behave the same.
    assert float(M.nearest_class_mean_accuracy(z, jnp.asarray([2, 2, 5, 5]), include_self=True)) == pytest.approx(75.0)


def test_nearest_class_mean_accuracy_leaves_the_row_out_by_hand():
    # 1-D. Class 0 = {0, 2}, class 1 = {1, 5}; full means 1 and 3.
    # With the row in its mean: 0 -> (1, 9) right; 2 -> (1, 1) tie -> class 0, right;
    # 1 -> (0, 4) wrong; 5 -> (16, 4) right: 75 %.
    # Without it: 0 -> own mean 2 (4) vs 3 (9) right; 2 -> own 0 (4) vs 3 (1) wrong;
    # 1 -> own 5 (16) vs 1 (0) wrong; 5 -> own 1 (16) vs 1 (16) tie -> class 0, wrong: 25 %.
    z = jnp.asarray([[0.0], [2.0], [1.0], [5.0]])
    labels = jnp.asarray([0, 0, 1, 1])
    assert float(M.nearest_class_mean_accuracy(z, labels, include_self=True)) == pytest.approx(75.0)
    assert float(M.nearest_class_mean_accuracy(z, labels)) == pytest.approx(25.0)
    # A row alone in its class has no own mean: left out (2 of 2 others right, not 2 of 3).
    z3 = jnp.asarray([[0.0], [1.0], [5.0]])
    assert float(jax.jit(M.nearest_class_mean_accuracy)(z3, jnp.asarray([0, 0, 1]))) == pytest.approx(100.0)
    assert float(M.nearest_class_mean_accuracy(z3, jnp.asarray([0, 1, 2]))) == 0.0  # nobody has one


def test_nearest_class_mean_accuracy_of_random_embeddings_is_chance():
    """Reference defect 20: random embeddings score far above chance when each row is in its own
    class mean (B = 32, C = 8, dimension 32), and at chance without it."""
    rng = np.random.default_rng(0)
    labels = jnp.asarray(np.repeat(np.arange(8), 4))
    zs = [jnp.asarray(rng.normal(size=(32, 32)).astype(np.float32)) for _ in range(20)]
    with_self = np.mean([float(M.nearest_class_mean_accuracy(z, labels, include_self=True)) for z in zs])
    without = np.mean([float(M.nearest_class_mean_accuracy(z, labels)) for z in zs])
    assert with_self > 80.0 and without < 25.0, (with_self, without)


def test_nearest_class_mean_accuracy_ties_go_to_smallest_label():
    # Class 0 = {-2, 0} (mean -1), class 1 = {0, 2, 2, 0} (mean 1). The three samples at 0 are
    # equidistant from both means; the reference's argmin over the sorted classes picks class 0:
    # right for the class-0 sample, wrong for the two class-1 samples -> 4/6.
    z = jnp.asarray([[-2.0], [0.0], [0.0], [2.0], [2.0], [0.0]])
    labels = jnp.asarray([0, 0, 1, 1, 1, 1])
    assert float(M.nearest_class_mean_accuracy(z, labels, include_self=True)) == pytest.approx(100 * 4 / 6)


def _numpy_gmm_accuracy(z, y):
    """The reference's GMMAccuracy, transcribed to numpy."""
    classes = np.unique(y)
    xmu = np.zeros((z.shape[0], len(classes)))
    yh = np.zeros(z.shape[0], int)
    for i, c in enumerate(classes):
        index = y == c
        mu = z[index].mean(axis=0)
        xmu[:, i] = np.sum((z - mu) ** 2, axis=1)
        yh[index] = i
    return 100.0 * np.mean(np.argmin(xmu, axis=1) == yh)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nearest_class_mean_accuracy_matches_reference_transcription(seed):
    rng = np.random.default_rng(seed)
    labels = rng.choice([0, 2, 3, 6], size=64)
    z = (rng.normal(size=(8, 5))[labels] * 0.8 + rng.normal(size=(64, 5))).astype(np.float32)
    expected = _numpy_gmm_accuracy(z.astype(np.float64), labels)
    assert 0 < expected < 100  # a non-trivial case
    got = jax.jit(M.nearest_class_mean_accuracy, static_argnames="include_self")(
        jnp.asarray(z), jnp.asarray(labels), include_self=True
    )
    assert float(got) == pytest.approx(expected, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# Offline metrics
# ---------------------------------------------------------------------------------------------


def test_macro_metrics_by_hand():
    # labels [0, 0, 1, 1], preds [0, 1, 1, 1], C = 3 (class 2 in neither -> not averaged).
    # P0 = 1/1, P1 = 2/3 -> P = 5/6. R0 = 1/2, R1 = 2/2 -> R = 3/4.
    # Paper F1 = 2 (5/6)(3/4) / (5/6 + 3/4) = 15/19.
    # Per-class F1 = 2TP/(2TP+FP+FN): 2/3 and 4/5 -> macro-F1 = 11/15.
    labels, preds = [0, 0, 1, 1], [0, 1, 1, 1]
    p, r = M.macro_precision_recall(labels, preds, 3)
    assert p == pytest.approx(5 / 6) and r == pytest.approx(3 / 4)
    assert M.reference_f1(labels, preds, 3) == pytest.approx(15 / 19)
    assert M.macro_f1(labels, preds, 3) == pytest.approx(11 / 15)
    np.testing.assert_array_equal(
        M.confusion_matrix(labels, preds, 3), [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    )
    np.testing.assert_allclose(
        M.confusion_matrix(labels, preds, 3, normalize=True), [[0.5, 0.5, 0], [0, 1, 0], [0, 0, 0]]
    )


def test_class_never_predicted_has_zero_precision():
    # Class 2 is never predicted: precision 0 (zero_division=0), recall 0. Class 1: TP 0, FP 1.
    labels, preds = [0, 1, 2], [0, 0, 1]
    stats = M.per_class_precision_recall_f1(labels, preds, 3)
    np.testing.assert_allclose(stats["precision"], [0.5, 0.0, 0.0])
    np.testing.assert_allclose(stats["recall"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(stats["f1"], [2 / 3, 0.0, 0.0])
    np.testing.assert_array_equal(stats["support"], [1, 1, 1])
    assert M.macro_precision_recall(labels, preds, 3) == pytest.approx((0.5 / 3, 1 / 3))


def _random_labels(seed, n=300, num_classes=8):
    rng = np.random.default_rng(seed)
    # Class 7 occurs only in the predictions (recall 0, still averaged), class 6 is never
    # predicted (precision 0), class 5 occurs in neither (left out of the macro averages, as in
    # scikit-learn); predictions are right about half the time.
    labels = rng.choice([0, 1, 2, 3, 4, 6], size=n)
    noise = rng.choice([0, 1, 2, 3, 4, 7], size=n)
    preds = np.where(rng.uniform(size=n) < 0.5, labels, noise)
    preds = np.where(preds == 6, 0, preds)
    return labels, preds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_offline_metrics_match_sklearn(seed):
    labels, preds = _random_labels(seed)
    C = 8
    np.testing.assert_array_equal(
        M.confusion_matrix(labels, preds, C),
        sklearn_metrics.confusion_matrix(labels, preds, labels=list(range(C))),
    )
    np.testing.assert_allclose(
        M.confusion_matrix(labels, preds, C, normalize=True),
        sklearn_metrics.confusion_matrix(labels, preds, labels=list(range(C)), normalize="true"),
    )
    sk_p = sklearn_metrics.precision_score(labels, preds, average="macro", zero_division=0)
    sk_r = sklearn_metrics.recall_score(labels, preds, average="macro", zero_division=0)
    sk_f1 = sklearn_metrics.f1_score(labels, preds, average="macro", zero_division=0)
    p, r = M.macro_precision_recall(labels, preds, C)
    assert p == pytest.approx(sk_p) and r == pytest.approx(sk_r)
    assert M.macro_f1(labels, preds, C) == pytest.approx(sk_f1)
    assert M.reference_f1(labels, preds, C) == pytest.approx(2 * sk_p * sk_r / (sk_p + sk_r))
    assert M.reference_f1(labels, preds, C) != pytest.approx(sk_f1)  # they really differ

    sk_pc, sk_rc, sk_fc, sk_sc = sklearn_metrics.precision_recall_fscore_support(
        labels, preds, labels=list(range(C)), zero_division=0
    )
    stats = M.per_class_precision_recall_f1(labels, preds, C)
    np.testing.assert_allclose(stats["precision"], sk_pc)
    np.testing.assert_allclose(stats["recall"], sk_rc)
    np.testing.assert_allclose(stats["f1"], sk_fc)
    np.testing.assert_array_equal(stats["support"], sk_sc)

    report = M.classification_report(labels, preds, C, class_names=[f"c{i}" for i in range(C)])
    json.dumps(report)  # JSON-serialisable
    assert report["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(labels, preds))
    assert report["macro_precision"] == pytest.approx(sk_p)
    assert report["macro_recall"] == pytest.approx(sk_r)
    assert report["macro_f1"] == pytest.approx(sk_f1)
    assert report["num_samples"] == len(labels)
    assert [e["support"] for e in report["per_class"]] == sk_sc.tolist()
    assert report["per_class"][3]["name"] == "c3"
    assert report["confusion_matrix"] == M.confusion_matrix(labels, preds, C).tolist()


def test_knn_matches_sklearn():
    neighbors = pytest.importorskip("sklearn.neighbors")
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(5, 6)) * 1.5
    train_y = rng.integers(0, 5, size=400)
    test_y = rng.integers(0, 5, size=150)
    train_x = (centres[train_y] + rng.normal(size=(400, 6))).astype(np.float32)
    test_x = (centres[test_y] + rng.normal(size=(150, 6))).astype(np.float32)
    clf = neighbors.KNeighborsClassifier(n_neighbors=11).fit(train_x, train_y)
    np.testing.assert_array_equal(
        M.knn_predict(train_x, train_y, test_x, k=11, chunk_size=64), clf.predict(test_x)
    )
    acc = M.knn_accuracy(train_x, train_y, test_x, test_y, k=11)
    assert acc == pytest.approx(100 * clf.score(test_x, test_y))
    assert 20 < acc < 100


def test_knn_by_hand():
    # Train points on a line; k = 3. Query 0.4: neighbours 0 (a), 1 (a), -1 (b) -> a.
    # Query 9: neighbours 10 (b), 8 (b), 5 (a) -> b.
    train_x = np.array([[-1.0], [0.0], [1.0], [5.0], [8.0], [10.0]])
    train_y = np.array([1, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(
        M.knn_predict(train_x, train_y, np.array([[0.4], [9.0]]), k=3), [0, 1]
    )
    # A 1-1 vote with k = 2 goes to the smaller label (as scikit-learn's mode does).
    np.testing.assert_array_equal(M.knn_predict(train_x, train_y, np.array([[-0.6]]), k=2), [0])
