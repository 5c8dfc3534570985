"""``feratt predict``: classify the expression of the face in photos with a trained run.

For each image: find faces with scikit-image's bundled LBP frontal-face cascade,
take the largest detection (the whole image, with a warning, when there is
none), crop it with a margin, convert it to grey, resize it to the run's image
size and classify it. The model sees what training saw: a grey image
replicated to three channels with values in [0, 1] (the synthetic training
composites are grey faces on clutter at random geometry, so a loose square
crop around the face is in distribution).

Each image gets one printed line (label and per-class probabilities; ``--json``
prints one JSON document instead) and an overlay PNG: the photo with the box,
the crop with the mean-sigmoid attention map as a heatmap (FERAtt variants),
and the class probabilities, titled with the predicted label.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from typing import Any, Sequence

import numpy as np

from feratt_jax.plots import attention_map
from feratt_jax.runs import LoadedRun, write_json
from feratt_jax.step import predict_dataset

# Share of the detection's side added on each side of the crop: the cascade's
# box hugs eyes-to-mouth, while training faces include the whole head outline.
DEFAULT_MARGIN = 0.25
# Photos larger than this (longest side) are shrunk for detection only; the
# cascade's cost grows with the pixel count and faces stay detectable.
_DETECT_MAX_SIDE = 800


@dataclasses.dataclass
class FaceCrop:
    """A face found in a photo.

    Attributes:
      box: (row, col, height, width) of the crop in the original image.
      detected: False when no face was found and the crop is the whole image.
      crop: (S, S) float32 grey crop in [0, 1] resized to the model's size.
      detections: number of cascade detections.
    """

    box: tuple[int, int, int, int]
    detected: bool
    crop: np.ndarray
    detections: int


# ==========================================================================
# Image reading and face finding
# ==========================================================================


def to_grey(img: np.ndarray, where: object = "image") -> np.ndarray:
    """A decoded photo or video frame (H, W[, 1|3|4]) as a float64 grey image in [0, 1].

    Photos and video frames go through the same conversion (skimage's
    ``rgb2gray``), so a frame finds the same face box as the photo it shows.
    """
    from skimage import color, util

    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]  # drop alpha
    if img.ndim == 3 and img.shape[-1] == 3:
        grey = color.rgb2gray(img)
    elif img.ndim == 3 and img.shape[-1] == 1:
        grey = util.img_as_float(img[..., 0])
    elif img.ndim == 2:
        grey = util.img_as_float(img)
    else:
        raise ValueError(f"cannot read image {where}: unsupported shape {img.shape} (expected a 2-D grey or RGB(A) image)")
    return np.clip(np.asarray(grey, np.float64), 0.0, 1.0)


def read_image(path: str | pathlib.Path) -> np.ndarray:
    """Read a photo as a float grey image in [0, 1].

    Args:
      path: image file (anything scikit-image/imageio reads).

    Returns:
      (H, W) float64 grey image.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file is not a readable image (message names the file).
    """
    from skimage import io

    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if not path.is_file():
        raise ValueError(f"not an image file: {path}")
    try:
        img = io.imread(str(path))
    except Exception as err:  # imageio/PIL raise many kinds for a corrupt file
        # Only the first line: imageio appends plugin install hints that do not
        # help with a file that is simply not an image.
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"cannot decode {path} as an image (unsupported format or corrupt: {reason})") from err
    grey = to_grey(np.asarray(img), path)
    if min(grey.shape) < 8:
        raise ValueError(f"image {path} is too small ({grey.shape[1]}x{grey.shape[0]} pixels)")
    return grey


_CASCADE = None


def _cascade():
    """The LBP frontal-face cascade shipped with scikit-image (loaded once)."""
    global _CASCADE
    if _CASCADE is None:
        from skimage import data, feature

        _CASCADE = feature.Cascade(data.lbp_frontal_face_cascade_filename())
    return _CASCADE


def detect_faces(grey: np.ndarray, backend: str = "auto") -> list[tuple[int, int, int, int]]:
    """Faces found by the cascade, as (row, col, height, width) boxes in ``grey``'s pixels.

    Args:
      grey: (H, W) grey image in [0, 1].
      backend: "opencv" (OpenCV's bundled Haar cascades, extra ``[detect]``),
        "lbp" (scikit-image's LBP cascade), or "auto": OpenCV when installed.

    Returns:
      Boxes, largest first.
    """
    from skimage import transform

    from feratt_jax import face_detect

    if backend not in face_detect.BACKENDS:
        raise ValueError(f"face detector must be one of {face_detect.BACKENDS}, got {backend!r}")
    if backend == "opencv" or (backend == "auto" and face_detect.opencv_available()):
        return face_detect.detect_faces_opencv(grey)

    h, w = grey.shape
    scale = min(1.0, _DETECT_MAX_SIDE / max(h, w))
    small = transform.rescale(grey, scale, anti_aliasing=True) if scale < 1.0 else grey
    short = min(small.shape)
    found = _cascade().detect_multi_scale(
        img=small,
        scale_factor=1.2,
        step_ratio=1,
        min_size=(max(24, short // 16),) * 2,
        max_size=(short, short),
    )
    boxes = [
        (int(d["r"] / scale), int(d["c"] / scale), int(d["height"] / scale), int(d["width"] / scale)) for d in found
    ]
    return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)


def crop_face(grey: np.ndarray, image_size: int, margin: float = DEFAULT_MARGIN) -> FaceCrop:
    """Crop the largest face (or the whole image) to a square of ``image_size``.

    Args:
      grey: (H, W) grey image in [0, 1].
      image_size: side of the model's input.
      margin: share of the box's side added on each side.

    Returns:
      The :class:`FaceCrop`.
    """
    from skimage import transform

    h, w = grey.shape
    boxes = detect_faces(grey)
    if boxes:
        r, c, bh, bw = boxes[0]
        side = int(round(max(bh, bw) * (1.0 + 2.0 * margin)))
        side = min(side, h, w)
        # Centre the square on the detection, then shift it back inside the image.
        r0 = int(np.clip(r + bh / 2 - side / 2, 0, h - side))
        c0 = int(np.clip(c + bw / 2 - side / 2, 0, w - side))
        box = (r0, c0, side, side)
    else:
        box = (0, 0, h, w)
    r0, c0, bh, bw = box
    patch = grey[r0 : r0 + bh, c0 : c0 + bw]
    crop = transform.resize(patch, (image_size, image_size), anti_aliasing=True, preserve_range=True)
    return FaceCrop(box=box, detected=bool(boxes), crop=np.clip(crop, 0.0, 1.0).astype(np.float32), detections=len(boxes))


# ==========================================================================
# Classification and overlays
# ==========================================================================


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def classify_crops(run: Any, crops_BHW: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Class probabilities (float64) and attention maps (None without attention) of grey face crops.

    The batch is padded to a multiple of the device count only.

    ``LoadedRun.predict`` pads to the run's eval batch (128 for the real
    configs): wasteful on a CPU for one photo, so the batch here is the
    smallest multiple of the mesh size that holds all images.
    """

    # The mesh spans every device of every process, so its size is a
    # multiple of the process count too.
    multiple = int(run.mesh.devices.size)
    batch = -(-crops_BHW.shape[0] // multiple) * multiple
    # Grey (B, H, W, 1): the eval step makes it RGB.
    outputs = predict_dataset(run.eval_step, run.state, {"image": crops_BHW[..., None]}, batch, run.mesh, keep=("logits", "attention"))
    attention = attention_map(outputs["attention"]) if "attention" in outputs else None
    return _softmax(outputs["logits"].astype(np.float64)), attention


def overlay_png(
    path: str | pathlib.Path,
    grey: np.ndarray,
    face: FaceCrop,
    attention: np.ndarray | None,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    title: str,
) -> None:
    """Photo with the crop box | crop with the attention heatmap | class probabilities.

    Args:
      path: output PNG.
      grey: the whole photo (H, W) in [0, 1].
      face: the crop.
      attention: (S', S') attention heatmap in [0, 1], or None.
      probabilities: (C,) class probabilities.
      class_names: C names.
      title: figure title.
    """
    from matplotlib.patches import Rectangle

    from feratt_jax.plots import new_figure

    fig, axes = new_figure((10.5, 3.6), 1, 3, gridspec_kw={"width_ratios": [1.2, 1.0, 1.1]})
    ax = axes[0]
    ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
    r0, c0, bh, bw = face.box
    ax.add_patch(Rectangle((c0, r0), bw, bh, fill=False, edgecolor="lime" if face.detected else "orange", linewidth=2))
    ax.set_title("face found" if face.detected else "no face found: whole image", fontsize=9)
    ax.axis("off")

    ax = axes[1]
    ax.imshow(face.crop, cmap="gray", vmin=0, vmax=1)
    if attention is not None:
        s = face.crop.shape[0]
        ax.imshow(attention, cmap="jet", alpha=0.45, vmin=0, vmax=1, extent=(-0.5, s - 0.5, s - 0.5, -0.5))
        ax.set_title("model input + attention (mean sigmoid)", fontsize=9)
    else:
        ax.set_title("model input (no attention map)", fontsize=9)
    ax.axis("off")

    ax = axes[2]
    order = np.arange(len(class_names))[::-1]
    ax.barh([class_names[i] for i in order], probabilities[order], color="tab:blue")
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability")
    ax.tick_params(labelsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _unique_png(out_dir: pathlib.Path, stem: str, used: set[str]) -> pathlib.Path:
    """``<stem>_overlay.png``, suffixed when two inputs share a stem."""
    name, i = f"{stem}_overlay.png", 1
    while name in used:
        i += 1
        name = f"{stem}_{i}_overlay.png"
    used.add(name)
    return out_dir / name


def predict_images(
    images: Sequence[str | pathlib.Path],
    workdir: str | pathlib.Path,
    *,
    out: str | pathlib.Path | None = None,
    margin: float = DEFAULT_MARGIN,
    warn: Any = None,
) -> list[dict[str, Any]]:
    """Classify the largest face of each image and write overlay PNGs.

    Every image is read (and checked) before the model is loaded, so a typo
    in the last path fails in a second rather than after a compile.

    Args:
      images: image paths.
      workdir: a ``feratt train`` workdir or a model export.
      out: folder for overlays and ``predictions.json`` (default ``<workdir>/predict``).
      margin: crop margin (share of the detection's side on each side).
      warn: callable for warning lines (default: print to stderr).

    Returns:
      One dict per image: ``image``, ``label``, ``probabilities`` (name ->
      p), ``face_detected``, ``box`` [row, col, height, width], ``overlay``.
    """

    if not images:
        raise ValueError("no images given")
    if margin < 0:
        raise ValueError(f"--margin must be >= 0, got {margin}")
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    greys = [read_image(p) for p in images]

    run = LoadedRun(workdir)
    faces = [crop_face(g, run.image_size, margin) for g in greys]
    for path, face in zip(images, faces):
        if not face.detected:
            warn(f"warning: no face found in {path}; classifying the whole image")
    probs, attention = classify_crops(run, np.stack([f.crop for f in faces]))

    out_dir = pathlib.Path(out) if out is not None else run.workdir / "predict"
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    results = []
    for i, (path, grey, face) in enumerate(zip(images, greys, faces)):
        k = int(probs[i].argmax())
        label = run.class_names[k]
        png = _unique_png(out_dir, pathlib.Path(path).stem, used)
        overlay_png(
            png,
            grey,
            face,
            None if attention is None else attention[i],
            probs[i],
            run.class_names,
            f"{pathlib.Path(path).name}: {label} ({probs[i, k]:.2f})",
        )
        results.append(
            {
                "image": str(path),
                "label": label,
                "probability": float(probs[i, k]),
                "probabilities": {name: float(p) for name, p in zip(run.class_names, probs[i])},
                "face_detected": face.detected,
                "detections": face.detections,
                "box": list(face.box),
                "overlay": str(png),
            }
        )
    write_json(out_dir / "predictions.json", results)
    return results


__all__ = ["FaceCrop", "classify_crops", "crop_face", "detect_faces", "predict_images", "read_image"]
