"""A run's validation curve and whether it has plateaued (docs/training.md section 0).

The benchmark calibration and the paper's table both ask the same question of
a ``feratt train`` workdir: how many training images did the network need to
reach 25 % (2x chance on 8 classes) and 50 % validation accuracy, and did the
curve stop rising? The plateau test: the last quarter of the steps run gains
fewer than 2 points of validation accuracy.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

PLATEAU_POINTS = 2.0


def curve_summary(steps: Sequence[int], accuracy: Sequence[float], batch_size: int, planned_steps: int) -> dict[str, Any]:
    """Images to 25 % / 50 %, the last-quarter gain (points) and the plateau verdict of a validation curve.

    Args:
      steps: the steps at which validation accuracy was measured, increasing.
      accuracy: validation accuracy (a fraction) at each of ``steps``.
      batch_size: training images per step.
      planned_steps: the run's ``train.num_steps`` (``finished`` says whether it got there).
    """
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
        "plateau": gain is not None and gain < PLATEAU_POINTS,
    }


def read_validation_curve(workdir: str | pathlib.Path) -> dict[str, Any]:
    """:func:`curve_summary` of a workdir's ``metrics.jsonl`` (its ``config.json`` gives batch size and planned steps).

    A step logged twice (a resumed run re-evaluates its checkpoint step) keeps
    its last value.
    """
    workdir = pathlib.Path(workdir)
    for name in ("config.json", "metrics.jsonl"):
        if not (workdir / name).is_file():
            raise FileNotFoundError(f"{workdir / name}: missing (not a feratt train workdir?)")
    train = json.loads((workdir / "config.json").read_text()).get("train", {})
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
        return curve_summary(steps, [by_step[s] for s in steps], int(train["batch_size"]), int(train["num_steps"]))
    except ValueError as e:
        raise ValueError(f"{workdir / 'metrics.jsonl'}: {e}") from None
