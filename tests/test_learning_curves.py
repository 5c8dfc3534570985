"""feratt_jax.learning_curves: milestones and the plateau test of a run's validation curve."""

from __future__ import annotations

import json

import pytest

from feratt_jax.learning_curves import curve_summary, read_validation_curve


def test_milestones_and_last_quarter_gain():
    s = curve_summary([500, 1000, 1500, 2000], [0.10, 0.30, 0.55, 0.56], batch_size=32, planned_steps=2000)
    assert s["images_to_25pct"] == 1000 * 32 and s["images_to_50pct"] == 1500 * 32
    # 3/4 of 2000 steps is 1500: 56 - 55 = 1 point < 2: a plateau.
    assert s["last_quarter_gain_points"] == pytest.approx(1.0) and s["plateau"] and s["finished"]
    rising = curve_summary([500, 1000, 1500, 2000], [0.10, 0.30, 0.55, 0.60], 32, 6000)
    assert rising["last_quarter_gain_points"] == pytest.approx(5.0) and not rising["plateau"] and not rising["finished"]
    # A fall counts as no gain: the curve stopped rising.
    falling = curve_summary([100, 200, 300, 400], [0.5, 0.7, 0.8, 0.7], 8, 400)
    assert falling["last_quarter_gain_points"] == pytest.approx(-10.0) and falling["plateau"]
    never = curve_summary([500], [0.12], 32, 6000)
    assert never["images_to_25pct"] is None and never["last_quarter_gain_points"] is None and not never["plateau"]
    with pytest.raises(ValueError, match="no validation points"):
        curve_summary([], [], 32, 10)


def _workdir(tmp_path, rows, train=None):
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "config.json").write_text(json.dumps({"train": train or {"batch_size": 8, "num_steps": 40}}))
    (wd / "metrics.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return wd


def test_reads_a_workdir_keeping_the_last_value_of_a_step_logged_twice(tmp_path):
    # A resumed run evaluates its checkpoint step again; rows may also come out of order.
    rows = [
        {"step": 10, "train/accuracy": 0.2},
        {"step": 20, "val/accuracy": 0.20},
        {"step": 40, "val/accuracy": 0.50},
        {"step": 20, "val/accuracy": 0.25},
        "",
    ]
    s = read_validation_curve(_workdir(tmp_path, rows))
    assert s["steps"] == [20, 40] and s["val_accuracy"] == [0.25, 0.5] and s["images"] == [160, 320]
    assert s["last_quarter_gain_points"] == pytest.approx(25.0) and s["finished"] and not s["plateau"]


def test_bad_workdirs_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config.json: missing"):
        read_validation_curve(tmp_path)
    wd = _workdir(tmp_path, [{"step": 20, "val/accuracy": 0.2}, "{not json"])
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not JSON"):
        read_validation_curve(wd)
    (wd / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 2.0}) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl: no validation points"):
        read_validation_curve(wd)
