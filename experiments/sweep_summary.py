"""One table of a sweep run by ``experiments/gpu_paper_table.sh --jobs FILE`` (or by hand in the same layout).

The sweep's workdir holds one folder per job, ``WORKDIR/JOB/METHOD/fold_k``
(a ``feratt train`` workdir each). For every job this reads each fold's
validation curve (:func:`feratt_jax.learning_curves.read_validation_curve`:
images seen until 25 % and 50 %, the plateau test) and, when the fold
finished, its test accuracy (``eval/metrics.json``), and writes to ``--out``:

* ``sweep.md``: one row per job: the config fields that set it apart from
  the other jobs of its method (their ``config.json``), per-fold test accuracy and their mean, the
  last validation accuracy, the last quarter's gain and the plateau verdict;
* ``sweep.json``: the same, with every curve;
* ``sweep_curves.png``: fold 0's validation curve of every job of the method
  given by ``--plot-method``, with ``--band`` shaded.

The benchmark calibration's GPU sweep (docs/training.md section 0):

    tar xzf runs.tar.gz -C runs/gpu_sweep
    python experiments/sweep_summary.py --workdir runs/gpu_sweep/sweep \\
        --out experiments/results/benchmark_calibration/gpu_sweep --band 65,85

``--from-json OUT/sweep.json`` recomputes a written table's curves (today's
plateau rule) and redraws it without the runs.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
from typing import Any


def flat_config(fold_dir: pathlib.Path) -> dict[str, Any]:
    """A run's ``config.json``, flat, with its render / generator overrides as one field each."""
    from feratt_jax import configs

    flat = configs.flatten(json.loads((fold_dir / "config.json").read_text()))
    for mapping in ("data.render", "data.generator"):
        flat.update({f"{mapping}.{k}": v for k, v in (flat.pop(mapping, None) or {}).items()})
    return flat


def distinguishing_fields(flat_by_job: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per job, the config fields whose value is not the same in every job given (the fold's own index aside).

    A render / generator override counts as differing from jobs that lack it.
    """
    keys = sorted({k for flat in flat_by_job.values() for k in flat} - {"data.fold"})
    missing = object()
    varying = [k for k in keys if len({repr(flat.get(k, missing)) for flat in flat_by_job.values()}) > 1]
    return {job: {k: flat[k] for k in varying if k in flat} for job, flat in flat_by_job.items()}


def fold_row(fold_dir: pathlib.Path) -> dict[str, Any]:
    """One fold: its validation curve, and its test accuracy and device when it finished."""
    from feratt_jax.kfold import finished_summary
    from feratt_jax.learning_curves import read_validation_curve

    row: dict[str, Any] = {"fold": fold_dir.name, "curve": read_validation_curve(fold_dir), "test_accuracy": None}
    summary = finished_summary(fold_dir / "eval" / "metrics.json")
    if summary is not None:
        row["test_accuracy"] = summary["test"]["accuracy"]
        row["device_kind"] = summary.get("device_kind")
        row["default_matmul_precision"] = summary.get("default_matmul_precision")
    return row


def job_rows(workdir: pathlib.Path) -> list[dict[str, Any]]:
    """Every (job, method) of a sweep workdir, its folds in order.

    ``overrides``: the config fields that set the job apart from the sweep's
    other jobs of the same method (their fold 0), and the matmul precision
    when the environment raised it.
    """
    rows = []
    for job in sorted(p for p in workdir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for method in sorted(p for p in job.iterdir() if p.is_dir() and any(p.glob("fold_*/metrics.jsonl"))):
            folds = sorted(method.glob("fold_*"), key=lambda p: int(p.name.split("_")[1]))
            folds = [f for f in folds if (f / "metrics.jsonl").is_file()]
            per_fold = [fold_row(f) for f in folds]
            tests = [r["test_accuracy"] for r in per_fold if r["test_accuracy"] is not None]
            rows.append(
                {
                    "job": job.name,
                    "method": method.name,
                    "config": flat_config(folds[0]),
                    "folds": per_fold,
                    "test_accuracy_mean": statistics.fmean(tests) if tests else None,
                }
            )
    for method in {r["method"] for r in rows}:
        group = [r for r in rows if r["method"] == method]
        fields = distinguishing_fields({r["job"]: r.pop("config") for r in group})
        for r in group:
            r["overrides"] = fields[r["job"]]
            # Set by the environment, not the config: shown so a full-float32 GPU run stands apart.
            precision = {f.get("default_matmul_precision") for f in r["folds"]} - {None, "default"}
            if precision:
                r["overrides"]["JAX_DEFAULT_MATMUL_PRECISION"] = ",".join(sorted(precision))
    return rows


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def table_markdown(rows: list[dict[str, Any]], command: str) -> str:
    from feratt_jax.learning_curves import gain_text

    lines = [
        "# Sweep",
        "",
        "Per fold: test accuracy of the best-validation checkpoint (`-`: the fold did not finish), the last "
        "validation accuracy, the gain over the last quarter of the planned steps (a least-squares line through its "
        "evaluations, +- the standard error binomial evaluation noise gives it, and in brackets the difference of its "
        "two end points) and the plateau test (the line's gain < 2 points), "
        "and the thousands of training images seen until validation first reached 25 % and 50 %.",
        "",
        "| job | method | overrides | fold | test % | last val % (step) | last-quarter gain | plateau | 25 % / 50 % at (k images) |",
        "|---|---|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        over = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in r["overrides"].items()) or "-"
        for f in r["folds"]:
            c = f["curve"]
            last = f"{_pct(c['val_accuracy'][-1])} ({c['last_step']})" if c["val_accuracy"] else "-"
            gain = gain_text(c)
            reach = " / ".join("-" if c[k] is None else f"{c[k] // 1000}" for k in ("images_to_25pct", "images_to_50pct"))
            plateau = "unfinished" if not c["finished"] else ("yes" if c["plateau"] else "no")
            lines.append(f"| {r['job']} | {r['method']} | {over} | {f['fold']} | {_pct(f['test_accuracy'])} | {last} | {gain} | {plateau} | {reach} |")
        if len(r["folds"]) > 1 and r["test_accuracy_mean"] is not None:
            lines.append(f"| {r['job']} | {r['method']} | | mean | {_pct(r['test_accuracy_mean'])} | | | | |")
    lines += ["", "Made by:", "", "```", command, "```", ""]
    return "\n".join(lines)


def rows_from_json(path: pathlib.Path, eval_size: int) -> tuple[list[dict[str, Any]], str]:
    """The rows and command of a ``sweep.json`` this script wrote, each curve recomputed by today's rule.

    The sweep's runs need not exist any more; ``eval_size`` (validation images
    per evaluation, which the file does not keep) sets the fitted gain's error.
    """
    from feratt_jax.learning_curves import curve_summary

    data = json.loads(path.read_text())
    rows = data["rows"]
    for r in rows:
        for f in r["folds"]:
            c = f["curve"]
            f["curve"] = curve_summary(c["steps"], c["val_accuracy"], c["images"][0] // c["steps"][0], c["planned_steps"], eval_size)
    return rows, data["command"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="the sweep's workdir (WORKDIR/JOB/METHOD/fold_k)")
    source.add_argument("--from-json", metavar="SWEEP_JSON", help="a sweep.json this script wrote: recompute its curves and redraw")
    p.add_argument("--eval-size", type=int, default=256, help="with --from-json: validation images per evaluation")
    p.add_argument("--out", required=True)
    p.add_argument("--plot-method", default="preactresnet18", help="method whose fold-0 curves go in sweep_curves.png")
    p.add_argument("--band", default="", metavar="LO,HI", help="shade a target range in percent, e.g. 65,85")
    args = p.parse_args(argv)
    from feratt_jax import plots

    try:
        band = plots.target_band(args.band)
    except ValueError as err:
        p.error(f"--band {args.band!r}: {err}")
    command = "python experiments/sweep_summary.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.from_json:
        try:
            rows, made_by = rows_from_json(pathlib.Path(args.from_json), args.eval_size)
        except (OSError, ValueError, KeyError, IndexError, TypeError, ZeroDivisionError) as err:
            p.error(f"--from-json {args.from_json}: not a sweep_summary.py sweep.json ({type(err).__name__}: {err})")
        marker = "\n# recomputed and redrawn by:\n"
        command = made_by.split(marker)[0] + marker + command
    else:
        workdir = pathlib.Path(args.workdir)
        if not workdir.is_dir():
            p.error(f"--workdir {workdir}: no such folder")
        rows = job_rows(workdir)
        if not rows:
            p.error(f"--workdir {workdir}: no JOB/METHOD/fold_k/metrics.jsonl below it")

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.md").write_text(table_markdown(rows, command))
    (out / "sweep.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    series = {
        r["job"]: ([n / 1000 for n in r["folds"][0]["curve"]["images"]], [100 * a for a in r["folds"][0]["curve"]["val_accuracy"]])
        for r in rows
        if r["method"] == args.plot_method and r["folds"]
    }
    if series:
        plots.curves_png(
            out / "sweep_curves.png", [], series, "training images seen (thousands)", "validation accuracy (%)", f"{args.plot_method}, fold 0", band=band
        )
    print((out / "sweep.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
