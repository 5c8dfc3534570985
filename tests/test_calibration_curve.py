"""experiments/calibration_curve.py: a workdir's validation curve to JSON and PNG (the arithmetic: test_learning_curves)."""

from __future__ import annotations

import json

import pytest

import experiment_scripts


def _module():
    return experiment_scripts.load("calibration_curve")


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


def test_overlays_an_earlier_curve_and_refuses_a_bad_one_before_writing(tmp_path, monkeypatch):
    cc = _module()
    from feratt_jax import plots

    drawn = []
    draw = plots.curves_png

    def recording_curves_png(path, x, series, *args, **kwargs):
        curves = {name: list(ys[1] if isinstance(ys, tuple) else ys) for name, ys in series.items()}  # (xs, ys): own x
        drawn.append((curves, kwargs.get("band")))
        return draw(path, x, series, *args, **kwargs)

    monkeypatch.setattr(plots, "curves_png", recording_curves_png)
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "config.json").write_text(json.dumps({"train": {"batch_size": 8, "num_steps": 40}}))
    rows = [{"step": 20, "val/accuracy": 0.25}, {"step": 40, "val/accuracy": 0.5}]
    (wd / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    assert cc.main(["--workdir", str(wd), "--out", str(out), "--name", "v2"]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"steps": [1]}))
    for item in (f"v2={bad}", f"v2={tmp_path / 'missing.json'}", "no-equals-sign"):
        with pytest.raises(SystemExit):
            cc.main(["--workdir", str(wd), "--out", str(out), "--name", "v3", "--before", item])
        assert not (out / "v3.json").exists()
    with pytest.raises(SystemExit):
        cc.main(["--workdir", str(wd), "--out", str(out), "--name", "v3", "--band", "65"])
    args = ["--workdir", str(wd), "--out", str(out), "--name", "v3", "--before", f"v2={out / 'v2.json'}", "--band", "65,85"]
    assert cc.main(args) == 0
    assert (out / "v3.png").stat().st_size > 1000
    # v2 alone, then v3 with v2's curve overlaid (read back from v2.json, in percent) and the band
    assert drawn[0] == ({"validation accuracy": [25.0, 50.0]}, None)
    assert drawn[-1][0] == {"v2": [25.0, 50.0], "validation accuracy": [25.0, 50.0]}
    assert drawn[-1][1][:2] == (65.0, 85.0) and len(drawn) == 2  # the refused calls drew nothing


def test_from_json_recomputes_and_redraws_a_committed_curve_without_its_run(tmp_path, capsys):
    cc = _module()
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "config.json").write_text(json.dumps({"train": {"batch_size": 8, "num_steps": 40}, "data": {"val_size": 256}}))
    rows = [{"step": s, "val/accuracy": a} for s, a in [(10, 0.2), (30, 0.80), (35, 0.86), (40, 0.83)]]
    (wd / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    assert cc.main(["--workdir", str(wd), "--out", str(out), "--name", "a"]) == 0
    first = json.loads((out / "a.json").read_text())
    # An old file: written before the fitted gain existed.
    for key in ("last_quarter_fit_gain_points", "last_quarter_fit_se_points"):
        first.pop(key)
    (out / "old.json").write_text(json.dumps(first))
    assert cc.main(["--from-json", str(out / "old.json"), "--out", str(out), "--name", "b"]) == 0
    again = json.loads((out / "b.json").read_text())
    assert again == json.loads((out / "a.json").read_text())  # the same summary, workdir_config kept
    assert again["last_quarter_fit_gain_points"] == pytest.approx(3.0) and (out / "b.png").stat().st_size > 1000
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"steps": [10]}))
    with pytest.raises(SystemExit):
        cc.main(["--from-json", str(bad), "--out", str(out), "--name", "c"])
    assert "--from-json" in capsys.readouterr().err and not (out / "c.json").exists()
    with pytest.raises(SystemExit):
        cc.main(["--workdir", str(wd), "--from-json", str(bad), "--out", str(out), "--name", "c"])


def test_a_run_started_from_a_checkpoint_is_drawn_from_where_it_started(tmp_path, monkeypatch):
    """--start-images shifts the drawn curve only; the JSON keeps the run's counts, and carries the start to overlays and redraws."""
    cc = _module()
    from feratt_jax import plots

    drawn = []
    draw = plots.curves_png

    def recording_curves_png(path, x, series, *args, **kwargs):
        drawn.append({name: list(ys[0]) if isinstance(ys, tuple) else list(x) for name, ys in series.items()})
        return draw(path, x, series, *args, **kwargs)

    monkeypatch.setattr(plots, "curves_png", recording_curves_png)
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "config.json").write_text(json.dumps({"train": {"batch_size": 8, "num_steps": 40}}))
    (wd / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "val/accuracy": a}) + "\n" for s, a in ((20, 0.7), (40, 0.8))))
    out = tmp_path / "out"
    assert cc.main(["--workdir", str(wd), "--out", str(out), "--name", "fork", "--start-images", "1000"]) == 0
    got = json.loads((out / "fork.json").read_text())
    assert got["images"] == [160, 320] and got["start_images"] == 1000
    assert drawn[-1] == {"validation accuracy": [1.16, 1.32]}  # thousands of images, from 1,000 on
    assert cc.main(["--workdir", str(wd), "--out", str(out), "--name", "both", "--before", f"fork={out / 'fork.json'}"]) == 0
    assert drawn[-1] == {"fork": [1.16, 1.32], "validation accuracy": [0.16, 0.32]}
    assert cc.main(["--from-json", str(out / "fork.json"), "--out", str(out), "--name", "redrawn"]) == 0
    assert drawn[-1] == {"validation accuracy": [1.16, 1.32]}
    assert json.loads((out / "redrawn.json").read_text())["start_images"] == 1000
    with pytest.raises(SystemExit):
        cc.main(["--workdir", str(wd), "--out", str(out), "--name", "bad", "--start-images", "-1"])
