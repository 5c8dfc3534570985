"""How each face-generator knob moves the HOG probe at 64 px and at 32 px.

The benchmark calibration (docs/training.md section 0) wants clean aligned
faces that a linear HOG probe separates well at 64 px (>= 85 %) and
train-preset composites on which the paper's 32x32 baseline lands at 65-85 %.
A knob can only separate the two figures if it moves what survives at 32 px
differently from what HOG sees at 64 px; this sweep measures both for each
setting (``experiments/hog_probe.py`` on the ``identity`` preset with
``--half-resolution``), one probe per setting, its cost proportional to
``--folds`` (``--folds 1`` reproduces the first, single-fold sweep):

    python experiments/generator_sweep.py \
        --out experiments/results/benchmark_calibration/generator_sweep.json

A setting is ``name:field=value,field=value`` (repeat ``--setting``); the
default list is the one docs/training.md reports.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import hog_probe  # noqa: E402

# Relative to the generator version 2 faces (every knob at its neutral value).
V2 = "posing_variation=0,expressiveness_spread=0"
DEFAULT_SETTINGS = (
    f"v2:{V2}",
    "posing:posing_variation=0.5,expressiveness_spread=0.2",
    "posing_mild:posing_variation=0.3,expressiveness_spread=0.1",
    f"no_shading:{V2},shading_contrast=0",
    f"motion_0.7:{V2},motion_scale=0.7",
    f"folds_x2:{V2},fold_contrast=2",
    f"wrinkles:{V2},wrinkle_contrast=1",
    f"fine_over_coarse:{V2},fold_contrast=0.5,wrinkle_contrast=1.5,motion_scale=0.85",
    # Version 3's posing with fine detail added back:
    "posing_wrinkles_folds:wrinkle_contrast=1,fold_contrast=1.5",
    "posing_wrinkles_folds2:wrinkle_contrast=1.5,fold_contrast=2",
)


def parse_setting(text: str) -> tuple[str, dict]:
    """``"name:a=1,b=2"`` -> ``("name", {"a": 1, "b": 2})``, validated against GeneratorConfig."""
    name, sep, body = text.partition(":")
    if not sep or not name:
        raise ValueError(f"--setting {text!r}: expected NAME:FIELD=VALUE[,FIELD=VALUE...]")
    items = [kv for kv in body.split(",") if kv]
    return name, hog_probe.parse_generator_overrides(items)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--setting", action="append", default=[], help="NAME:FIELD=VALUE,... (repeatable)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--folds", type=int, default=5, help="subject-independent folds each probe averages (hog_probe.py)")
    p.add_argument("--seed", type=int, default=0, help="face-set seed (which 60 subjects are drawn)")
    a = p.parse_args()
    try:
        hog_probe.check_folds(a.folds, 60, 12)  # run_probe's default subjects
        settings = [parse_setting(t) for t in (a.setting or DEFAULT_SETTINGS)]
    except ValueError as e:
        p.error(str(e))
    out = pathlib.Path(a.out)
    if not out.parent.is_dir():
        p.error(f"--out {out}: folder {out.parent} does not exist")
    rows = []
    for name, gen in settings:
        res = hog_probe.run_probe(
            presets=("identity",), cache_dir=a.cache_dir, generator=gen, half_resolution=True, folds=a.folds, seed=a.seed
        )
        r = res["results"]["identity"]
        rows.append(
            {
                "name": name,
                "generator": gen,
                "hog_64px": r["clean_face_accuracy"],
                "hog_32px": r["clean_face_accuracy_32px"],
                "per_class_64px": r["clean_face_per_class"],
                "per_class_32px": r["clean_face_per_class_32px"],
            }
        )
        print(f"{name:18s} 64 px {r['clean_face_accuracy']:.3f}  32 px {r['clean_face_accuracy_32px']:.3f}", flush=True)
        meta = {"generator_version": res["generator_version"], "folds": a.folds, "seed": a.seed}
        out.write_text(json.dumps({**meta, "settings": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
