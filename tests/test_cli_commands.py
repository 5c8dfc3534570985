"""Every ``feratt`` command end to end on tiny configs, plus bad-input errors.

One FERAtt+Rep+Cls run (``ferattentiongmm.py:tiny``: it has both an embedding
for ``represent`` and an attention map for ``predict``) is trained once per
test session through ``python -m feratt_jax.cli train`` in a child process
(``child_runs``: the full model compiled for conftest's eight devices needs
12-15 GB, too much for two xdist workers at once); every other command then
runs on a copy of it in process through :func:`feratt_jax.cli.main`. ``kfold`` uses the cheap
PreActResNet18 tiny config with one step per fold.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from feratt_jax import EXPRESSION_NAMES
from feratt_jax.cli import main

# The shared run trains the full-size FERAtt model (45M parameters), so the
# module belongs with the other full-size tests: run by the README command,
# skipped by the fast (-m "not slow") pass.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"
GMM_TINY = f"{CONFIGS / 'ferattentiongmm.py'}:tiny"
PREACT_TINY = f"{CONFIGS / 'preactresnet18.py'}:tiny"
METRIC_KEYS = ("accuracy", "macro_precision", "macro_recall", "reference_f1", "macro_f1")


def _png(path: pathlib.Path) -> np.ndarray:
    """Read a PNG with scikit-image and check it is a non-trivial picture."""
    from skimage import io

    assert path.is_file(), f"{path} missing"
    img = io.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert img.std() > 0, f"{path} is blank"
    return img


def _fractions(report: dict, keys=METRIC_KEYS) -> None:
    for key in keys:
        assert 0.0 <= report[key] <= 1.0, (key, report[key])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> pathlib.Path:
    """A ferattentiongmm:tiny workdir trained through the ``feratt train`` command line, this module's own copy."""
    from child_runs import shared_basetemp, trained_once

    cache = shared_basetemp(tmp_path_factory) / "shared_runs" / "facebank_cache"
    args = ["--config", GMM_TINY, f"--config.data.cache_dir={cache}", "--config.data.loader=numpy", "--config.train.num_steps=1"]
    workdir = trained_once(tmp_path_factory, "ferattentiongmm_tiny", args, tmp_path_factory.mktemp("cli_runs") / "gmm")
    assert (workdir / "eval" / "metrics.json").is_file()
    return workdir


@pytest.fixture(scope="module")
def kfold_dir(tmp_path_factory, cache_dir) -> pathlib.Path:
    """``feratt kfold --folds 2`` of preactresnet18:tiny, one step per fold."""
    workdir = tmp_path_factory.mktemp("cli_kfold") / "kf"
    rc = main(
        [
            "kfold",
            "--config",
            PREACT_TINY,
            "--folds",
            "2",
            "--workdir",
            str(workdir),
            f"--config.data.cache_dir={cache_dir}",
            "--config.data.loader=numpy",
            "--config.train.num_steps=1",
        ]
    )
    assert rc == 0
    return workdir


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, pathlib.Path]:
    """skimage's astronaut photo, a face-free gradient, and a corrupt 'PNG'."""
    from skimage import data, io

    folder = tmp_path_factory.mktemp("photos")
    paths = {
        "astronaut": folder / "astronaut.png",
        "gradient": folder / "gradient.png",
        "corrupt": folder / "corrupt.png",
    }
    io.imsave(str(paths["astronaut"]), data.astronaut(), check_contrast=False)
    ramp = np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (80, 1))
    io.imsave(str(paths["gradient"]), ramp, check_contrast=False)
    paths["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    return paths


# ---------------------------------------------------------------- train/eval


def test_train_wrote_a_sane_summary(trained):
    summary = json.loads((trained / "eval" / "metrics.json").read_text())
    for split in ("val", "test"):
        _fractions(summary[split])
        assert summary[split]["num_examples"] == 16
    assert json.loads((trained / "config.json").read_text())["model"]["name"] == "ferattentiongmm"


def test_eval_with_noise_sweep(trained, capsys):
    assert main(["eval", "--workdir", str(trained), "--split", "test", "--noise-sweep"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _fractions(printed)
    metrics = json.loads((trained / "eval" / "metrics.json").read_text())
    test = metrics["test"]
    _fractions(test)
    assert np.asarray(test["confusion_matrix"]).shape == (8, 8)
    assert np.asarray(test["confusion_matrix"]).sum() == 16
    assert len(test["per_class"]) == 8
    sweep = test["noise_sweep"]
    assert [row["sigma"] for row in sweep] == [0.0, 0.01, 0.05, 0.1, 0.2, 0.3]
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in sweep)
    table = (trained / "eval" / "noise_sweep_test.md").read_text()
    assert table.count("\n") == 2 + len(sweep)
    for name in ("confusion_test.png", "attention_test.png", "noise_sweep_test.png"):
        _png(trained / "eval" / name)


# ---------------------------------------------------------------- represent


def test_represent_writes_embeddings_knn_metrics_and_plot(trained, capsys):
    assert main(["represent", "--workdir", str(trained), "--split", "test", "--train-size", "32"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["representation"] == "embedding"
    out = trained / "represent"
    metrics = json.loads((out / "metrics.json").read_text())
    _fractions(metrics, METRIC_KEYS + ("nmi", "classifier_accuracy"))
    assert metrics["k"] == 11 and metrics["dim"] == 32
    assert metrics["num_train"] == 32 and metrics["num_eval"] == 16
    arrays = np.load(out / "embeddings.npz")
    assert arrays["train_embedding"].shape == (32, 32)
    assert arrays["eval_embedding"].shape == (16, 32)
    assert np.isfinite(arrays["train_embedding"]).all()
    # The training sample comes from training subjects only, val/test from held-out ones.
    assert not set(arrays["train_subject"].tolist()) & set(arrays["eval_subject"].tolist())
    assert set(arrays["train_label"].tolist()) == set(range(8))  # class-balanced sample
    # The recorded metrics are those of the stored kNN predictions.
    assert metrics["accuracy"] == pytest.approx(np.mean(arrays["eval_knn_prediction"] == arrays["eval_label"]))
    _png(out / "embedding_test.png")


def test_represent_falls_back_to_logits_without_an_embedding(kfold_dir, capsys, tmp_path):
    assert main(["represent", "--workdir", str(kfold_dir / "fold_0"), "--split", "val", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no embedding output" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["representation"] == "logits" and metrics["dim"] == 8
    assert "logits are used" in metrics["note"]
    _png(tmp_path / "embedding_val.png")


def test_nmi_matches_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    from feratt_jax.represent import normalized_mutual_info

    rng = np.random.default_rng(0)
    cases = [
        (rng.integers(0, 8, 200), rng.integers(0, 8, 200)),
        (np.repeat(np.arange(4), 10), np.repeat(np.arange(4), 10)),  # identical: 1
        (np.repeat(np.arange(4), 10), np.tile(np.arange(4), 10)),  # independent: 0
        (np.zeros(10, int), np.zeros(10, int)),  # one cluster each: 1 by convention
        (np.zeros(10, int), np.arange(10)),
        (np.array([3, 3, 5, 5, 7]), np.array([0, 0, 0, 1, 1])),
    ]
    for true, pred in cases:
        expected = sklearn_metrics.normalized_mutual_info_score(true, pred)
        assert normalized_mutual_info(true, pred) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- predict


def test_predict_finds_the_astronauts_face_and_writes_overlays(trained, photos, capsys, tmp_path):
    rc = main(
        ["predict", str(photos["astronaut"]), str(photos["gradient"]), "--workdir", str(trained), "--out", str(tmp_path), "--json"]
    )
    assert rc == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert f"no face found in {photos['gradient']}" in captured.err
    astronaut, gradient = results
    assert astronaut["face_detected"] and not gradient["face_detected"]
    # Eileen Collins' face is at rows ~60-160, columns ~185-285 of the 512x512 photo.
    r, c, h, w = astronaut["box"]
    assert r < 110 < r + h and c < 235 < c + w and 80 < h < 250
    assert gradient["box"] == [0, 0, 80, 96]
    for res in results:
        assert res["label"] in EXPRESSION_NAMES
        assert sum(res["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert res["probability"] == max(res["probabilities"].values())
        _png(pathlib.Path(res["overlay"]))
    assert json.loads((tmp_path / "predictions.json").read_text()) == results

    # The plain form prints one line per image.
    assert main(["predict", str(photos["astronaut"]), "--workdir", str(trained), "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{photos['astronaut']}: ") and "happiness" in lines[0]


def test_predict_with_a_model_without_attention(kfold_dir, photos, capsys, tmp_path):
    workdir = kfold_dir / "fold_0"  # preactresnet18: no attention map, 32x32 input
    assert main(["predict", str(photos["astronaut"]), "--workdir", str(workdir), "--out", str(tmp_path), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["face_detected"] and result["label"] in EXPRESSION_NAMES
    _png(tmp_path / "astronaut_overlay.png")


def test_predict_missing_file_is_a_clear_error(capsys, tmp_path):
    missing = tmp_path / "nope.jpg"
    assert main(["predict", str(missing), "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "feratt predict: error" in err and str(missing) in err


def test_predict_corrupt_image_is_a_clear_error(photos, capsys, tmp_path):
    assert main(["predict", str(photos["corrupt"]), "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"cannot decode {photos['corrupt']} as an image" in err


# ---------------------------------------------------------------- kfold


def test_kfold_writes_the_table_and_resumes(kfold_dir, cache_dir, capsys):
    result = json.loads((kfold_dir / "kfold.json").read_text())
    assert result["folds"] == 2 and result["model"] == "preactresnet18"
    assert [row["fold"] for row in result["per_fold"]] == [0, 1]
    for row in result["per_fold"]:
        _fractions(row)
        assert row["step"] == 1  # the --config.train.num_steps override reached the trainer
    for key in METRIC_KEYS:
        values = [row[key] for row in result["per_fold"]]
        assert result["mean"][key] == pytest.approx(np.mean(values))
        assert result["std"][key] == pytest.approx(np.std(values, ddof=1))
    for k in (0, 1):
        config = json.loads((kfold_dir / f"fold_{k}" / "config.json").read_text())
        assert config["data"]["fold"] == k and config["train"]["num_steps"] == 1
    # Each fold tests on its own held-out subjects.
    subjects = [json.loads((kfold_dir / f"fold_{k}" / "eval" / "metrics.json").read_text()) for k in (0, 1)]
    assert all(s["test"]["num_examples"] == 16 for s in subjects)
    table = (kfold_dir / "kfold.md").read_text()
    assert "| fold | Acc | Prec | Rec | F1 | macro-F1 |" in table and "**mean**" in table and "+-" in table

    # A rerun finds both folds complete and only rewrites the table.
    args = ["kfold", "--config", PREACT_TINY, "--folds", "2", "--workdir", str(kfold_dir)]
    args += [f"--config.data.cache_dir={cache_dir}", "--config.data.loader=numpy", "--config.train.num_steps=1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("already done") == 2 and "2-fold test" in out
    # ... but refuses to reuse folds trained with another config.
    assert main(args[:-1] + ["--config.train.num_steps=3"]) == 2
    assert "different config" in capsys.readouterr().err


def test_kfold_stops_cleanly_when_a_fold_is_interrupted(tmp_path):
    from feratt_jax import configs
    from feratt_jax.kfold import run_kfold

    seen = []

    def fake_train(config, workdir):
        seen.append((config.data.fold, workdir.name))
        if config.data.fold == 1:  # what train_and_evaluate returns after SIGTERM
            return {"stopped_at_step": 3, "signal": "SIGTERM"}
        report = {key: 0.5 for key in METRIC_KEYS} | {"num_examples": 16}
        summary = {"step": 2, "best_val_accuracy": 0.5, "test": report}
        (workdir / "eval").mkdir(parents=True)
        (workdir / "eval" / "metrics.json").write_text(json.dumps(summary))
        return summary

    config = configs.load_config(PREACT_TINY)
    result = run_kfold(config, 3, tmp_path, train_fn=fake_train, log=lambda _: None)
    assert result == {"stopped": {"fold": 1, "stopped_at_step": 3, "signal": "SIGTERM"}}
    assert seen == [(0, "fold_0"), (1, "fold_1")]
    assert not (tmp_path / "kfold.json").exists()
    assert config.data.fold == 0  # the caller's config is not modified


def test_kfold_resumes_a_stopped_fold_that_feratt_eval_has_evaluated(tmp_path):
    # A fold stopped by SIGTERM and then evaluated by hand (`feratt eval --split
    # test`) has an eval/metrics.json of splits only. It once counted as done:
    # the table reported the part-trained fold and its training never resumed.
    from feratt_jax import configs
    from feratt_jax.kfold import run_kfold

    (tmp_path / "fold_0" / "eval").mkdir(parents=True)
    partial = {"test": {key: 0.25 for key in METRIC_KEYS} | {"num_examples": 16, "checkpoint_step": 3}}
    (tmp_path / "fold_0" / "eval" / "metrics.json").write_text(json.dumps(partial))
    trained, lines = [], []

    def fake_train(config, workdir):
        trained.append(workdir.name)
        summary = {"step": 8, "best_val_accuracy": 0.5, "test": {key: 0.75 for key in METRIC_KEYS} | {"num_examples": 16}}
        (workdir / "eval" / "metrics.json").write_text(json.dumps(summary))
        return summary

    result = run_kfold(configs.load_config(PREACT_TINY), 1, tmp_path, train_fn=fake_train, log=lines.append)
    assert trained == ["fold_0"]
    assert result["per_fold"][0]["step"] == 8 and result["per_fold"][0]["accuracy"] == 0.75
    assert any("unfinished run" in line for line in lines)
    # Once the trainer has written its summary, a rerun skips the fold.
    run_kfold(configs.load_config(PREACT_TINY), 1, tmp_path, train_fn=fake_train, log=lines.append)
    assert trained == ["fold_0"]


def test_kfold_with_too_many_folds_is_a_clear_error(capsys, tmp_path):
    rc = main(["kfold", "--config", PREACT_TINY, "--folds", "5", "--workdir", str(tmp_path / "kf")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--folds 5 exceeds the 4 folds" in err
    assert not (tmp_path / "kf").exists()


# ---------------------------------------------------------------- the rest


def test_data_preview(capsys, tmp_path):
    out = tmp_path / "preview.png"
    assert main(["data", "preview", "--out", str(out), "--config", PREACT_TINY]) == 0
    assert str(out) in capsys.readouterr().out
    _png(out)


def test_data_preview_takes_data_overrides(monkeypatch, tmp_path):
    """`--config.data.*` reaches the data config write_preview gets, with or without --config."""
    from feratt_jax.data import preview
    from feratt_jax.data.pipeline import DataConfig

    seen = []
    monkeypatch.setattr(preview, "write_preview", lambda out, config, **kw: seen.append(config) or pathlib.Path(out))
    out = str(tmp_path / "p.png")
    assert main(["data", "preview", "--out", out, "--config", PREACT_TINY, "--config.data.render.downsample_size=16"]) == 0
    assert main(["data", "preview", "--out", out, "--config.data.face_scene_prob", "0.75"]) == 0
    first, second = (DataConfig.from_dict(c.data.to_dict()) for c in seen)
    assert first.render_config().downsample_size == 16
    assert first.num_subjects == 16  # the tiny size's data section, not the defaults
    assert second.face_scene_prob == 0.75 and second.render_config().downsample_size == 48


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--config.data.render.bogus=1"], "Unknown RenderConfig keys ['bogus']"),
        (["--config.data.bogus=1"], "unknown config field 'data.bogus'"),
        (["--preset", "nosuch"], "unknown render preset 'nosuch'"),
    ],
)
def test_data_preview_bad_input_stops_before_any_face_is_drawn(monkeypatch, capsys, tmp_path, bad, message):
    from feratt_jax.data import synthfaces

    def no_faces(*args, **kwargs):
        raise AssertionError("a face was drawn before the override was checked")

    monkeypatch.setattr(synthfaces, "generate_face", no_faces)
    out = tmp_path / "p.png"
    assert main(["data", "preview", "--out", str(out), "--config", PREACT_TINY, *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("feratt data preview: error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_info(capsys):
    assert main(["info", "--model", "ferattentiongmm", "--num-classes", "8", "--no-flops"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["params"] == 45_805_313
    assert summary["output_shapes"]["embedding"] == [32]


def test_convert_round_trip_and_eval_of_the_export(trained, cache_dir, tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    from feratt_jax import configs, model_io, runs

    # `feratt convert --to-torch` reads exports, so export the run first.
    module, variables, spec = runs.load_any(trained)
    export = tmp_path / "export"
    model_io.save_model(
        export, variables, model_name=spec["model_name"], num_classes=spec["num_classes"], dim=spec["dim"],
        model_options=spec["model_options"], extra=spec["extra"],
    )
    pth = tmp_path / "ck.pth.tar"
    assert main(["convert", "--to-torch", str(export), "--out", str(pth)]) == 0
    back = tmp_path / "back"
    assert main(["convert", "--from-torch", str(pth), "--out", str(back)]) == 0
    _, back_variables, back_spec = model_io.load_model(back)
    assert back_spec["model_name"] == "ferattentiongmm"
    flat, flat_back = model_io.flatten_variables(variables), model_io.flatten_variables(back_variables)
    assert flat.keys() == flat_back.keys()
    assert all(np.array_equal(flat[k], flat_back[k]) for k in flat)

    # An export carries no data settings: eval falls back to the model's base
    # config, which is the full-size benchmark; shrink it to the tiny one.
    base_config = configs.base_config

    def tiny_base(name):
        c = configs.tiny(base_config(name))
        c.data.cache_dir = cache_dir
        c.data.loader = "numpy"
        return c

    monkeypatch.setattr(configs, "base_config", tiny_base)
    capsys.readouterr()
    assert main(["eval", "--workdir", str(back), "--split", "test"]) == 0
    report = json.loads((back / "eval" / "metrics.json").read_text())["test"]
    _fractions(report)
    # Same weights, same test set: the same predictions as the run's own
    # final evaluation of its best checkpoint.
    original = json.loads((trained / "eval" / "metrics.json").read_text())["test"]
    assert report["confusion_matrix"] == original["confusion_matrix"]


def test_export_stablehlo_matches_the_model_for_any_batch_and_its_loader_needs_only_jax(trained, tmp_path, capsys):
    import subprocess
    import sys

    import jax

    from feratt_jax.export import load_exported
    from feratt_jax.runs import LoadedRun

    pytest.importorskip("flatbuffers", reason="feratt export needs the [export] extra (flatbuffers)")

    out = tmp_path / "served"
    assert main(["export", "--workdir", str(trained), "--out", str(out)]) == 0
    spec = json.loads((out / "export.json").read_text())
    assert spec["input_shape"][0] == "B" and spec["outputs"]["logits"] == ["B", str(len(spec["class_names"]))]
    run = LoadedRun(trained)
    served = load_exported(out)
    rng = np.random.default_rng(0)
    for batch in (1, 3):  # one serialized function, any batch size
        x = rng.random((batch, run.image_size, run.image_size, 3), dtype=np.float32)
        want = jax.device_get(run.eval_step(run.state.params, run.state.batch_stats, x))
        got = served(x)
        assert set(got) == {"logits", "probabilities", "attention"}
        np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-5, atol=1e-5)
        z = np.exp(want["logits"] - want["logits"].max(-1, keepdims=True))
        np.testing.assert_allclose(got["probabilities"], z / z.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["attention"], 1.0 / (1.0 + np.exp(-want["attention"])), rtol=1e-5, atol=1e-6)
    # The shipped loader, in a fresh interpreter: the labels of the last batch, without feratt_jax.
    np.save(tmp_path / "x.npy", x)
    code = (
        "import runpy, sys; sys.argv = [sys.argv[1], sys.argv[2]]; runpy.run_path(sys.argv[0], run_name='__main__'); "
        "assert 'feratt_jax' not in sys.modules, 'the loader imported feratt_jax'"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(out / "load_feratt.py"), str(tmp_path / "x.npy")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str([spec["class_names"][i] for i in want["logits"].argmax(-1)])


def test_export_bad_inputs_are_one_line_and_write_nothing(tmp_path, capsys):
    from feratt_jax import configs

    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "config.json").write_text(json.dumps(configs.load_config(GMM_TINY).to_dict()))
    (untrained / "checkpoints").mkdir()  # an interrupted start: the folder, no step in it
    for workdir, fmt, expected in [
        (untrained, "stablehlo", f"{untrained} holds no checkpoint (checkpoints/ and best/ are empty): nothing to export"),
        (tmp_path / "nowhere", "stablehlo", f"{tmp_path / 'nowhere'} is neither a feratt train workdir (no config.json) nor a model export"),
        (untrained, "onnx", "--format onnx is not available: jax2onnx 0.13-0.17 require orbax-checkpoint<0.11.37"),
    ]:
        assert main(["export", "--workdir", str(workdir), "--format", fmt, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"feratt export: error: {expected}"), err
    assert not (tmp_path / "out").exists()


def _composite_clip(path, frames: int = 6, fps: float = 5.0) -> None:
    """A short video of a synthetic face drifting across a grey canvas, written through imageio-ffmpeg."""
    import imageio.v2 as iio

    from feratt_jax.data import synthfaces

    rec = synthfaces.generate_face(0, 1, 0)
    face = np.where(rec["mask"] > 127, rec["image"].astype(float), 110.0)
    with iio.get_writer(str(path), format="ffmpeg", fps=fps, macro_block_size=1) as writer:
        for t in range(frames):
            canvas = np.full((192, 192), 110.0)
            canvas[24 + 4 * t : 152 + 4 * t, 20 + 6 * t : 148 + 6 * t] = face
            writer.append_data(np.repeat(canvas.astype(np.uint8)[..., None], 3, -1))


def test_predict_video_csv_smoothing_annotated_video_and_bad_video(trained, tmp_path, capsys):
    import csv

    pytest.importorskip("imageio_ffmpeg", reason="video needs the [video] extra (imageio-ffmpeg)")
    import imageio.v2 as iio

    from feratt_jax.video import smooth_probabilities

    clip = tmp_path / "clip.mp4"
    _composite_clip(clip)
    out = tmp_path / "pred"
    rows = {}
    for smooth in (0.0, 0.5):
        assert main(["predict", str(clip), "--workdir", str(trained), "--out", str(out / str(smooth)),
                     "--smooth", str(smooth), "--batch-size", "4", "--no-progress"]) == 0
        with open(out / str(smooth) / "clip.csv") as f:
            rows[smooth] = list(csv.DictReader(f))
    plain, smoothed = rows[0.0], rows[0.5]
    names = list(EXPRESSION_NAMES[:8])
    assert [r["frame"] for r in plain] == [str(t) for t in range(6)]
    assert [float(r["time_s"]) for r in plain] == pytest.approx([t / 5.0 for t in range(6)])
    p = np.array([[float(r[n]) for n in names if n in r] for r in plain])
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    # Smoothing is the moving average of the per-frame probabilities, by hand for two frames.
    s = np.array([[float(r[n]) for n in names if n in r] for r in smoothed])
    np.testing.assert_allclose(s[1], 0.5 * p[0] + 0.5 * p[1], atol=2e-6)
    np.testing.assert_allclose(s, smooth_probabilities(p, 0.5), atol=2e-6)
    # Batched frames (4 + 2) give what `feratt predict` gives for each decoded frame as a photo.
    decoded = [np.asarray(f) for f in iio.get_reader(str(clip), format="ffmpeg")]
    pngs = []
    for t in (0, 5):
        pngs.append(tmp_path / f"frame{t}.png")
        iio.imwrite(pngs[-1], decoded[t])
    capsys.readouterr()
    assert main(["predict", *map(str, pngs), "--workdir", str(trained), "--out", str(tmp_path / "photos"), "--json"]) == 0
    photos = json.loads(capsys.readouterr().out)
    for photo, t in zip(photos, (0, 5)):
        np.testing.assert_allclose([photo["probabilities"][n] for n in names if n in plain[t]], p[t], atol=1e-5)
        assert photo["box"] == [int(plain[t][k]) for k in ("box_row", "box_col", "box_height", "box_width")]
    # The annotated video: every frame, with the box drawn in green where the CSV says.
    annotated = [np.asarray(f) for f in iio.get_reader(str(out / "0.0" / "clip_annotated.mp4"), format="ffmpeg")]
    assert len(annotated) == 6 and annotated[0].shape == decoded[0].shape
    r, c, h, w = (int(plain[0][k]) for k in ("box_row", "box_col", "box_height", "box_width"))
    edge = annotated[0][r + h // 2, c].astype(int)
    assert edge[1] > 150 and edge[0] < 100 and edge[2] < 100, edge

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video at all")
    capsys.readouterr()
    assert main(["predict", str(broken), "--workdir", str(trained), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"feratt predict: error: cannot read video {broken}"), err
