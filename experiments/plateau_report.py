"""The plateau test re-read on committed curves: two end points against a line through the last quarter.

Every committed learning curve (a ``calibration_curve.py`` JSON, a
``sweep_summary.py`` ``sweep.json``, a ``paper_table.py`` ``paper_table.json``)
keeps its validation accuracies, so the plateau verdict can be recomputed
without the runs (:func:`feratt_jax.learning_curves.curve_summary`). This
writes one row per curve: the last-quarter gain from its two end points (the
verdict before 2026-12-05), the gain of a least-squares line through every
evaluation of that quarter with its binomial standard error, and both
verdicts (docs/training.md section 0).

    python experiments/plateau_report.py --out experiments/results/benchmark_calibration/plateau_report.md \\
        experiments/results/benchmark_calibration/*.json experiments/results/benchmark_calibration/*/*.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Iterator
from typing import Any


def curves_in(path: pathlib.Path, default_eval_size: int) -> Iterator[tuple[str, dict[str, Any], int]]:
    """``(label, curve, eval_size)`` for every validation curve a committed JSON holds (none for other JSONs)."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        return
    if "val_accuracy" in data and "steps" in data:
        size = data.get("workdir_config", {}).get("data", {}).get("val_size") or default_eval_size
        yield path.stem, data, int(size)
    for row in data.get("rows", []):
        if not isinstance(row, dict):
            continue
        if isinstance(row.get("folds"), list):  # sweep.json: rows[].folds[].curve
            for fold in row["folds"]:
                if isinstance(fold, dict) and "curve" in fold:
                    yield f"{row['job']}/{row['method']}/{fold['fold']}", fold["curve"], default_eval_size
        for k, curve in enumerate(row.get("curves", [])):  # paper_table.json: rows[].curves[fold]
            config = row.get("config") if isinstance(row.get("config"), dict) else {}
            size = config.get("data", {}).get("val_size") or default_eval_size
            yield f"{path.parent.name}/{row.get('method', '?')}/fold_{k}", curve, int(size)


def report_rows(paths: list[pathlib.Path], default_eval_size: int) -> list[dict[str, Any]]:
    from feratt_jax.learning_curves import curve_summary

    rows = []
    for path in paths:
        for label, curve, size in curves_in(path, default_eval_size):
            again = curve_summary(curve["steps"], curve["val_accuracy"], 1, curve.get("planned_steps") or curve["steps"][-1], size)
            ends = again["last_quarter_gain_points"]
            rows.append(
                {
                    "curve": label,
                    "file": path.as_posix(),
                    "last_step": again["last_step"],
                    "last_val_pct": 100.0 * curve["val_accuracy"][-1],
                    "eval_size": size,
                    "ends_gain_points": ends,
                    "ends_plateau": ends is not None and ends < 2.0,
                    "fit_gain_points": again["last_quarter_fit_gain_points"],
                    "fit_se_points": again["last_quarter_fit_se_points"],
                    "plateau": again["plateau"],
                }
            )
    return rows


def report_markdown(rows: list[dict[str, Any]], command: str) -> str:
    from feratt_jax.learning_curves import signed_points

    lines = [
        "# The plateau test on committed curves",
        "",
        "Last-quarter gain of validation accuracy (points): from the quarter's two end points (the verdict before "
        "2026-12-05) and from a least-squares line through all of its evaluations, +- the standard error that "
        "binomial noise over `eval size` images gives the line. Plateau: gain < 2 points.",
        "",
        "| curve | last step | last val % | eval size | end points | plateau (end points) | line | plateau (line) |",
        "|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        line = "-" if r["fit_gain_points"] is None else f"{signed_points(r['fit_gain_points'])}" + (
            "" if r["fit_se_points"] is None else f" +- {r['fit_se_points']:.1f}"
        )
        ends = "-" if r["ends_gain_points"] is None else signed_points(r["ends_gain_points"])
        yes = {True: "yes", False: "no"}
        lines.append(
            f"| {r['curve']} | {r['last_step']} | {r['last_val_pct']:.1f} | {r['eval_size']} | {ends} "
            f"| {yes[r['ends_plateau']]} | {line} | {yes[r['plateau']]} |"
        )
    lines += ["", "Made by:", "", "```", command, "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import shlex
    import sys

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="committed JSONs; those that hold no validation curve are skipped")
    p.add_argument("--eval-size", type=int, default=256, help="validation images per evaluation where a JSON does not say")
    p.add_argument("--out", required=True, help="markdown file (a .json with the rows is written beside it)")
    args = p.parse_args(argv)
    paths = [pathlib.Path(f) for f in args.files]
    for path in paths:
        if not path.is_file():
            p.error(f"{path}: no such file")
    rows = report_rows(paths, args.eval_size)
    if not rows:
        p.error("none of the files holds a validation curve")
    command = "python experiments/plateau_report.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report_markdown(rows, command))
    out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
