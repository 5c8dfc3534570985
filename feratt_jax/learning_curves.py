"""A run's validation curve and whether it has plateaued (docs/training.md section 0).

The benchmark calibration and the paper's table both ask the same question of
a ``feratt train`` workdir: how many training images did the network need to
reach 25 % (2x chance on 8 classes) and 50 % validation accuracy, and did the
curve stop rising? The plateau test: the last quarter of the steps run gains
fewer than 2 points of validation accuracy.

"Gains" is read from a least-squares line through every evaluation of the last
quarter (``last_quarter_fit_gain_points``: the line's rise over the quarter),
not from its two end points alone. Each evaluation of a few hundred
composites carries a binomial error of about 2 points, so the difference of
two of them moves by about 3 points between reruns of a converged run and the
two-point verdict is close to a coin flip; a line through the 11 evaluations
of a 20,000-step run's last quarter has about two-thirds of that error, and
``last_quarter_fit_se_points`` states it. The two-point gain stays in the
summary (``last_quarter_gain_points``) and decides the verdict only when the
quarter holds fewer than three evaluations (docs/training.md section 0).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

PLATEAU_POINTS = 2.0


def fitted_gain(steps: Sequence[int], accuracy: Sequence[float], eval_size: int | None = None) -> tuple[float | None, float | None]:
    """Rise (points) of the least-squares line through ``(steps, accuracy)`` from the first to the last step.

    Returns ``(gain, se)``. ``gain`` is None for fewer than three points (two
    points are the two-point gain, with nothing to average). ``se`` is the
    gain's standard error if each accuracy is a binomial proportion over
    ``eval_size`` images at the window's mean accuracy (None without
    ``eval_size``): the spread a rerun's evaluation noise alone would give.
    """
    n = len(steps)
    if n < 3:
        return None, None
    x_mean = sum(steps) / n
    y_mean = sum(accuracy) / n
    sxx = sum((x - x_mean) ** 2 for x in steps)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(steps, accuracy)) / sxx
    span = steps[-1] - steps[0]
    se = None
    if eval_size:
        se = 100.0 * span * (y_mean * (1.0 - y_mean) / eval_size / sxx) ** 0.5
    return 100.0 * slope * span, se


def curve_summary(
    steps: Sequence[int], accuracy: Sequence[float], batch_size: int, planned_steps: int, eval_size: int | None = None
) -> dict[str, Any]:
    """Images to 25 % / 50 %, the last-quarter gain (points) and the plateau verdict of a validation curve.

    Args:
      steps: the steps at which validation accuracy was measured, increasing.
      accuracy: validation accuracy (a fraction) at each of ``steps``.
      batch_size: training images per step.
      planned_steps: the run's ``train.num_steps`` (``finished`` says whether it got there).
      eval_size: validation images per evaluation, for the fitted gain's standard error.
    """
    if not steps:
        raise ValueError("no validation points in the run (val/accuracy never logged)")
    images = [s * batch_size for s in steps]

    def first_reaching(level: float) -> int | None:
        return next((n for n, a in zip(images, accuracy) if a >= level), None)

    last = steps[-1]
    # The last evaluation at or before 3/4 of the run so far.
    earlier = [s for s in steps if s <= 0.75 * last]
    gain = fit = se = None
    if earlier:
        window = [i for i, s in enumerate(steps) if s >= earlier[-1]]
        gain = 100.0 * (accuracy[-1] - accuracy[window[0]])
        fit, se = fitted_gain([steps[i] for i in window], [accuracy[i] for i in window], eval_size)
    summary = {
        "steps": list(steps),
        "images": images,
        "val_accuracy": list(accuracy),
        "images_to_25pct": first_reaching(0.25),
        "images_to_50pct": first_reaching(0.50),
        "last_step": last,
        "planned_steps": planned_steps,
        "finished": last >= planned_steps,
        "last_quarter_gain_points": gain,
        "last_quarter_fit_gain_points": fit,
        "last_quarter_fit_se_points": se,
    }
    decisive = decisive_gain(summary)
    summary["plateau"] = decisive is not None and decisive < PLATEAU_POINTS
    return summary


def decisive_gain(curve: dict[str, Any]) -> float | None:
    """The last-quarter gain a :func:`curve_summary` verdict rests on: the fitted line's, else the two end points'."""
    fit = curve.get("last_quarter_fit_gain_points")
    return fit if fit is not None else curve.get("last_quarter_gain_points")


def signed_points(v: float) -> str:
    """A gain in points with its sign and one decimal; ``+ 0.0`` so that a rounding residue never prints as -0.0."""
    return f"{round(v, 1) + 0.0:+.1f}"


def gain_text(curve: dict[str, Any]) -> str:
    """The last-quarter gain for a table, e.g. ``+2.6 +- 2.6 (ends +6.2)``; ``-`` with no quarter to measure."""
    ends = curve.get("last_quarter_gain_points")
    fit = curve.get("last_quarter_fit_gain_points")
    if fit is None:
        return "-" if ends is None else signed_points(ends)
    se = curve.get("last_quarter_fit_se_points")
    return signed_points(fit) + ("" if se is None else f" +- {se:.1f}") + f" (ends {signed_points(ends)})"


def read_validation_curve(workdir: str | pathlib.Path) -> dict[str, Any]:
    """:func:`curve_summary` of a workdir's ``metrics.jsonl`` (its ``config.json`` gives batch size, planned steps and validation size).

    A step logged twice (a resumed run re-evaluates its checkpoint step) keeps
    its last value.
    """
    workdir = pathlib.Path(workdir)
    for name in ("config.json", "metrics.jsonl"):
        if not (workdir / name).is_file():
            raise FileNotFoundError(f"{workdir / name}: missing (not a feratt train workdir?)")
    config = json.loads((workdir / "config.json").read_text())
    train = config.get("train", {})
    eval_size = config.get("data", {}).get("val_size")
    by_step: dict[int, float] = {}
    for n, line in enumerate((workdir / "metrics.jsonl").read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{workdir / 'metrics.jsonl'}: line {n} is not JSON ({e.msg})") from None
        if "val/accuracy" in row:
            by_step[int(row["step"])] = float(row["val/accuracy"])
    steps = sorted(by_step)
    try:
        return curve_summary(
            steps, [by_step[s] for s in steps], int(train["batch_size"]), int(train["num_steps"]), int(eval_size) if eval_size else None
        )
    except ValueError as e:
        raise ValueError(f"{workdir / 'metrics.jsonl'}: {e}") from None
