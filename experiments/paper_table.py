"""The paper's comparison on the embedded synthetic benchmark: baseline vs FERAtt+Cls vs FERAtt+Rep+Cls.

The paper (docs/reference.md section 6) reports, on faces composited onto clutter,
PreActResNet18 (32x32 input) < FERAtt+Cls < FERAtt+Rep+Cls, as Acc, macro
Prec, macro Rec and F1 (= 2PR/(P+R)), mean +- std over subject-independent
folds. This script trains the three methods with ``feratt kfold``'s machinery
(:func:`feratt_jax.kfold.run_kfold`: each fold resumes from its own
checkpoints, a finished fold is not retrained) and writes, to ``--out``:

* ``paper_table.md``: the table in the paper's format, the per-method fold
  count, steps, how many folds plateaued (validation accuracy gained < 2
  points over the last quarter of the steps, read from a line fitted through
  that quarter's evaluations: :mod:`feratt_jax.learning_curves`), training
  speed and network,
  and the command that made it;
* ``paper_table.json``: everything in the table plus every fold's metrics
  and validation curve (``curves``: :func:`feratt_jax.learning_curves.curve_summary`);
* ``confusion_<method>.png`` and the summed (over folds) confusion matrices
  in the JSON.

Sizes: ``--size full`` is the reference's setting (90,000 steps of batch 32 per
fold: a GPU job); ``--size quick`` is the CPU setting of the README's main job;
``--size benchmark`` is the paper's dataset size on the ``train`` preset;
``--size calibrated`` is that on the calibrated data and schedule (its baseline
converges inside the paper's baseline range at 21,000 steps per fold:
docs/training.md section 0). ``--steps`` / ``--set`` override any field for
all methods, and the table records every override, so a smaller run never
passes for the full one.

    # The CPU table committed under experiments/results/paper_table_cpu/ (hours on 2 cores;
    # evaluated with BN running averages, the reference's protocol):
    python experiments/paper_table.py --size quick --steps 800 --folds 5 --set train.precise_bn_batches=0 \
        --workdir runs/paper_table --out experiments/results/paper_table_cpu
    # The paper-era model (reference commit 53fd5e4) too:
    python experiments/paper_table.py --size quick --folds 1 --methods ferattention_2019 \
        --workdir runs/paper_table --out experiments/results/paper_table_2019_cpu
    # Full size, on a GPU machine:
    python experiments/paper_table.py --size full --folds 5 --workdir runs/paper_table_full \
        --out experiments/results/paper_table_full
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys
from typing import Any

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]

# (config file stem, the paper's name for the method)
METHODS = (
    ("preactresnet18", "PreActResNet18 (baseline, 32x32)"),
    ("ferattention", "FERAtt+Cls"),
    ("ferattentiongmm", "FERAtt+Rep+Cls"),
    # Not in the paper: the baseline at the width of FERAtt's classifier at this
    # size (the same network as the baseline at full size), for matched capacity.
    ("preactresnet18_narrow", "PreActResNet18 at FERAtt's classifier width (control)"),
)
# Run only when named with --methods: the paper-era FERAtt (reference commit 53fd5e4), the code
# that produced the paper's tables (128x128 input; slower than the others on a CPU).
OPTIONAL_METHODS = (("ferattention_2019", "FERAtt+Rep+Cls, paper-era code (Jan 2019)"),)
PAPER_COLUMNS = (("accuracy", "Acc."), ("macro_precision", "Prec."), ("macro_recall", "Rec."), ("reference_f1", "F1"))


def method_config(stem: str, size: str, overrides: list[str]):
    """The experiment config of one method, sized and overridden."""
    from feratt_jax.configs import load_config

    spec = f"{REPO / 'experiments' / 'configs' / stem}.py" + (f":{size}" if size and size != "full" else "")
    return load_config(spec, overrides)


def checked_configs(stems: list[str], size: str, overrides: list[str], folds: int) -> dict[str, Any]:
    """Every method's config, loaded and validated before any of them trains.

    A bad ``--size``, ``--set`` or ``--folds`` then stops the command before the
    first fold, not after an hour of the first method.

    Raises:
      ValueError: naming the method and the field.
    """
    from feratt_jax import validation
    from feratt_jax.kfold import check_folds, fold_config

    configs = {}
    for stem in stems:
        try:
            config = method_config(stem, size, overrides)
            check_folds(config, folds)
            validation.validate(fold_config(config, 0))
        except (ValueError, FileNotFoundError) as err:
            raise ValueError(f"{stem}: {err}") from err
        configs[stem] = config
    return configs


def finished_folds(method_dir: pathlib.Path, folds: int) -> int:
    """How many folds ``0..k-1`` of a method are finished (the trainer's summary written), at most ``folds``.

    A gap ends the count: the table's folds are always the first k, so two
    methods with k folds were tested on the same subjects.
    """
    from feratt_jax.kfold import finished_summary

    k = 0
    while k < folds and finished_summary(pathlib.Path(method_dir) / f"fold_{k}" / "eval" / "metrics.json") is not None:
        k += 1
    return k


def fold_reports(per_fold: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each fold's ``eval/metrics.json`` (the trainer's final summary), read once."""
    return [json.loads((pathlib.Path(row["workdir"]) / "eval" / "metrics.json").read_text()) for row in per_fold]


def fold_curves(per_fold: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each fold's validation curve and plateau test (the last quarter of its steps gains < 2 points)."""
    from feratt_jax.learning_curves import read_validation_curve

    return [read_validation_curve(row["workdir"]) for row in per_fold]


def plateau_cell(curves: list[dict[str, Any]]) -> str:
    """``k/n`` folds plateaued and the largest last-quarter gain the verdicts rest on, e.g. ``4/5 (max +3.1)``."""
    from feratt_jax.learning_curves import decisive_gain

    gains = [g for g in map(decisive_gain, curves) if g is not None]
    worst = f" (max {max(gains):+.1f})" if gains else ""
    return f"{sum(c['plateau'] for c in curves)}/{len(curves)}{worst}"


def summed_confusion(reports: list[dict[str, Any]]) -> np.ndarray:
    """Test confusion matrices (rows = truth) of the folds' best checkpoints, summed."""
    return np.sum([np.asarray(r["test"]["confusion_matrix"], np.int64) for r in reports], axis=0)


def mean_training_speed(reports: list[dict[str, Any]]) -> float:
    """Training images/s averaged over the folds (nan if no fold recorded it)."""
    speeds = [float(r["train_images_per_s"]) for r in reports if r.get("train_images_per_s")]
    return float(np.mean(speeds)) if speeds else float("nan")


def model_description(config) -> str:
    """What differs between the methods' networks at this size (capacity matters for the comparison)."""
    m = config.model
    parts = [f"input {m.input_size or config.data.image_size}px"]
    if m.name.startswith("ferattention"):
        parts.append(f"decoder {m.num_filters}, {m.num_feature_blocks} feature blocks, classifier width {m.backbone_width}")
    elif m.get("baseline_width", 0) and m.baseline_width != 64:
        parts.append(f"width {m.baseline_width}")
    else:
        parts.append("full width")
    if m.get("input_standardization", False):
        parts.append("standardized input")
    if config.train.get("precise_bn_batches", 0):
        parts.append(f"BN statistics re-estimated over {config.train.precise_bn_batches} batches before each evaluation")
    return ", ".join(parts)


def table_markdown(rows: list[dict[str, Any]], command: str, notes: list[str]) -> str:
    """The paper-format table (percent, mean +- std over folds)."""
    lines = [
        "# FERAtt vs the baseline on the embedded synthetic benchmark",
        "",
        "Test metrics of each fold's best-validation checkpoint, in percent, mean +- sample std over "
        "subject-independent folds. F1 = 2PR/(P+R) of the macro precision and recall (the paper's).",
        "",
        "| Method | " + " | ".join(t for _, t in PAPER_COLUMNS) + " | folds | steps/fold | plateaued | train img/s | network |",
        "|---|" + "---:|" * (len(PAPER_COLUMNS) + 4) + "---|",
    ]
    for r in rows:
        # One fold has no spread to report.
        cells = " | ".join(
            f"{100 * r['mean'][k]:.2f}" + (f" +- {100 * r['std'][k]:.2f}" if r["folds"] > 1 else "") for k, _ in PAPER_COLUMNS
        )
        lines.append(f"| {r['method']} | {cells} | {r['folds']} | {r['steps']} | {plateau_cell(r['curves'])} | {r['images_per_s']:.1f} | {r['network']} |")
    lines += ["", "Reproduce:", "", "```", command, "```", ""]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="paper_table.py", description=__doc__.splitlines()[0])
    p.add_argument("--size", default="quick", help="config size: full, quick, tiny, benchmark or calibrated (default quick)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--steps", type=int, default=0, help="train.num_steps for every method (0 = the size's); a step schedule's cut stays at optimizer.step_size")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config override for every method, e.g. train.batch_size=16")
    p.add_argument(
        "--methods",
        nargs="+",
        default=[m for m, _ in METHODS],
        choices=[m for m, _ in METHODS + OPTIONAL_METHODS],
        help="configs to run (default: the paper's methods and the control; ferattention_2019 on request)",
    )
    p.add_argument(
        "--finished-only",
        action="store_true",
        help="train nothing: each method's row uses its folds 0..k-1 already finished in --workdir (k <= --folds); "
        "methods with none are left out (for a run stopped by a time budget, e.g. experiments/gpu_paper_table.sh)",
    )
    p.add_argument("--note", action="append", default=[], help="a line added to the table's notes (repeatable), e.g. where it was trained")
    p.add_argument(
        "--no-fast-cpu-flags",
        dest="fast_cpu_flags",
        action="store_false",
        help="train with jaxlib's XLA defaults (feratt train's option of the same name; the flags are added by default)",
    )
    p.add_argument("--workdir", required=True, help="parent folder of the runs (method/fold_k)")
    p.add_argument("--out", required=True, help="folder for paper_table.md/.json and the confusion PNGs")
    args = p.parse_args(argv)
    if args.fast_cpu_flags:
        # As `feratt train` does, before JAX starts a backend (XLA reads the flags once);
        # the CPU step is markedly slower without them (docs/performance.md).
        from feratt_jax import xla_cpu

        xla_cpu.apply_fast_cpu_flags()

    from feratt_jax import plots
    from feratt_jax.data.synthfaces import CLASS_NAMES
    from feratt_jax.kfold import run_kfold

    overrides = [f"--config.{kv}" for kv in args.set]
    if args.steps:
        overrides.append(f"--config.train.num_steps={args.steps}")
    try:
        configs = checked_configs(args.methods, args.size, overrides, args.folds)
    except ValueError as err:
        p.error(str(err))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = dict(METHODS + OPTIONAL_METHODS)
    rows = []
    for stem, config in configs.items():
        folds = args.folds
        if args.finished_only:
            folds = finished_folds(pathlib.Path(args.workdir) / stem, args.folds)
            if folds == 0:
                print(f"{stem}: no finished fold in {pathlib.Path(args.workdir) / stem}; left out of the table", flush=True)
                continue
        try:
            result = run_kfold(config, folds, pathlib.Path(args.workdir) / stem, config_spec=f"{stem}.py:{args.size}")
        except ValueError as err:  # e.g. a finished fold in --workdir was trained with another config
            print(f"paper_table.py: error: {stem}: {err}", file=sys.stderr)
            return 2
        if "stopped" in result:
            print(f"{stem}: stopped; rerun the same command to resume", flush=True)
            return 1
        reports = fold_reports(result["per_fold"])
        curves = fold_curves(result["per_fold"])
        cm = summed_confusion(reports)
        classes = list(CLASS_NAMES[: cm.shape[0]])
        plots.confusion_matrix_png(out / f"confusion_{stem}.png", cm, classes, title=f"{names[stem]}: test, {folds} fold{'s' * (folds > 1)} summed")
        rows.append(
            {
                "method": names[stem],
                "config": stem,
                "folds": folds,
                "steps": int(config.train.num_steps),
                "batch_size": int(config.train.batch_size),
                "image_size": int(config.data.image_size),
                "images_per_s": mean_training_speed(reports),
                "network": model_description(config),
                "mean": result["mean"],
                "std": result["std"],
                "per_fold": result["per_fold"],
                "curves": curves,
                "confusion_matrix_summed": cm.tolist(),
                "class_names": classes,
            }
        )
    command = "python experiments/paper_table.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    notes = [
        f"size `{args.size}`" + (f", overrides: {', '.join(args.set + ([f'train.num_steps={args.steps}'] if args.steps else []))}" if args.set or args.steps else ""),
        "plateaued: folds whose validation accuracy gained < 2 points over the last quarter of their steps, "
        "the rise of a least-squares line through that quarter's evaluations (its end points alone when the quarter "
        "holds fewer than three; per-fold curves in paper_table.json); in brackets the largest gain.",
        "train img/s: the trainer's measured training speed, mean over folds (this machine's figure when run here).",
    ]
    if args.finished_only:
        notes.append(f"assembled from the folds each method had finished (of {args.folds} planned); the folds column says how many")
    notes += args.note
    (out / "paper_table.md").write_text(table_markdown(rows, command, notes))
    (out / "paper_table.json").write_text(json.dumps({"command": command, "size": args.size, "overrides": args.set, "rows": rows}, indent=2))
    print((out / "paper_table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
