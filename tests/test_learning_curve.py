"""experiments/learning_curve.py: the curve it writes, and bad input stopped before any work."""

from __future__ import annotations

import json

import pytest

import experiment_scripts

TINY = "experiments/configs/ferattention.py:tiny"


def test_writes_the_curve_at_each_evaluation(tmp_path, monkeypatch):
    """Two steps of the yardstick CNN: a point per --eval-every steps, images = steps x batch.

    (The script once failed at its first step: its jitted step shadowed the module `step`.)
    """
    monkeypatch.chdir(experiment_scripts.EXPERIMENTS.parent)
    out = tmp_path / "curve.json"
    lc = experiment_scripts.load("learning_curve")
    assert lc.main(["--config", TINY, "--steps", "3", "--eval-every", "2", "--batch-size", "4", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [(p["step"], p["images"]) for p in report["curve"]] == [(2, 8), (3, 12)]
    assert report["chance"] == 1 / 8
    assert all(0.0 <= p["test_accuracy"] <= 1.0 and p["train_ce"] > 0 for p in report["curve"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--render", "downsample_size=12"], "config: RenderConfig: clahe_tiles=8"),
        (["--render", "downsample_size=1x2"], "config: RenderConfig downsample_size='1x2': expected"),
        (["--render", "downsample_size"], "override '--config.data.render.downsample_size' is not of the form"),
        (["--set", "data.bogus=1"], "unknown config field 'data.bogus'"),
        (["--model", "bogus"], "unknown model 'bogus'"),
        (["--model", "preactresnet18", "--model-options", "{'zzz': 1}"], "model 'preactresnet18' does not take option(s) ['zzz']"),
        (["--model-options", "[1"], "--model-options '[1': expected a Python dict"),
        (["--steps", "0"], "--steps 0: must be >= 1"),
        (["--json", "no_such_folder/curve.json"], "--json no_such_folder/curve.json: folder no_such_folder does not exist"),
    ],
)
def test_bad_input_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(experiment_scripts.EXPERIMENTS.parent)
    lc = experiment_scripts.load("learning_curve")
    lc_factory = pytest.importorskip("feratt_jax.factory")
    monkeypatch.setattr(lc_factory, "make_inputs", lambda config: pytest.fail("bad input reached the data pipeline"))
    with pytest.raises(SystemExit) as exit_info:
        lc.main(["--config", TINY, *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("learning_curve.py: error: " + message) and not any("Traceback" in line for line in err), err
