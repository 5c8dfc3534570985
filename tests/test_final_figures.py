"""`feratt train` ends with its pictures in the workdir when ``train.final_figures`` is on (the quick config)."""

from __future__ import annotations

import json
import pathlib

from feratt_jax import configs
from feratt_jax import train as train_lib
from feratt_jax.cli import main
from feratt_jax.step import evaluate_split

REPO = pathlib.Path(__file__).resolve().parents[1]
PREACT_TINY = f"{REPO / 'experiments' / 'configs' / 'preactresnet18.py'}:tiny"


def test_quick_config_asks_for_final_figures_and_full_size_does_not():
    assert configs.load_config(f"{REPO / 'experiments' / 'configs' / 'ferattention.py'}:quick").train.final_figures
    assert not configs.load_config(f"{REPO / 'experiments' / 'configs' / 'ferattention.py'}").train.final_figures


def test_train_writes_confusion_and_attention_pngs(tmp_path, capsys, monkeypatch):
    common = [
        "train", "--config", PREACT_TINY, f"--config.data.cache_dir={tmp_path / 'cache'}",
        "--config.data.loader=numpy", "--config.train.num_steps=1",
    ]
    assert main([*common, "--workdir", str(tmp_path / "off")]) == 0
    assert not (tmp_path / "off" / "eval" / "confusion_test.png").exists()
    evaluated = []

    def counting(eval_step, state, arrays, *args, **kwargs):
        evaluated.append(len(arrays["image"]))
        return evaluate_split(eval_step, state, arrays, *args, **kwargs)

    monkeypatch.setattr(train_lib, "evaluate_split", counting)
    assert main([*common, "--workdir", str(tmp_path / "on"), "--config.train.final_figures=True"]) == 0
    # One validation pass (step 1, whose state is the best checkpoint: the
    # final report reuses it) and one test pass; nothing evaluated twice.
    assert evaluated == [16, 16]
    out = tmp_path / "on" / "eval"
    for name in ("confusion_test.png", "attention_test.png"):
        assert (out / name).stat().st_size > 1000, name
    assert "figures:" in capsys.readouterr().out
    # The figures and the test entry are those of the best checkpoint (step 1: the only evaluation).
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["checkpoint_step"] == 1 and sum(map(sum, metrics["test"]["confusion_matrix"])) == 16
    assert metrics["val"]["checkpoint_step"] == 1 and sum(map(sum, metrics["val"]["confusion_matrix"])) == 16
    logged = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val/accuracy"] for r in logged if "val/accuracy" in r] == [metrics["val"]["accuracy"]]
