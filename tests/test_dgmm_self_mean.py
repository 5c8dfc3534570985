"""experiments/dgmm_self_mean.py: the figures behind reference defect 20 (docs/reference.md section 7)."""

from __future__ import annotations

import json

import pytest

import experiment_scripts


def _best(rows, key, pick=min):
    return pick(r[key] for r in rows)


def test_random_embeddings_score_only_with_the_row_in_its_own_mean():
    script = experiment_scripts.load("dgmm_self_mean")
    run = script.measure(batch=32, classes=8, dim=32, draws=6, seed=0, scales=(0.3, 0.5))
    reference, fixed = run["rules"]["row_in_own_mean (reference)"], run["rules"]["row_left_out (default)"]
    # Noise looks learned under the reference's rule, not under the fix ...
    assert _best(reference["random"], "dgmm_loss") < 0.25 and _best(reference["random"], "ncm_accuracy_pct", max) > 80
    assert _best(fixed["random"], "dgmm_loss") > 0.55 and _best(fixed["random"], "ncm_accuracy_pct", max) < 25
    # ... while both rules still reward an embedding that separates the classes.
    for rule in (reference, fixed):
        assert _best(rule["informative"], "dgmm_loss") < 0.1
        assert _best(rule["informative"], "ncm_accuracy_pct") > 95


def test_cli_writes_the_json_and_refuses_a_batch_that_classes_do_not_divide(tmp_path, capsys):
    script = experiment_scripts.load("dgmm_self_mean")
    out = tmp_path / "figures.json"
    assert script.main(["--dims", "8", "--draws", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["dim"] for r in report["runs"]] == [8] and "--dims 8" in report["command"]
    assert script.main(["--out", str(tmp_path / "missing" / "f.json")]) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(ValueError, match="multiple of --classes"):
        script.measure(batch=30, classes=8, dim=4, draws=1, seed=0)
