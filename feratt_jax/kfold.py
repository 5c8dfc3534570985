"""``feratt kfold``: subject-independent k-fold cross-validation of one config.

Fold k trains ``config`` with ``data.fold = k`` in ``<workdir>/fold_k``
through :func:`feratt_jax.train.train_and_evaluate` (so each fold resumes from
its own checkpoints), then the test metrics of every fold's best-validation
checkpoint are gathered into ``kfold.json`` and ``kfold.md``: per fold and
mean +- standard deviation, in the paper's table format (Acc, Prec, Rec, F1 with
F1 = 2PR/(P+R) of the macro P and R, docs/reference.md section 6), plus macro-F1.

A fold whose ``eval/metrics.json`` exists is complete and is not retrained;
an interrupted run of the command picks up where it stopped.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from feratt_jax import train, validation
from feratt_jax.runs import write_json

# (key in the eval report, column title); the first four are the paper's.
COLUMNS = (
    ("accuracy", "Acc"),
    ("macro_precision", "Prec"),
    ("macro_recall", "Rec"),
    ("reference_f1", "F1"),
    ("macro_f1", "macro-F1"),
)

# Fields that may differ between the run that completed a fold and this one
# without changing its result (paths, loader plumbing, logging cadence).
_IGNORED_FIELDS = {
    "data.cache_dir",
    "data.use_cache",
    "data.bank_workers",
    "data.loader",
    "data.prefetch",
    "train.distributed",
    "train.profile",
    "train.log_every",
    "train.image_log_every",
}


def supported_folds(config: ml_collections.ConfigDict) -> int:
    """How many folds ``config.data`` defines (see :func:`feratt_jax.validation.supported_folds`)."""
    return validation.supported_folds(config)


def check_folds(config: ml_collections.ConfigDict, folds: int) -> None:
    """Raise a clear ValueError unless ``1 <= folds <= supported_folds(config)``."""
    available = supported_folds(config)
    if folds < 1:
        raise ValueError(f"--folds must be >= 1, got {folds}")
    if folds > available:
        raise ValueError(
            f"--folds {folds} exceeds the {available} folds the data config supports "
            f"(data.num_subjects={config.data.num_subjects}, data.subjects_per_fold={config.data.subjects_per_fold}, "
            f"data.num_folds={config.data.get('num_folds', 0)}); lower --folds or change those fields"
        )


def fold_config(config: ml_collections.ConfigDict, fold: int) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``data.fold = fold``."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.data.fold = fold
    return c


def config_differences(stored: dict[str, Any], wanted: ml_collections.ConfigDict) -> list[str]:
    """Fields (outside :data:`_IGNORED_FIELDS`) where a fold's stored config differs.

    A stored config that predates a newer field counts as having the value that
    reproduces the older behaviour (:data:`feratt_jax.validation.DEFAULTS_OF_NEWER_FIELDS`).
    """
    return validation.config_differences(stored, wanted, _IGNORED_FIELDS)


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single fold)."""
    arr = np.asarray(values, np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return float(arr.mean()), std


def summarise(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std of every :data:`COLUMNS` metric over folds.

    Args:
      per_fold: rows with the metrics as fractions.

    Returns:
      ``{"mean": {metric: x}, "std": {metric: x}}``.
    """
    mean, std = {}, {}
    for key, _ in COLUMNS:
        mean[key], std[key] = _mean_std([row[key] for row in per_fold])
    return {"mean": mean, "std": std}


def markdown_table(result: dict[str, Any]) -> str:
    """The ``kfold.md`` text: per-fold rows and mean +- std, in percent."""
    titles = [t for _, t in COLUMNS]
    lines = [
        f"# k-fold cross-validation: {result['model']} ({result['config']})",
        "",
        f"{result['folds']} subject-independent folds; test metrics of each fold's best-validation "
        "checkpoint, in percent. F1 = 2PR/(P+R) of the macro precision and recall (the paper's); "
        "macro-F1 = mean of per-class F1. +- is the sample std over folds.",
        "",
        "| fold | " + " | ".join(titles) + " | test images | steps |",
        "|---|" + "---|" * (len(titles) + 2),
    ]
    for row in result["per_fold"]:
        cells = " | ".join(f"{100 * row[k]:.2f}" for k, _ in COLUMNS)
        lines.append(f"| {row['fold']} | {cells} | {row['num_examples']} | {row['step']} |")
    mean, std = result["mean"], result["std"]
    cells = " | ".join(f"{100 * mean[k]:.2f} +- {100 * std[k]:.2f}" for k, _ in COLUMNS)
    lines.append(f"| **mean** | {cells} | | |")
    return "\n".join(lines) + "\n"


def finished_summary(metrics_path: pathlib.Path) -> dict[str, Any] | None:
    """The trainer's final summary at ``eval/metrics.json``, or None when the fold has not trained to its end.

    ``feratt eval`` writes the same file for a run stopped part-way (its splits
    only); the trainer's summary alone records the ``step`` training ended at.
    """
    if not metrics_path.is_file():
        return None
    summary = json.loads(metrics_path.read_text())
    return summary if "step" in summary else None


def run_kfold(
    config: ml_collections.ConfigDict,
    folds: int,
    workdir: str | pathlib.Path,
    *,
    config_spec: str = "",
    train_fn: Callable[[ml_collections.ConfigDict, pathlib.Path], dict[str, Any]] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and evaluate folds ``0..folds-1``; write ``kfold.json`` and ``kfold.md``.

    Args:
      config: the experiment config (``data.fold`` is set per fold).
      folds: K.
      workdir: parent folder; fold k lives in ``workdir/fold_k``.
      config_spec: the ``FILE[:arg]`` the config came from (recorded only).
      train_fn: the trainer (default :func:`feratt_jax.train.train_and_evaluate`).
      log: where progress lines go.

    Returns:
      The ``kfold.json`` payload; ``{"stopped": ...}`` instead when a fold was
      interrupted by SIGTERM/SIGINT (rerun the command to resume).

    Raises:
      ValueError: ``folds`` is out of range for the data config, or a completed
        fold was trained with a different config.
    """
    check_folds(config, folds)
    train_fn = train_fn or train.train_and_evaluate

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    per_fold = []
    for k in range(folds):
        c = fold_config(config, k)
        fold_dir = workdir / f"fold_{k}"
        metrics_path = fold_dir / "eval" / "metrics.json"
        summary = finished_summary(metrics_path)
        if summary is not None:
            stored_path = fold_dir / "config.json"
            if stored_path.is_file():
                diff = config_differences(json.loads(stored_path.read_text()), c)
                if diff:
                    raise ValueError(
                        f"{fold_dir} was completed with a different config (differs in {', '.join(diff[:8])}); "
                        "use a new --workdir, or delete that fold to retrain it"
                    )
            log(f"fold {k}/{folds}: already done ({metrics_path}); skipping")
        else:
            if metrics_path.is_file():
                log(f"fold {k}/{folds}: {metrics_path} is an evaluation of an unfinished run (feratt eval), not the trainer's summary; resuming its training")
            log(f"fold {k}/{folds}: training in {fold_dir}")
            summary = train_fn(c, fold_dir)
            if "test" not in summary:
                log(f"fold {k} stopped at step {summary.get('stopped_at_step')}; rerun the same command to resume")
                return {"stopped": {"fold": k, **summary}}
        test = summary["test"]
        row = {"fold": k, "workdir": str(fold_dir), "step": int(summary.get("step", 0)), "num_examples": int(test.get("num_examples", 0))}
        row.update({key: float(test[key]) for key, _ in COLUMNS})
        row["best_val_accuracy"] = float(summary.get("best_val_accuracy", math.nan))
        per_fold.append(row)
        log(f"fold {k}: test " + "  ".join(f"{t} {100 * row[key]:.2f}" for key, t in COLUMNS))

    result = {
        "config": config_spec,
        "model": str(config.model.name),
        "folds": folds,
        "per_fold": per_fold,
        **summarise(per_fold),
    }
    if _is_main_process():
        write_json(workdir / "kfold.json", result)
        (workdir / "kfold.md").write_text(markdown_table(result))
    return result


def _is_main_process() -> bool:
    """Only process 0 writes the tables (as the trainer writes its summaries)."""
    return jax.process_index() == 0


__all__ = ["COLUMNS", "check_folds", "config_differences", "finished_summary", "fold_config", "markdown_table", "run_kfold", "summarise", "supported_folds"]
