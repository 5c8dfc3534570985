"""Has a run's validation accuracy plateaued? The benchmark calibration's learning curve (docs/training.md section 0).

Reads the trainer's ``metrics.jsonl`` of one workdir
(:func:`feratt_jax.learning_curves.read_validation_curve`) and writes, to ``--out``:

* ``<name>.json``: validation accuracy against training images seen, the
  images seen until 25 % (2x chance) and 50 % were first reached, and the
  plateau test: the last quarter of the steps gains < 2 points (the rise of a
  line fitted through its evaluations, with the standard error that binomial
  evaluation noise gives it, and the two end points' difference);
* ``<name>.png``: the curve.

``--from-json`` takes a JSON this script wrote instead of a workdir (the run
need not exist any more): its summary is recomputed from the stored curve with
today's :func:`~feratt_jax.learning_curves.curve_summary` and redrawn, e.g. to
give an old figure the current plot layout and plateau fields.

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a feratt train workdir")
    source.add_argument("--from-json", metavar="JSON", help="a JSON this script wrote earlier, recomputed and redrawn")
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    p.add_argument(
        "--before",
        action="append",
        default=[],
        metavar="LABEL=JSON",
        help="overlay a curve this script wrote earlier (repeatable), e.g. 'generator v2=.../baseline_train_preset.json'",
    )
    p.add_argument("--label", default="validation accuracy", help="legend label of this run's curve")
    p.add_argument("--band", default="", metavar="LO,HI", help="shade a target range in percent, e.g. 65,85")
    p.add_argument(
        "--start-images",
        type=int,
        default=0,
        metavar="N",
        help="the run started from another run's checkpoint (train.init_from) that had seen N images: draw its curve from N "
        "(the JSON keeps the run's own counts and records start_images)",
    )
    args = p.parse_args(argv)
    if args.start_images < 0:
        p.error(f"--start-images {args.start_images}: must be >= 0")
    before = {}
    for item in args.before:
        label, sep, path = item.partition("=")
        if not sep or not pathlib.Path(path).is_file():
            p.error(f"--before {item!r}: expected LABEL=JSON with an existing file")
        old = json.loads(pathlib.Path(path).read_text())
        if "images" not in old or "val_accuracy" not in old:
            p.error(f"--before {path}: not a calibration_curve.py JSON (no images / val_accuracy)")
        start = old.get("start_images", 0)
        before[label] = ([(start + n) / 1000 for n in old["images"]], [100 * a for a in old["val_accuracy"]])
    from feratt_jax import plots

    try:
        band = plots.target_band(args.band)
    except ValueError as err:
        p.error(f"--band {args.band!r}: {err}")
    from feratt_jax.learning_curves import curve_summary, read_validation_curve

    if args.workdir:
        workdir = pathlib.Path(args.workdir)
        summary = read_validation_curve(workdir)
        config = json.loads((workdir / "config.json").read_text())
        summary["workdir_config"] = {k: config[k] for k in ("model", "data", "train", "optimizer") if k in config}
    else:
        try:
            old = json.loads(pathlib.Path(args.from_json).read_text())
            config = old.get("workdir_config", {})
            batch = old["images"][0] // old["steps"][0]
            summary = curve_summary(old["steps"], old["val_accuracy"], batch, old["planned_steps"], config.get("data", {}).get("val_size"))
        except (OSError, ValueError, KeyError, IndexError, ZeroDivisionError, AttributeError) as err:
            p.error(f"--from-json {args.from_json}: not a calibration_curve.py JSON ({type(err).__name__}: {err})")
        summary["workdir_config"] = config
        args.start_images = args.start_images or old.get("start_images", 0)
    if args.start_images:
        summary["start_images"] = args.start_images
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    plots.curves_png(
        out / f"{args.name}.png",
        [(summary.get("start_images", 0) + n) / 1000 for n in summary["images"]],
        {**before, args.label: [100 * a for a in summary["val_accuracy"]]},
        "training images seen (thousands)",
        "validation accuracy (%)",
        args.name,
        band=band,
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "workdir_config"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
