"""feratt_jax.learning_curves: milestones and the plateau test of a run's validation curve."""

from __future__ import annotations

import json

import pytest

from feratt_jax.learning_curves import curve_summary, decisive_gain, fitted_gain, gain_text, read_validation_curve


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


def test_fitted_gain_by_hand():
    # x centred on 3500: -500, 0, +500 (Sxx = 500000); y 0.80, 0.86, 0.81: sum of x*y = 5,
    # slope 1e-5 per step, times the 1000-step span: 1 point.
    gain, se = fitted_gain([3000, 3500, 4000], [0.80, 0.86, 0.81], eval_size=256)
    assert gain == pytest.approx(1.0)
    # Binomial at the mean 0.8233: sqrt(p(1-p)/256) = 0.02384, times span/sqrt(Sxx) = 1000/707.1.
    assert se == pytest.approx(100 * 0.023836 * 1000 / 707.107, rel=1e-3)
    assert fitted_gain([3000, 4000], [0.8, 0.9]) == (None, None)
    assert fitted_gain([1, 2, 3], [0.1, 0.2, 0.3])[1] is None  # no eval_size, no standard error


def test_the_verdict_reads_the_line_through_the_last_quarter_not_its_end_points():
    steps = [1000, 2000, 3000, 3250, 3500, 3750, 4000]  # 3/4 of 4000: the quarter is 3000..4000
    # Rising through the quarter (70 -> 82 %), then one low evaluation: the end points say +1
    # point (a plateau by the old verdict); the line says +4 (sum of x*y over x = -2..2 is 0.10,
    # slope 0.01 per 250 steps, 4 of them).
    dip = curve_summary(steps, [0.3, 0.5, 0.70, 0.74, 0.78, 0.82, 0.71], 32, 4000)
    assert dip["last_quarter_gain_points"] == pytest.approx(1.0)
    assert dip["last_quarter_fit_gain_points"] == pytest.approx(4.0) and not dip["plateau"]
    # Level but noisy: the end points say +3 (no plateau by the old verdict), the line says 0.
    level = curve_summary(steps, [0.3, 0.5, 0.80, 0.86, 0.82, 0.80, 0.83], 32, 4000, eval_size=256)
    assert level["last_quarter_gain_points"] == pytest.approx(3.0)
    assert level["last_quarter_fit_gain_points"] == pytest.approx(0.0, abs=1e-9) and level["plateau"]
    # mean 0.822 over 256 images; Sxx = 10 * 250^2; span 1000.
    assert level["last_quarter_fit_se_points"] == pytest.approx(100 * (0.822 * 0.178 / 256) ** 0.5 * 1000 / 790.569, rel=1e-3)
    assert decisive_gain(level) == level["last_quarter_fit_gain_points"]
    assert gain_text(level) == "+0.0 +- 3.0 (ends +3.0)" and gain_text(dip) == "+4.0 (ends +1.0)"
    # Fewer than three evaluations in the quarter: the end points decide, as before.
    two = curve_summary([500, 1000, 1500, 2000], [0.10, 0.30, 0.55, 0.56], 32, 2000)
    assert two["last_quarter_fit_gain_points"] is None and decisive_gain(two) == pytest.approx(1.0)
    assert gain_text(two) == "+1.0" and gain_text({"last_quarter_gain_points": None}) == "-"


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
