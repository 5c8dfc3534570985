"""Which face detector finds more faces: scikit-image's LBP cascade or OpenCV's bundled Haar cascades.

Images (all shipped with scikit-image, so the measurement needs no download):

* ``astronaut`` (512x512 portrait);
* the 100 faces of ``skimage.data.lfw_subset()`` (25x25 tight crops of LFW),
  enlarged 4x and pasted in the middle of a 200x200 canvas of their mean grey;
* the 100 non-face patches of the same set, prepared the same way (false positives).

Each image is also rotated by +-15 and +-30 degrees and scaled by 0.5 and 1.5.
A face counts as found when a detection's centre lies inside the true box
(moved with the image) and its side is 0.4-2.5 times the true side. The
astronaut's true box is the face the two detectors agree on in the original
(IoU > 0.5), printed with the results.

    PYTHONPATH=. python experiments/face_detectors.py --out experiments/results/face_detectors

(``pip install 'opencv-python-headless<5'`` first, i.e. the ``[detect]`` extra.)
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib

import numpy as np
from skimage import data, transform

from feratt_jax import predict
from feratt_jax.face_detect import detect_faces_opencv

TRANSFORMS = (("original", 0.0, 1.0), ("rot+15", 15.0, 1.0), ("rot-15", -15.0, 1.0), ("rot+30", 30.0, 1.0),
              ("rot-30", -30.0, 1.0), ("scale0.5", 0.0, 0.5), ("scale1.5", 0.0, 1.5))
DETECTORS = {"lbp (scikit-image)": lambda g: predict.detect_faces(g, backend="lbp"), "haar (opencv)": detect_faces_opencv}


def _lfw_canvas(patch: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    big = transform.resize(patch, (100, 100), order=1)
    canvas = np.full((200, 200), float(patch.mean()))
    canvas[50:150, 50:150] = big
    return canvas, (100.0, 100.0, 100.0)  # centre row, centre col, side


def _moved(image: np.ndarray, truth: tuple[float, float, float], angle: float, scale: float):
    """The image rotated about its centre / rescaled, and where the true face centre and side go."""
    r, c, side = truth
    if scale != 1.0:
        return transform.rescale(image, scale, anti_aliasing=scale < 1), (r * scale, c * scale, side * scale)
    if angle:
        h, w = image.shape
        cy, cx = (h - 1) / 2, (w - 1) / 2
        t = math.radians(angle)  # skimage turns counter-clockwise as displayed (y down)
        dy, dx = r - cy, c - cx
        new = (cy - math.sin(t) * dx + math.cos(t) * dy, cx + math.cos(t) * dx + math.sin(t) * dy, side)
        return transform.rotate(image, angle, mode="edge"), new
    return image, truth


def _found(boxes, truth) -> bool:
    r, c, side = truth
    for br, bc, bh, bw in boxes:
        cr, cc, s = br + bh / 2, bc + bw / 2, (bh + bw) / 2
        if abs(cr - r) <= side / 2 and abs(cc - c) <= side / 2 and 0.4 * side <= s <= 2.5 * side:
            return True
    return False


def _iou(a, b) -> float:
    (ar, ac, ah, aw), (br, bc, bh, bw) = a, b
    ih = max(0, min(ar + ah, br + bh) - max(ar, br))
    iw = max(0, min(ac + aw, bc + bw) - max(ac, bc))
    inter = ih * iw
    return inter / (ah * aw + bh * bw - inter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="experiments/results/face_detectors")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    astronaut = data.astronaut().astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    lbp0, haar0 = (d(astronaut) for d in DETECTORS.values())
    agreed = [(a, b) for a in lbp0 for b in haar0 if _iou(a, b) > 0.5]
    if not agreed:
        raise SystemExit(f"the detectors do not agree on the astronaut's face: lbp {lbp0}, haar {haar0}")
    (a, b) = agreed[0]
    box = [(x + y) / 2 for x, y in zip(a, b)]
    astronaut_truth = (box[0] + box[2] / 2, box[1] + box[3] / 2, (box[2] + box[3]) / 2)

    lfw = data.lfw_subset()
    faces = [("astronaut", astronaut, astronaut_truth)] + [(f"lfw{i}", *_lfw_canvas(lfw[i])) for i in range(100)]
    non_faces = [_lfw_canvas(lfw[i])[0] for i in range(100, 200)]

    results: dict[str, dict] = {}
    for name, detect in DETECTORS.items():
        rows = {}
        for tname, angle, scale in TRANSFORMS:
            hits = {}
            for fname, image, truth in faces:
                moved, moved_truth = _moved(image, truth, angle, scale)
                hits[fname] = _found(detect(moved), moved_truth)
            false_pos = sum(bool(detect(_moved(img, (0, 0, 1), angle, scale)[0])) for img in non_faces)
            rows[tname] = {
                "astronaut": hits["astronaut"],
                "lfw_faces_found": sum(v for k, v in hits.items() if k.startswith("lfw")),
                "lfw_non_faces_with_a_detection": false_pos,
            }
            print(name, tname, rows[tname], flush=True)
        results[name] = rows
    summary = {"astronaut_true_box_rcwh": [round(v, 1) for v in box], "of": {"lfw_faces": 100, "lfw_non_faces": 100}, "results": results}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| transform | " + " | ".join(f"{n}: astronaut / LFW faces found / non-faces with a detection" for n in DETECTORS) + " |",
             "|---" * (1 + len(DETECTORS)) + "|"]
    for tname, _, _ in TRANSFORMS:
        cells = [f"{'yes' if results[n][tname]['astronaut'] else 'no'} / {results[n][tname]['lfw_faces_found']} / "
                 f"{results[n][tname]['lfw_non_faces_with_a_detection']}" for n in DETECTORS]
        lines.append(f"| {tname} | " + " | ".join(cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
