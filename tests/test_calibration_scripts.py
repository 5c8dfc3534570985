"""experiments/hog_probe.py and experiments/generator_sweep.py: argument checks and the 32 px view (the probes themselves are not run here)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import experiment_scripts


def test_generator_overrides_are_parsed_and_checked_before_any_work():
    hp = experiment_scripts.load("hog_probe")
    assert hp.parse_generator_overrides(["posing_variation=0.25", "gain_range=0.5,0.9"]) == {
        "posing_variation": 0.25,
        "gain_range": [0.5, 0.9],
    }
    with pytest.raises(ValueError, match="posing_variaton"):
        hp.parse_generator_overrides(["posing_variaton=0.25"])
    with pytest.raises(ValueError, match="posing_variation"):
        hp.parse_generator_overrides(["posing_variation=1.5"])  # a probability
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        hp.parse_generator_overrides(["posing_variation"])


def test_half_resolution_is_an_area_average():
    hp = experiment_scripts.load("hog_probe")
    x = np.zeros((2, 64, 64))
    x[:, :, 32:] = 1.0  # a vertical edge on a pixel boundary of both grids
    half = hp._halve(x)
    assert half.shape == (2, 32, 32)
    np.testing.assert_allclose(half.mean(), x.mean(), atol=1e-6)
    np.testing.assert_allclose(half[:, 16, 2], 0.0, atol=1e-3)
    np.testing.assert_allclose(half[:, 16, -3], 1.0, atol=1e-3)


def test_sweep_settings_and_bad_output_folder(tmp_path, monkeypatch):
    gs = experiment_scripts.load("generator_sweep")
    assert gs.parse_setting("x:motion_scale=0.7,fold_contrast=2") == ("x", {"motion_scale": 0.7, "fold_contrast": 2})
    for name, gen in map(gs.parse_setting, gs.DEFAULT_SETTINGS):
        assert name and isinstance(gen, dict)
    with pytest.raises(ValueError, match="NAME:FIELD=VALUE"):
        gs.parse_setting("motion_scale=0.7")
    # A missing output folder stops the sweep before the first probe.
    monkeypatch.setattr(gs.hog_probe, "run_probe", lambda **kw: pytest.fail("a probe ran"))
    monkeypatch.setattr(sys, "argv", ["generator_sweep.py", "--out", str(tmp_path / "missing" / "s.json")])
    with pytest.raises(SystemExit):
        gs.main()


def test_fold_summary_averages_accuracies_and_per_class_figures():
    hp = experiment_scripts.load("hog_probe")
    folds = [
        {"clean_face_accuracy": 0.8, "clean_face_per_class": {"neutral": 0.5, "fear": 1.0}},
        {"clean_face_accuracy": 0.7, "clean_face_per_class": {"neutral": 0.7, "fear": 0.8}},
    ]
    s = hp.summarize_folds(folds)
    assert s["clean_face_accuracy"] == 0.75
    assert s["clean_face_accuracy_folds"] == [0.8, 0.7]
    assert s["clean_face_accuracy_std"] == 0.05
    assert s["clean_face_per_class"] == {"neutral": 0.6, "fear": 0.9}


def test_probe_rejects_more_folds_than_subjects_allow_before_any_work(monkeypatch, capsys):
    hp = experiment_scripts.load("hog_probe")
    monkeypatch.setattr(hp, "run_probe", lambda *a, **kw: pytest.fail("a probe ran"))
    monkeypatch.setattr(sys, "argv", ["hog_probe.py", "--subjects", "24", "--test-subjects", "12", "--folds", "3"])
    with pytest.raises(SystemExit):
        hp.main()
    assert "--folds 3" in capsys.readouterr().err


def test_calibration_candidates_change_only_the_data_side():
    from feratt_jax import configs

    base = configs.load_config("preactresnet18:quick").to_dict()
    for name in experiment_scripts.load("calibration_candidates").CANDIDATES:
        cand = configs.load_config(f"{experiment_scripts.EXPERIMENTS / 'calibration_candidates.py'}:{name}").to_dict()
        assert cand["model"] == base["model"] and cand["optimizer"] == base["optimizer"] and cand["loss"] == base["loss"], name
        assert cand["data"]["render_preset"] == cand["data"]["eval_render_preset"] == "train", name


def test_benchmark_size_is_the_calibration_run():
    # The committed calibration figure (docs/training.md section 0) was trained
    # with calibration_candidates.py:v2_100subjects; the `benchmark` size must be
    # that config, or the figure no longer describes it.
    from feratt_jax import configs
    from feratt_jax.data import synthfaces

    bench = configs.flatten(configs.named_config("preactresnet18", "benchmark").to_dict())
    cand = configs.flatten(
        configs.load_config(f"{experiment_scripts.EXPERIMENTS / 'calibration_candidates.py'}:v2_100subjects").to_dict()
    )
    generator = cand.pop("data.generator")
    assert synthfaces.GeneratorConfig(**generator) == synthfaces.GeneratorConfig()  # its faces are the default ones
    assert bench == cand


def test_probe_report_records_every_generator_field(tmp_path):
    """A report must say what it measured after the generator's defaults change (they did on 2026-12-03)."""
    import dataclasses
    import json

    from feratt_jax.data import synthfaces

    hp = experiment_scripts.load("hog_probe")
    report = hp.run_probe(
        num_subjects=4, intensities=1, test_subjects=2, n_train=16, n_test=16, presets=("identity",),
        cache_dir=str(tmp_path), generator={"posing_variation": 0.25}, folds=1,
    )
    recorded = json.loads(json.dumps(report))["generator_config"]
    assert recorded["posing_variation"] == 0.25
    defaults = synthfaces.GeneratorConfig()
    assert recorded["fold_contrast"] == defaults.fold_contrast
    assert recorded["gain_range"] == list(defaults.gain_range)
    assert set(recorded) == {f.name for f in dataclasses.fields(defaults)}
