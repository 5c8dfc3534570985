"""The calibration scripts (hog_probe, face_scale, generator_sweep, calibration_candidates, sweep_summary, gpu_paper_table.sh --jobs): argument checks and their arithmetic (the probes and trainings themselves are not run here)."""

from __future__ import annotations

import json
import subprocess
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


def test_calibrated_size_is_the_measured_calibration_run():
    # The `calibrated` size stands for the committed runs of cpu_ds16_nb1 (constant rate) and
    # cpu_ds16_nb1_decay (the tenfold cut from its best checkpoint); their configs are in the
    # committed curve JSONs. If the size drifts from them, their figures no longer describe it.
    from feratt_jax import configs, optimizers
    from feratt_jax.data.pipeline import DataConfig

    results = experiment_scripts.EXPERIMENTS / "results" / "benchmark_calibration"
    constant = json.loads((results / "cpu_ds16_nb1" / "baseline_ds16_nb1_cpu.json").read_text())["workdir_config"]
    cut = json.loads((results / "cpu_ds16_nb1_decay" / "baseline_ds16_nb1_decay_cpu.json").read_text())["workdir_config"]
    cut_from = json.loads((results / "cpu_ds16_nb1" / "baseline_ds16_nb1_cpu_test.json").read_text())["test"]["checkpoint_step"]
    cut_best = json.loads((results / "cpu_ds16_nb1_decay" / "baseline_ds16_nb1_decay_cpu_test.json").read_text())["test"]["checkpoint_step"]
    size = configs.named_config("preactresnet18", "calibrated").to_dict()

    ran, now = DataConfig.from_dict(constant["data"]), DataConfig.from_dict(size["data"])
    assert now.render_config() == ran.render_config(), "training composites differ from the calibration run's"
    assert now.eval_render_config() == ran.eval_render_config(), "validation/test composites differ from the calibration run's"
    for field in ("num_subjects", "subjects_per_fold", "val_size", "test_size", "image_size", "fold", "face_seed", "eval_seed"):
        assert getattr(now, field) == getattr(ran, field), field
    assert now.generator_config() == ran.generator_config()
    assert size["model"] == constant["model"] == cut["model"]
    assert size["train"]["batch_size"] == constant["train"]["batch_size"]

    opt = size["optimizer"]
    rate = optimizers.learning_rate_schedule(
        opt["schedule"], opt["learning_rate"], size["train"]["num_steps"], step_size=opt["step_size"], step_gamma=opt["step_gamma"]
    )
    # 1e-3 up to the checkpoint the cut started from (step 19,000), 1e-4 after it, as the two runs.
    assert opt["step_size"] == cut_from == 19000
    assert float(rate(cut_from - 1)) == pytest.approx(constant["optimizer"]["learning_rate"]) == pytest.approx(1e-3)
    assert float(rate(cut_from)) == pytest.approx(cut["optimizer"]["learning_rate"]) == pytest.approx(1e-4)
    assert float(rate(size["train"]["num_steps"] - 1)) == pytest.approx(1e-4)  # one cut only
    assert size["train"]["num_steps"] >= cut_from + cut_best  # reaches the cut run's best checkpoint


@pytest.mark.parametrize("jobs_name", sorted(p.name for p in experiment_scripts.EXPERIMENTS.glob("calibration_sweep_gpu*.txt")))
def test_committed_gpu_jobs_build_valid_configs(jobs_name):
    """Every job of a committed GPU jobs file must pass config validation here, not fail on the device.

    (A 12 px line once did: the renderer's CLAHE needs a size its tiles divide.)
    """
    import argparse
    import itertools
    import re
    import shlex

    pt = experiment_scripts.load("paper_table")
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", nargs="+", default=[m for m, _ in pt.METHODS])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--set", action="append", default=[])
    for line in (experiment_scripts.EXPERIMENTS / jobs_name).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, *words = shlex.split(line)
        options = list(itertools.dropwhile(lambda w: re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", w), words))  # VAR=VALUE first
        args, _ = parser.parse_known_args(options)
        overrides = [f"--config.{kv}" for kv in args.set] + ([f"--config.train.num_steps={args.steps}"] if args.steps else [])
        try:
            pt.checked_configs(args.methods, "benchmark", overrides, args.folds)  # what paper_table.py checks first
        except ValueError as err:
            pytest.fail(f"{jobs_name} job {name}: {err}")


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


def _fake_fold(fold_dir, val_by_step, *, render=None, test=None, precision="default", num_steps=400):
    """A feratt train workdir as far as sweep_summary.py reads it (batch 10, eval every 100 steps)."""
    fold_dir.mkdir(parents=True)
    config = {"train": {"batch_size": 10, "num_steps": num_steps}, "data": {"render": render or {}}, "loss": {"reconstruction_form": "tanh"}}
    (fold_dir / "config.json").write_text(json.dumps(config))
    rows = [{"step": s, "train/accuracy": 0.1} for s in val_by_step] + [{"step": s, "val/accuracy": a} for s, a in val_by_step.items()]
    (fold_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    if test is not None:
        (fold_dir / "eval").mkdir()
        report = {"step": num_steps, "test": {"accuracy": test}, "device_kind": "fake", "default_matmul_precision": precision}
        (fold_dir / "eval" / "metrics.json").write_text(json.dumps(report))


def test_sweep_summary_tables_each_job_with_its_overrides_plateau_and_mean(tmp_path):
    ss = experiment_scripts.load("sweep_summary")
    sweep = tmp_path / "sweep"
    # Job a: two folds; fold 0 gains 0.70 - 0.60 = 10 points over its last quarter (steps 300 -> 400).
    _fake_fold(sweep / "a" / "m" / "fold_0", {100: 0.20, 200: 0.50, 300: 0.60, 400: 0.70}, render={"downsample_size": 24}, test=0.75)
    _fake_fold(sweep / "a" / "m" / "fold_1", {100: 0.30, 200: 0.80, 300: 0.81, 400: 0.82}, render={"downsample_size": 24}, test=0.85)
    # Job b: stopped by a budget at step 200 of 400 (flat, but not a plateau: unfinished).
    _fake_fold(sweep / "b" / "m" / "fold_0", {100: 0.1, 200: 0.1})
    (sweep / "b" / "table").mkdir()  # paper_table.py's output folder: not a method
    # Job c: finished at full float32 on a GPU (the precision comes from the environment, not the config).
    _fake_fold(sweep / "c" / "m" / "fold_0", {100: 0.1, 200: 0.1, 300: 0.1, 400: 0.1}, test=0.125, precision="highest")
    # Job d: the same as b but longer: its step count sets it apart, so every job of method m shows its own.
    _fake_fold(sweep / "d" / "m" / "fold_0", {100: 0.1, 200: 0.1}, num_steps=800)
    # Job e: another method, alone in the sweep: nothing to set it apart from.
    _fake_fold(sweep / "e" / "other" / "fold_0", {100: 0.1, 200: 0.1}, render={"downsample_size": 16})
    out = tmp_path / "out"
    assert ss.main(["--workdir", str(sweep), "--out", str(out), "--plot-method", "m", "--band", "65,85"]) == 0
    md = (out / "sweep.md").read_text()
    assert "| a | m | downsample_size=24, num_steps=400 | fold_0 | 75.0 | 70.0 (400) | +10.0 | no | 2 / 2 |" in md
    assert "| a | m | downsample_size=24, num_steps=400 | fold_1 | 85.0 | 82.0 (400) | +1.0 | yes | 1 / 2 |" in md
    assert "| a | m | | mean | 80.0 |" in md
    assert "| b | m | num_steps=400 | fold_0 | - | 10.0 (200) | +0.0 | unfinished | - / - |" in md
    assert "| c | m | num_steps=400, JAX_DEFAULT_MATMUL_PRECISION=highest | fold_0 | 12.5 | 10.0 (400) | +0.0 | yes | - / - |" in md
    assert "| d | m | num_steps=800 | fold_0 |" in md
    assert "| e | other | - | fold_0 |" in md
    assert (out / "sweep_curves.png").stat().st_size > 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [(r["job"], len(r["folds"])) for r in rows] == [("a", 2), ("b", 1), ("c", 1), ("d", 1), ("e", 1)]
    # Recomputed from its own sweep.json, without the runs: the same table, both commands kept once.
    again = tmp_path / "again"
    for source in (out, again):
        assert ss.main(["--from-json", str(source / "sweep.json"), "--out", str(again), "--plot-method", "m", "--band", "65,85"]) == 0
    def table(path):
        return [line for line in path.read_text().splitlines() if line.startswith("| ")]

    assert table(again / "sweep.md") == table(out / "sweep.md")
    command = json.loads((again / "sweep.json").read_text())["command"]
    assert command.startswith("python experiments/sweep_summary.py --workdir") and command.count("recomputed and redrawn by") == 1
    assert (again / "sweep_curves.png").stat().st_size > 0


def test_sweep_summary_refuses_a_folder_without_runs(tmp_path, capsys):
    ss = experiment_scripts.load("sweep_summary")
    with pytest.raises(SystemExit):
        ss.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "no JOB/METHOD/fold_k/metrics.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        ss.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "out"), "--band", "65"])
    assert "--band '65': expected LO,HI in percent" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": [{"folds": [{"curve": {"steps": []}}]}]}))
    with pytest.raises(SystemExit):
        ss.main(["--from-json", str(bad), "--out", str(tmp_path / "out")])
    assert "--from-json" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "jobs, message",
    [
        (None, "no such file"),
        ("# only a comment\n\n", "has no jobs"),
        ("a --methods preactresnet18\nb/c --methods preactresnet18\n", "line 2: job name 'b/c'"),
        ("a --methods preactresnet18\na --methods ferattention\n", "line 2: job 'a' named twice"),
    ],
)
def test_gpu_sweep_jobs_file_is_checked_before_any_work(tmp_path, jobs, message):
    """experiments/gpu_paper_table.sh --jobs: a bad file stops it with one line naming the file, before any output."""
    jobs_file = tmp_path / "jobs.txt"
    if jobs is not None:
        jobs_file.write_text(jobs)
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(experiment_scripts.EXPERIMENTS / "gpu_paper_table.sh"), "--jobs", str(jobs_file), "--workdir", str(tmp_path / "runs"), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert message in proc.stderr and str(jobs_file) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_plateau_report_rereads_every_committed_curve_kind(tmp_path, capsys):
    """experiments/plateau_report.py: a calibration curve, a sweep's folds and a paper table's folds, both verdicts."""
    pr = experiment_scripts.load("plateau_report")
    steps = [1000, 2000, 3000, 3250, 3500, 3750, 4000]
    dip = [0.3, 0.5, 0.70, 0.74, 0.78, 0.82, 0.71]  # end points +1, line +4 (test_learning_curves)
    level = [0.3, 0.5, 0.80, 0.86, 0.82, 0.80, 0.83]  # end points +3, line 0
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"steps": steps, "val_accuracy": dip, "planned_steps": 4000, "workdir_config": {"data": {"val_size": 1024}}}))
    sweep = tmp_path / "sweep" / "sweep.json"
    sweep.parent.mkdir()
    sweep.write_text(json.dumps({"rows": [{"job": "j", "method": "m", "folds": [{"fold": "fold_0", "curve": {"steps": steps, "val_accuracy": level}}]}]}))
    table = tmp_path / "tab" / "paper_table.json"
    table.parent.mkdir()
    table.write_text(json.dumps({"rows": [{"method": "Base", "folds": 1, "curves": [{"steps": [100, 200], "val_accuracy": [0.1, 0.2]}]}]}))
    other = tmp_path / "hog.json"
    other.write_text(json.dumps({"accuracy": 0.87}))
    out = tmp_path / "out" / "report.md"
    assert pr.main([str(cal), str(sweep), str(table), str(other), "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["curve"] for r in rows] == ["cal", "j/m/fold_0", "tab/Base/fold_0"]
    assert [r["eval_size"] for r in rows] == [1024, 256, 256]
    assert [(r["ends_plateau"], r["plateau"]) for r in rows] == [(True, False), (False, True), (False, False)]
    assert rows[0]["fit_gain_points"] == pytest.approx(4.0) and rows[2]["fit_gain_points"] is None
    md = out.read_text()
    # +- 100 * sqrt(0.75 * 0.25 / 1024) * 1000 / sqrt(10 * 250^2) = 1.7 (mean of the quarter: 0.75)
    assert "| cal | 4000 | 71.0 | 1024 | +1.0 | yes | +4.0 +- 1.7 | no |" in md
    assert "| j/m/fold_0 | 4000 | 83.0 | 256 | +3.0 | no | +0.0 +- 3.0 | yes |" in md
    assert "| tab/Base/fold_0 | 200 | 20.0 | 256 | +10.0 | no | - | no |" in md
    with pytest.raises(SystemExit):
        pr.main([str(other), "--out", str(tmp_path / "none.md")])
    assert "none of the files holds a validation curve" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pr.main([str(tmp_path / "missing.json"), "--out", str(tmp_path / "none.md")])
    assert "missing.json: no such file" in capsys.readouterr().err
    assert not (tmp_path / "none.md").exists()


def test_face_scale_widths_are_counted_by_hand():
    fs = experiment_scripts.load("face_scale")
    masks = np.zeros((3, 8, 8), bool)
    masks[0, 2:5, 1:7] = True  # columns 1..6: 6 px
    masks[1, 4, 3] = True  # a single pixel: 1 px
    masks[1, 6, 5] = True  # ...and a second in another row: columns 3..5, 3 px
    # masks[2] is empty and skipped
    np.testing.assert_array_equal(fs.mask_widths(masks), [6.0, 3.0])
    lm = np.zeros((2, 68, 2))
    lm[:, fs.MOUTH_RIGHT] = [[3.0, 4.0], [0.0, 2.0]]
    np.testing.assert_allclose(fs.landmark_widths(lm, fs.MOUTH_LEFT, fs.MOUTH_RIGHT), [5.0, 2.0])
    # 40 px of a 64 px composite that went through 16 px kept 10 px; no resampling keeps all 40.
    assert fs.surviving_pixels(40.0, 64, 16) == 10.0
    assert fs.surviving_pixels(40.0, 64, None) == 40.0


def test_face_scale_bad_preset_or_folder_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, str(experiment_scripts.EXPERIMENTS / "face_scale.py"), "--presets", "train,trian", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown render preset 'trian'" in proc.stderr.strip().splitlines()[-1]
    assert not out.exists()
    proc = subprocess.run(
        [sys.executable, str(experiment_scripts.EXPERIMENTS / "face_scale.py"), "--out", str(tmp_path / "no" / "scale.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr
