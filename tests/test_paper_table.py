"""experiments/paper_table.py: the table's arithmetic and format (training is feratt kfold's, tested there)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

import experiment_scripts


def _paper_table():
    return experiment_scripts.load("paper_table")


def _fold(tmp_path: pathlib.Path, k: int, cm: list[list[int]], speed: float = 0.0, val: tuple[float, ...] = (0.2, 0.4, 0.5, 0.51)) -> dict:
    d = tmp_path / f"fold_{k}"
    (d / "eval").mkdir(parents=True, exist_ok=True)
    (d / "eval" / "metrics.json").write_text(json.dumps({"step": 100 * len(val), "test": {"confusion_matrix": cm}, "train_images_per_s": speed}))
    (d / "config.json").write_text(json.dumps({"train": {"batch_size": 4, "num_steps": 100 * len(val)}}))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": 100 * (i + 1), "val/accuracy": a}) + "\n" for i, a in enumerate(val)))
    return {"fold": k, "workdir": str(d)}


def test_confusion_matrices_are_summed_over_folds(tmp_path):
    pt = _paper_table()
    rows = [_fold(tmp_path, 0, [[3, 1], [0, 4]], 40.0), _fold(tmp_path, 1, [[2, 2], [1, 3]], 50.0)]
    reports = pt.fold_reports(rows)
    np.testing.assert_array_equal(pt.summed_confusion(reports), [[5, 3], [1, 7]])
    assert pt.mean_training_speed(reports) == 45.0


def test_each_folds_plateau_is_read_from_its_curve(tmp_path):
    pt = _paper_table()
    rows = [
        _fold(tmp_path, 0, [[1]], val=(0.2, 0.4, 0.5, 0.51)),  # step 300 -> 400: +1 point, a plateau
        _fold(tmp_path, 1, [[1]], val=(0.2, 0.3, 0.4, 0.55)),  # +15 points, still rising
    ]
    curves = pt.fold_curves(rows)
    assert [c["plateau"] for c in curves] == [True, False]
    assert curves[1]["last_quarter_gain_points"] == pytest.approx(15.0) and curves[1]["images_to_50pct"] == 1600
    assert pt.plateau_cell(curves) == "1/2 (max +15.0)"
    assert pt.plateau_cell([{"plateau": False, "last_quarter_gain_points": None}]) == "0/1"


def _row(folds: int, steps: int, speed: float, gains: list[float], mean: tuple[float, ...], std: tuple[float, ...]) -> dict:
    """A table row as main() builds it (metrics as fractions)."""
    keys = ("accuracy", "macro_precision", "macro_recall", "reference_f1")
    return {
        "method": "FERAtt+Cls",
        "folds": folds,
        "steps": steps,
        "images_per_s": speed,
        "curves": [{"plateau": g < 2, "last_quarter_gain_points": g} for g in gains],
        "network": "input 64px",
        "mean": dict(zip(keys, mean)),
        "std": dict(zip(keys, std)),
    }


def test_table_is_in_the_papers_format_in_percent():
    pt = _paper_table()
    row = _row(2, 800, 52.25, [1.5, 2.26], (0.5, 0.25, 0.125, 0.1), (0.01, 0.02, 0.0, 0.005))
    text = pt.table_markdown([row], "python experiments/paper_table.py --folds 2", ["size `quick`"])
    assert "| Method | Acc. | Prec. | Rec. | F1 | folds | steps/fold | plateaued | train img/s | network |" in text
    assert "| FERAtt+Cls | 50.00 +- 1.00 | 25.00 +- 2.00 | 12.50 +- 0.00 | 10.00 +- 0.50 | 2 | 800 | 1/2 (max +2.3) | 52.2 | input 64px |" in text
    assert "python experiments/paper_table.py --folds 2" in text and "- size `quick`" in text


def test_a_budget_stopped_run_is_tabled_from_its_first_finished_folds(tmp_path):
    pt = _paper_table()
    method = tmp_path / "ferattention"
    _fold(method, 0, [[1]])
    _fold(method, 2, [[1]])  # fold 1 was stopped by the budget: fold 2 must not count
    (method / "fold_1" / "eval").mkdir(parents=True)
    assert pt.finished_folds(method, 5) == 1
    # A stopped fold evaluated by hand (feratt eval: splits only) is not finished either.
    (method / "fold_1" / "eval" / "metrics.json").write_text(json.dumps({"test": {"confusion_matrix": [[1]]}}))
    assert pt.finished_folds(method, 5) == 1
    _fold(method, 1, [[1]])
    assert pt.finished_folds(method, 5) == 3 and pt.finished_folds(method, 2) == 2
    assert pt.finished_folds(tmp_path / "absent", 5) == 0


def test_a_single_fold_row_reports_no_spread():
    pt = _paper_table()
    row = _row(1, 6000, 700.0, [5.0], (0.65, 0.5, 0.25, 0.125), (0.0, 0.0, 0.0, 0.0))
    text = pt.table_markdown([row], "cmd", [])
    assert "| FERAtt+Cls | 65.00 | 50.00 | 25.00 | 12.50 | 1 | 6000 | 0/1 (max +5.0) | 700.0 | input 64px |" in text


def test_method_configs_are_the_three_papers_methods_at_the_chosen_size():
    pt = _paper_table()
    names = [stem for stem, _ in pt.METHODS]
    assert names == ["preactresnet18", "ferattention", "ferattentiongmm", "preactresnet18_narrow"]
    narrow = pt.method_config("preactresnet18_narrow", "quick", [])
    ferattention = pt.method_config("ferattention", "quick", [])
    assert narrow.model.baseline_width == ferattention.model.backbone_width == 16
    assert pt.model_description(narrow).startswith("input 32px, width 16,")
    assert pt.method_config("preactresnet18_narrow", "full", []).model.baseline_width == 64  # = the baseline at full size
    baseline = pt.method_config("preactresnet18", "quick", ["--config.train.num_steps=7"])
    assert baseline.model.input_size == 32 and baseline.train.num_steps == 7
    assert pt.model_description(baseline) == (
        "input 32px, full width, standardized input, BN statistics re-estimated over 16 batches before each evaluation"
    )
    table_setting = pt.method_config("preactresnet18", "quick", ["--config.train.precise_bn_batches=0"])
    assert pt.model_description(table_setting) == "input 32px, full width, standardized input"
    full = pt.method_config("ferattentiongmm", "full", [])
    assert full.train.num_steps == 90_000 and full.model.num_filters == 32
    assert pt.model_description(full) == "input 64px, decoder 32, 8 feature blocks, classifier width 64"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--size", "benchmark", "--set", "data.render.downsample_size=12"], "preactresnet18: config: RenderConfig: clahe_tiles=8"),
        (["--size", "bogus"], "preactresnet18: unknown config argument 'bogus'"),
        (["--size", "quick", "--set", "train.bogus=1"], "preactresnet18: unknown config field 'train.bogus'"),
        (["--size", "quick", "--folds", "11"], "preactresnet18: --folds 11 exceeds the 10 folds"),
    ],
)
def test_bad_input_is_one_line_before_any_work(tmp_path, capsys, argv, message):
    """A bad --size/--set/--folds names the method and field in one line, and creates no folder.

    (It was a traceback from the first fold's trainer, after any method before it had trained.)
    """
    pt = _paper_table()
    workdir, out = tmp_path / "runs", tmp_path / "table"
    with pytest.raises(SystemExit) as exit_info:
        pt.main(["--methods", "preactresnet18", "--folds", "1", *argv, "--workdir", str(workdir), "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("paper_table.py: error: " + message) and not any("Traceback" in line for line in err), err  # argparse: usage, then the error
    assert not workdir.exists() and not out.exists()


@pytest.mark.parametrize("opt_out", [False, True])
def test_the_fast_cpu_flags_are_applied_as_feratt_train_does(tmp_path, monkeypatch, opt_out):
    """paper_table.py trains in its own process, so it must add the XLA CPU flags itself (it did not)."""
    from feratt_jax import xla_cpu

    calls = []
    monkeypatch.setattr(xla_cpu, "apply_fast_cpu_flags", lambda *a, **k: calls.append(1))
    pt = _paper_table()
    argv = ["--size", "bogus", "--methods", "preactresnet18", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "t")]
    with pytest.raises(SystemExit):  # stops at the config check, after the flags
        pt.main(argv + ["--no-fast-cpu-flags"] * opt_out)
    assert calls == ([] if opt_out else [1])
