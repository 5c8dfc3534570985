"""experiments/calibration_curve.py: the plateau test and milestones of a validation curve."""

from __future__ import annotations

import json

import pytest

import experiment_scripts


def _module():
    return experiment_scripts.load("calibration_curve")


def test_milestones_and_last_quarter_gain():
    cc = _module()
    s = cc.curve_summary([500, 1000, 1500, 2000], [0.10, 0.30, 0.55, 0.56], batch_size=32, planned_steps=2000)
    assert s["images_to_25pct"] == 1000 * 32 and s["images_to_50pct"] == 1500 * 32
    # 3/4 of 2000 steps is 1500: 56 - 55 = 1 point < 2: a plateau.
    assert s["last_quarter_gain_points"] == pytest.approx(1.0) and s["plateau"] and s["finished"]
    rising = cc.curve_summary([500, 1000, 1500, 2000], [0.10, 0.30, 0.55, 0.60], 32, 6000)
    assert rising["last_quarter_gain_points"] == pytest.approx(5.0) and not rising["plateau"] and not rising["finished"]
    never = cc.curve_summary([500], [0.12], 32, 6000)
    assert never["images_to_25pct"] is None and never["last_quarter_gain_points"] is None and not never["plateau"]
    with pytest.raises(ValueError, match="no validation points"):
        cc.curve_summary([], [], 32, 10)


def test_main_reads_a_workdir_and_writes_json_and_png(tmp_path):
    cc = _module()
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "config.json").write_text(json.dumps({"train": {"batch_size": 8, "num_steps": 40}, "model": {"name": "m"}}))
    rows = [{"step": 10, "train/accuracy": 0.2}, {"step": 20, "val/accuracy": 0.25}, {"step": 40, "val/accuracy": 0.5}]
    (wd / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert cc.main(["--workdir", str(wd), "--out", str(tmp_path / "out"), "--name", "c"]) == 0
    got = json.loads((tmp_path / "out" / "c.json").read_text())
    assert got["images"] == [160, 320] and got["images_to_50pct"] == 320
    assert got["last_quarter_gain_points"] == pytest.approx(25.0) and got["workdir_config"]["model"] == {"name": "m"}
    assert (tmp_path / "out" / "c.png").stat().st_size > 1000
