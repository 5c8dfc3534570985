"""Has a run's validation accuracy plateaued? The benchmark calibration's learning curve (docs/training.md section 0).

Reads the trainer's ``metrics.jsonl`` of one workdir and writes, to ``--out``:

* ``<name>.json``: validation accuracy against training images seen, the
  images seen until 25 % (2x chance) and 50 % were first reached, and the
  plateau test of issue 13: the last quarter of the steps gains < 2 points;
* ``<name>.png``: the curve.

The calibration run of the paper's baseline protocol on the ``train`` preset:

    feratt train --config experiments/configs/preactresnet18.py:quick --workdir runs/base_cal \\
        --config.data.render_preset=train --config.data.eval_render_preset=train \\
        --config.train.num_steps=6000 --config.train.eval_every=500 --config.train.checkpoint_every=500
    python experiments/calibration_curve.py --workdir runs/base_cal \\
        --out experiments/results/benchmark_calibration --name baseline_train_preset
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Sequence


def curve_summary(steps: Sequence[int], accuracy: Sequence[float], batch_size: int, planned_steps: int) -> dict:
    """Images to 25 % / 50 % and the last-quarter gain (points) of a validation curve."""
    if not steps:
        raise ValueError("no validation points in the run (val/accuracy never logged)")
    images = [s * batch_size for s in steps]

    def first_reaching(level: float) -> int | None:
        return next((n for n, a in zip(images, accuracy) if a >= level), None)

    last = steps[-1]
    # The last evaluation at or before 3/4 of the run so far.
    earlier = [a for s, a in zip(steps, accuracy) if s <= 0.75 * last]
    gain = 100.0 * (accuracy[-1] - earlier[-1]) if earlier else None
    return {
        "steps": list(steps),
        "images": images,
        "val_accuracy": list(accuracy),
        "images_to_25pct": first_reaching(0.25),
        "images_to_50pct": first_reaching(0.50),
        "last_step": last,
        "planned_steps": planned_steps,
        "finished": last >= planned_steps,
        "last_quarter_gain_points": gain,
        "plateau": gain is not None and gain < 2.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    args = p.parse_args(argv)
    from feratt_jax import plots

    workdir = pathlib.Path(args.workdir)
    config = json.loads((workdir / "config.json").read_text())
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    val = [(r["step"], r["val/accuracy"]) for r in rows if "val/accuracy" in r]
    train = config["train"]
    summary = curve_summary([s for s, _ in val], [a for _, a in val], int(train["batch_size"]), int(train["num_steps"]))
    summary["workdir_config"] = {k: config[k] for k in ("model", "data", "train", "optimizer") if k in config}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    plots.curves_png(
        out / f"{args.name}.png",
        [n / 1000 for n in summary["images"]],
        {"validation accuracy": [100 * a for a in summary["val_accuracy"]]},
        "training images seen (thousands)",
        "accuracy (%)",
        args.name,
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "workdir_config"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
