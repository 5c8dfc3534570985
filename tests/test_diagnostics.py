"""Diagnostics of trained FERAtt runs: AUC, attention, reconstruction errors, head and gradient probes."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experiment_scripts
from feratt_jax import configs, factory
from feratt_jax import losses as losses_lib
from feratt_jax import step as step_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
diagnostics = experiment_scripts.load("feratt_diagnostics")


def pixel_auc(scores_N: np.ndarray, positive_N: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties count half.

    The Mann-Whitney U statistic over ranks; nan when either class is empty.
    """
    from scipy.stats import rankdata

    scores_N = np.asarray(scores_N, np.float64).ravel()
    positive_N = np.asarray(positive_N, bool).ravel()
    n_pos = int(positive_N.sum())
    n_neg = positive_N.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores_N)  # average ranks for ties
    return float((ranks[positive_N].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def test_pixel_auc_by_hand():
    # Positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered right.
    assert pixel_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert pixel_auc([0.5, 0.5, 0.5], [1, 0, 0]) == pytest.approx(0.5)  # ties count half
    assert pixel_auc([0.9, 0.1], [0, 1]) == pytest.approx(0.0)
    assert np.isnan(pixel_auc([0.1, 0.2], [1, 1]))


def test_per_image_aucs_at_once_equal_one_at_a_time():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(6, 40)).astype(float)  # many ties
    positive = rng.random((6, 40)) < 0.3
    positive[:, 0], positive[:, 1] = True, False
    want = [pixel_auc(s, p) for s, p in zip(scores, positive)]
    np.testing.assert_allclose(diagnostics.per_row_auc(scores, positive), want, rtol=1e-12)
    # One score row against every mask row (the fixed-template AUC).
    want = [pixel_auc(scores[0], p) for p in positive]
    np.testing.assert_allclose(diagnostics.per_row_auc(scores[0], positive), want, rtol=1e-12)


def test_attention_on_face_separates_a_face_map_from_a_blind_one():
    mask = np.zeros((2, 4, 4, 1), np.float32)
    mask[:, 1:3, 1:3] = 1.0
    on_face = np.where(mask > 0, 4.0, -4.0).repeat(3, axis=-1)  # logits, 3 channels
    r = diagnostics.attention_on_face(on_face, mask)
    assert r["auc"] == pytest.approx(1.0)
    sig = 1 / (1 + np.exp(-4.0))
    assert r["face_to_background"] == pytest.approx(sig / (1 - sig))
    # Both images have the face in the same place: the mean map does as well, and nothing varies between images.
    assert r["template_auc"] == pytest.approx(1.0)
    assert r["across_image_variance"] == pytest.approx(0.0)
    blind = diagnostics.attention_on_face(np.zeros_like(on_face), mask)
    assert blind["auc"] == pytest.approx(0.5) and blind["face_to_background"] == pytest.approx(1.0)
    assert np.isnan(blind["across_image_variance"])  # a constant map has no variance to share
    with pytest.raises(ValueError, match="differ in shape"):
        diagnostics.attention_on_face(on_face[:, :3], mask)


def test_attention_that_follows_the_face_beats_the_fixed_template():
    # Image 0 has its face top-left, image 1 bottom-right; each map marks its own face.
    mask = np.zeros((2, 4, 4, 1), np.float32)
    mask[0, :2, :2] = 1.0
    mask[1, 2:, 2:] = 1.0
    logits = np.where(mask > 0, 3.0, -3.0)
    r = diagnostics.attention_on_face(logits, mask)
    assert r["auc"] == pytest.approx(1.0)
    # The mean map is high on both corners: on each image it ties face and the other corner.
    assert r["template_auc"] == pytest.approx((4 * 8 + 0.5 * 4 * 4) / (4 * 12))
    # Per pixel: the 8 corner pixels vary between images (+-(s-t)/2), the 8 others do not.
    s, t = 1 / (1 + np.exp(-3.0)), 1 / (1 + np.exp(3.0))
    between = 8 * ((s - t) / 2) ** 2 / 16
    total = np.var(np.where(mask[..., 0] > 0, s, t))
    assert r["across_image_variance"] == pytest.approx(between / total)


def test_reconstruction_errors_by_hand():
    mask = np.array([[[[1.0], [0.0]]]], np.float32)  # one face pixel, one background pixel
    x_org = np.array([[[[0.6], [0.0]]]], np.float32)
    image = np.array([[[[0.5], [0.9]]]], np.float32)
    recon = np.array([[[[0.7] * 3, [0.2] * 3]]], np.float32)  # (1, 1, 2, 3)
    r = diagnostics.reconstruction_errors(recon, x_org, image, mask)
    assert r["model"] == {"face": pytest.approx(0.1), "background": pytest.approx(0.2)}
    assert r["zeros"] == {"face": pytest.approx(0.6), "background": pytest.approx(0.0)}
    assert r["input"] == {"face": pytest.approx(0.1), "background": pytest.approx(0.9)}
    assert r["input_cut_out"] == {"face": pytest.approx(0.1), "background": pytest.approx(0.0)}
    want_loss = 5 * np.mean(np.tanh(3 * np.array([0.1, 0.2])))
    assert r["reference_loss"] == pytest.approx(want_loss, rel=1e-5)


def _input(config, x):
    return step_lib.model_input(x, config.model.input_size, config.model.input_standardization)


@pytest.fixture(scope="module")
def small_feratt():
    config = configs.load_config(str(REPO / "experiments" / "configs" / "ferattentiongmm.py") + ":quick")
    model = factory.build_model_from_config(config.model)
    x = jax.random.uniform(jax.random.key(0), (4, 64, 64, 3))
    # Jitted: eagerly, every op of the model is dispatched (and compiled) on its own.
    variables = jax.jit(model.init)({"params": jax.random.key(1), "dropout": jax.random.key(2)}, _input(config, x))
    return config, model, variables, x


def test_classifier_head_fed_the_reconstruction_reproduces_the_model_logits(small_feratt):
    config, model, variables, x = small_feratt
    outputs = model.apply(variables, _input(config, x), train=False)
    head = diagnostics.make_classifier_fn(config.model)
    logits = head(variables["params"], variables["batch_stats"], outputs["reconstruction"])
    np.testing.assert_allclose(logits, outputs["logits"], rtol=1e-5, atol=1e-5)


def test_loss_term_gradients_match_direct_gradients(small_feratt):
    config, model, variables, x = small_feratt
    labels = jnp.array([0, 1, 2, 3])
    rendered = {"image": x, "x_org": x * 0.5, "label": labels, "mask": jnp.ones((4, 64, 64, 1))}
    rng = jax.random.key(3)
    report = diagnostics.make_loss_term_gradients_fn(model, config)(variables["params"], variables["batch_stats"], rendered, rng)
    assert set(report["norms"]) == {"cross_entropy", "gaussian_space", "reconstruction"}  # ||z|| has weight 0 here
    assert report["trunk_cosine"]["cross_entropy"] == pytest.approx(1.0, abs=1e-5)
    # The reconstruction term does not reach the classifier.
    assert report["norms"]["reconstruction"]["classifier"] == 0.0

    def ce(params):
        outputs, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, _input(config, x), train=True, mutable=["batch_stats"], rngs={"dropout": rng}
        )
        return losses_lib.cross_entropy(outputs["logits"], labels)

    grads = jax.jit(jax.grad(ce))(variables["params"])
    want = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads["attention_map"]))))
    # Two float32 programs for one gradient through the ResNet-34 U-Net: without the ReLU after the
    # reconstruction (the quick size since 2026-12-04) they differ by ~0.2 % under XLA's 8-device CPU
    # thread partitioning (1e-7 with one device); a wrong term or part would differ by far more.
    assert report["norms"]["cross_entropy"]["attention"] == pytest.approx(want, rel=1e-2)


@pytest.mark.slow
def test_diagnostics_script_on_a_short_run_writes_every_table_and_resumes(tmp_path):
    """The script as users run it, on a 2-step run; both in child processes (see child_runs)."""
    import json

    from child_runs import run_on_one_cpu_device

    workdir = tmp_path / "runs" / "ferattention" / "fold_0"
    overrides = {
        "data.cache_dir": tmp_path / "cache",
        "data.loader": "numpy",
        "train.num_steps": 2,
        "train.eval_every": 2,
        "train.checkpoint_every": 1,
        "model.num_filters": 8,
        "model.backbone_width": 16,
        "model.num_feature_blocks": 2,
        "model.input_standardization": True,
    }
    config = f"{REPO / 'experiments' / 'configs' / 'ferattention.py'}:tiny"
    run_on_one_cpu_device(["-m", "feratt_jax.cli", "train", "--config", config, "--workdir", str(workdir), *(f"--config.{k}={v}" for k, v in overrides.items())])

    out = tmp_path / "out"
    script = [str(REPO / "experiments" / "feratt_diagnostics.py"), "--workdir", str(tmp_path / "runs"), "--out", str(out), "--bn-batches", "2"]
    log = run_on_one_cpu_device(script)
    assert "preactresnet18: no finished fold" in log  # methods without runs are skipped, by name
    report = json.loads((out / "diagnostics.json").read_text())
    assert list(report["methods"]) == ["ferattention"]
    row = report["methods"]["ferattention"]["0"]
    assert row["best"]["running_bn"] == pytest.approx(row["recorded_test_accuracy"])
    assert 0.0 <= row["attention"]["trained"]["auc"] <= 1.0
    assert set(row["gradient_norms"]) == {"cross_entropy", "reconstruction"}
    text = (out / "diagnostics.md").read_text()
    for heading in ("## BatchNorm statistics", "## Attention and reconstruction", "## Classifier head and loss balance"):
        assert heading in text
    png = out / "attention_ferattention.png"
    assert png.stat().st_size > 0
    png_written = png.stat().st_mtime_ns

    # A second invocation keeps the diagnosed fold instead of recomputing it.
    log = run_on_one_cpu_device(script)
    assert "ferattention fold 0: kept from" in log, log
    assert json.loads((out / "diagnostics.json").read_text())["methods"]["ferattention"]["0"] == row
    assert png.stat().st_mtime_ns == png_written, "the fold was recomputed (its attention PNG was rewritten)"
    # --redo of another method (no runs here) leaves this method's rows alone.
    run_on_one_cpu_device(script + ["--redo", "--methods", "preactresnet18"])
    assert json.loads((out / "diagnostics.json").read_text())["methods"]["ferattention"]["0"] == row


def test_a_run_stopped_after_its_first_fold_keeps_that_folds_tables(tmp_path, monkeypatch):
    # experiments/gpu_paper_table.sh stops the script at a time budget: what it finished must be on disk.
    for k in (0, 1):
        (tmp_path / "runs" / "preactresnet18" / f"fold_{k}" / "eval").mkdir(parents=True)
        (tmp_path / "runs" / "preactresnet18" / f"fold_{k}" / "eval" / "metrics.json").write_text('{"step": 10}')
    row = {"workdir": "w", "recorded_test_accuracy": 0.5, "best": {"step": 10, "running_bn": 0.5, "precise_bn": 0.625, "test_batch_bn": 0.75}, "latest": None}
    calls = []

    def fake_fold(method, workdir, out, bn_batches):
        calls.append(workdir.name)
        if len(calls) == 2:
            raise KeyboardInterrupt("budget")
        return row

    monkeypatch.setattr(diagnostics, "diagnose_fold", fake_fold)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        diagnostics.main(["--workdir", str(tmp_path / "runs"), "--out", str(out), "--methods", "preactresnet18"])
    assert calls == ["fold_0", "fold_1"]
    assert "| preactresnet18 | 0 | 10 | 50.0 | 62.5 | 75.0 |" in (out / "diagnostics.md").read_text()
    assert list(json.loads((out / "diagnostics.json").read_text())["methods"]["preactresnet18"]) == ["0"]
