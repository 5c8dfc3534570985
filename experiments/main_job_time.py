"""The README's main job: wall time against this session's yardstick, and test accuracy over seeds.

The host's speed moves by 2x from day to day, so a wall time alone means
nothing. This script runs the README's main-job command (:data:`MAIN_JOB`;
``tests/test_main_job_time.py`` checks it is the README's) in a fresh workdir
as a child process per seed, timing each, then measures the yardstick right
after: the PyTorch reference's eager FERAtt train step at batch 32,

    feratt bench --model ferattention --batch-size 32 --compare-torch --steps 3 --warmup 1 --render-batch-size --json ...

A normal day's yardstick is about 2.0 s, so the main job's time on a normal
day is ``wall x 2.0 / yardstick``: the target is <= 5 minutes. Seed 0 is the
README's command as written; other seeds add ``--config.seed=N``. Run it
alone (2 cores: anything beside it slows the job and the yardstick by
different amounts); the JSON records the load average before each run.

    python experiments/main_job_time.py --seeds 0 1 2 --out experiments/results/main_job/timing.json

Each run draws its face bank into an empty cache folder, as the README's
command does on a fresh machine (about 18 s of the job on the 2-core host);
``--warm-cache`` reads the user's cache instead, as the measurements before
2026-12-04 (session 11) did.

``--set FIELD=VALUE`` times a candidate change of the main job before it is
made (e.g. ``--set loss.reconstruction_form=linear``); the JSON's command
then carries the overrides, so a variant never passes for the README's job.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
MAIN_JOB = ("train", "--config", "experiments/configs/ferattention.py:quick")
YARDSTICK = ("bench", "--model", "ferattention", "--batch-size", "32", "--compare-torch", "--steps", "3", "--warmup", "1", "--render-batch-size")
NORMAL_DAY_YARDSTICK_S = 2.0


def feratt(*args: str) -> list[str]:
    """``feratt ARGS`` with this interpreter (the same install as the script's)."""
    return [sys.executable, "-m", "feratt_jax", *args]


def yardstick_seconds(bench_report: dict[str, Any]) -> float:
    """Median train-step time of the PyTorch eager FERAtt record of a ``feratt bench --json`` report."""
    for rec in bench_report["results"]:
        if rec["framework"] == "torch" and rec["mode"] == "eager" and rec["model"] == "ferattention":
            return float(rec["train"]["median_s"])
    raise ValueError("the bench report has no PyTorch eager FERAtt record (was --compare-torch given?)")


def at_normal_day(wall_s: float, yardstick_s: float) -> float:
    """Minutes the run would take on a day whose yardstick is 2.0 s."""
    return wall_s / 60.0 * NORMAL_DAY_YARDSTICK_S / yardstick_s


def summarise(runs: list[dict[str, Any]], yardstick_s: float) -> dict[str, Any]:
    """Median/range of test accuracy over seeds; the median wall time, and it scaled to a 2.0 s yardstick."""
    accs = [r["test_accuracy"] for r in runs]
    wall = statistics.median(r["wall_s"] for r in runs)
    return {
        "test_accuracy_median": statistics.median(accs),
        "test_accuracy_min": min(accs),
        "test_accuracy_max": max(accs),
        "yardstick_s": yardstick_s,
        "wall_minutes_median": wall / 60.0,
        "minutes_at_2s_yardstick": at_normal_day(wall, yardstick_s),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--workdir", default="", help="parent of the runs (default: a temporary folder, removed after)")
    p.add_argument("--out", required=True, help="JSON to write")
    p.add_argument("--warm-cache", action="store_true", help="read the face bank from the user's cache (default: draw it, as a fresh machine does)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config override added to every run (recorded in the JSON's command)")
    args = p.parse_args(argv)
    overrides = [f"--config.{kv}" for kv in args.set]
    if overrides:  # a typo fails here, in one line, not in the first child run
        from feratt_jax.configs import load_config

        try:
            load_config(str(REPO / MAIN_JOB[2]), overrides)
        except ValueError as err:
            p.error(f"--set: {err}")
    out = pathlib.Path(args.out)
    if out.suffix != ".json":
        p.error(f"--out {out}: expected a .json path")
    if importlib.util.find_spec("torch") is None:
        p.error("the yardstick needs PyTorch (pip install -e '.[torch]'); checked before the runs, not after them")

    for seed in args.seeds if args.workdir else []:
        if (pathlib.Path(args.workdir) / f"main_job_seed{seed}").exists():
            p.error(f"{pathlib.Path(args.workdir) / f'main_job_seed{seed}'}: exists; each timed run must start from an empty workdir")

    with tempfile.TemporaryDirectory() as tmp:
        parent = pathlib.Path(args.workdir or tmp)
        runs = []
        for seed in args.seeds:
            workdir = parent / f"main_job_seed{seed}"
            cmd = feratt(*MAIN_JOB, "--workdir", str(workdir), *overrides, *([f"--config.seed={seed}"] if seed else []))
            env = dict(os.environ)
            if not args.warm_cache:  # a fresh machine has no face bank cached
                env["FERATT_CACHE_DIR"] = str(pathlib.Path(tmp) / f"face_cache_seed{seed}")
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=REPO, check=True, env=env)
            wall = time.perf_counter() - t0
            report = json.loads((workdir / "eval" / "metrics.json").read_text())
            runs.append(
                {
                    "seed": seed,
                    "wall_s": wall,
                    "load_average_before": load,
                    "test_accuracy": report["test"]["accuracy"],
                    "best_val_accuracy": report["best_val_accuracy"],
                    "train_images_per_s": report.get("train_images_per_s"),
                    "first_step_s": report.get("first_step_s"),
                    "data_seconds": report.get("data_seconds"),
                    "init_state_s": report.get("init_state_s"),
                    "precise_bn_seconds": report.get("precise_bn_seconds"),
                    "figures": [pathlib.Path(f).name for f in report.get("figures", [])],
                }
            )
            print(json.dumps(runs[-1]), flush=True)
        bench_json = pathlib.Path(tmp) / "yardstick.json"
        subprocess.run(feratt(*YARDSTICK, "--json", str(bench_json)), cwd=REPO, check=True)
        bench = json.loads(bench_json.read_text())

    yardstick = yardstick_seconds(bench)
    result = {
        "command": " ".join(("feratt", *MAIN_JOB, "--workdir", "runs/ferattention_quick", *overrides)),
        "yardstick_command": " ".join(("feratt", *YARDSTICK)),
        "face_bank": "the user's cache (--warm-cache)" if args.warm_cache else "drawn by each run, as on a fresh machine",
        "date": bench["meta"].get("date"),
        "device": bench["meta"].get("device"),
        "runs": runs,
        **summarise(runs, yardstick),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
