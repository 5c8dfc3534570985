"""How many pixels of face a renderer preset leaves: face and mouth widths, before and after resampling.

The calibration's price in detail (docs/training.md section 0, "What the 16 px
data take from the comparison") is a measurement, not an estimate, and this
script makes it. It draws ``--subjects`` identities (the training data's face
seed and generator) posing each of the 8 classes at peak intensity, renders
them once through each named preset exactly as training does
(``render_batch`` on procedural backgrounds) and reports:

* on the 128 px face canvas: the jaw width (landmarks 0 -> 16) and the mouth
  width (corners 48 -> 54), whose ratio says how much of a face the mouth is;
* on the S px composites (64 by default): the width of the rendered face mask
  (mean and 10th / 50th / 90th percentiles), which includes the random scale;
* for the preset's resampling chain S -> ``downsample_size`` -> S: the face's
  and the mouth's widths counted in pixels of that smallest grid, the detail
  that survives whatever the output size is (48 px for ``train``, 16 px for
  ``degraded16``);
* the same at a ``--classifier-size`` input (32 px, the paper's baseline and
  FERAtt's classifier): the smaller of the two grids bounds the detail.

Run (CPU, well under a minute):

    python experiments/face_scale.py --presets train,degraded16 --out face_scale.json

The figures committed in
``experiments/results/benchmark_calibration/face_scale.json`` came from
exactly that command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib

import numpy as np

JAW_LEFT, JAW_RIGHT = 0, 16  # iBUG-68 jaw ends
MOUTH_LEFT, MOUTH_RIGHT = 48, 54  # iBUG-68 outer lip corners


def mask_widths(masks_BHW: np.ndarray) -> np.ndarray:
    """Width in pixels of each mask's bounding box (first to last column holding any mask); empty masks are skipped."""
    cols_BW = np.asarray(masks_BHW).astype(bool).any(axis=1)
    widths = [np.flatnonzero(c)[-1] - np.flatnonzero(c)[0] + 1 for c in cols_BW if c.any()]
    return np.asarray(widths, np.float64)


def landmark_widths(landmarks_BK2: np.ndarray, left: int, right: int) -> np.ndarray:
    """Euclidean distance between landmarks ``left`` and ``right`` of each face."""
    lm = np.asarray(landmarks_BK2, np.float64)
    return np.linalg.norm(lm[:, right] - lm[:, left], axis=1)


def surviving_pixels(width_px: float, image_size: int, downsample_size: int | None) -> float:
    """A width measured on the S px output, counted in pixels of the chain's smallest grid."""
    return width_px * (downsample_size or image_size) / image_size


def measure(
    presets: tuple[str, ...] = ("train", "degraded16"), subjects: int = 6, seed: int = 0, classifier_size: int = 32
) -> dict:
    """Renders ``subjects`` x 8 peak faces once per preset and returns the widths (see module docstring)."""
    import jax

    from feratt_jax.data import synthfaces
    from feratt_jax.data.device import keys_from_seeds
    from feratt_jax.data.pipeline import DataConfig, build_background_pool
    from feratt_jax.data.render import render_batch

    cfg = DataConfig()
    render_configs = {p: cfg.render_config(p) for p in presets}  # a bad preset fails before any face is drawn
    gen = cfg.generator_config()
    records = []
    for s in range(subjects):
        identity = synthfaces.sample_identity(cfg.face_seed, s, gen)
        records += [synthfaces.generate_face(s, c, 0, cfg.face_seed, gen, identity=identity) for c in range(synthfaces.NUM_CLASSES)]
    bank = synthfaces.stack_records(records)
    face_w = landmark_widths(bank["landmarks"], JAW_LEFT, JAW_RIGHT)
    mouth_w = landmark_widths(bank["landmarks"], MOUTH_LEFT, MOUTH_RIGHT)
    mouth_share = float(np.mean(mouth_w / face_w))
    out: dict = {
        "faces": len(records),
        "canvas_px": int(bank["image"].shape[1]),
        "canvas_face_width_px": round(float(face_w.mean()), 1),
        "canvas_mouth_width_px": round(float(mouth_w.mean()), 1),
        "mouth_share_of_face_width": round(mouth_share, 3),
        "presets": {},
    }
    pool = build_background_pool(dataclasses.replace(cfg, num_procedural_backgrounds=8), seed=seed)
    rng = np.random.default_rng(seed)
    backgrounds = pool.sample(rng, len(records))
    keys = keys_from_seeds(rng.integers(0, 2**32, size=len(records), dtype=np.uint64).astype(np.uint32))
    for preset, rcfg in render_configs.items():
        composite = jax.device_get(render_batch(bank["image"], bank["mask"], backgrounds, bank["label"], keys, rcfg))
        widths = mask_widths(np.asarray(composite["mask"][..., 0]) > 0.5)
        size = int(composite["image"].shape[1])
        face_px = surviving_pixels(float(widths.mean()), size, rcfg.downsample_size)
        face_cls_px = min(face_px, surviving_pixels(float(widths.mean()), size, classifier_size))
        out["presets"][preset] = {
            "image_size": size,
            "downsample_size": rcfg.downsample_size,
            "face_mask_width_px": round(float(widths.mean()), 1),
            "face_mask_width_p10_p50_p90": [round(float(v), 1) for v in np.percentile(widths, [10, 50, 90])],
            "face_width_at_smallest_grid_px": round(face_px, 1),
            "mouth_width_at_smallest_grid_px": round(face_px * mouth_share, 1),
            "classifier_size": classifier_size,
            "face_width_at_classifier_input_px": round(face_cls_px, 1),
            "mouth_width_at_classifier_input_px": round(face_cls_px * mouth_share, 1),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="train,degraded16", help="comma-separated renderer presets")
    p.add_argument("--subjects", type=int, default=6, help="identities, each posing the 8 classes")
    p.add_argument("--seed", type=int, default=0, help="backgrounds and render keys")
    p.add_argument("--classifier-size", type=int, default=32, help="the classifier's input size")
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args()
    if a.subjects < 1:
        p.error(f"--subjects must be >= 1, got {a.subjects}")
    if a.classifier_size < 1:
        p.error(f"--classifier-size must be >= 1, got {a.classifier_size}")
    out_path = pathlib.Path(a.out) if a.out else None
    if out_path is not None and not out_path.parent.is_dir():
        p.error(f"--out {a.out}: folder {out_path.parent} does not exist")
    try:
        result = measure(tuple(x for x in a.presets.split(",") if x), a.subjects, a.seed, a.classifier_size)
    except ValueError as e:
        p.error(str(e))
    text = json.dumps(result, indent=1)
    print(text)
    if out_path is not None:
        out_path.write_text(text + "\n")


if __name__ == "__main__":
    main()
