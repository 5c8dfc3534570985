"""``feratt predict clip.mp4``: the expression of the face in every frame of a video.

Each frame goes through what ``feratt predict`` does to a photo (the largest
face, cropped with a margin, grey, resized); the crops are classified in
batches on the device. Optional temporal smoothing is an exponential moving
average of the class probabilities (``smooth`` = weight of the past). Outputs,
in the output folder:

* ``<clip>.csv``: one row per frame: frame, time_s, face_detected, the box
  (row, col, height, width), label, one probability column per class;
* ``<clip>_annotated.mp4``: the frames with the box, the label and the
  attention map (FERAtt variants) blended into the box.

Video I/O goes through imageio's ffmpeg plugin (extra ``[video]``:
``imageio-ffmpeg``, which ships its own ffmpeg binary).
"""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
NEEDS_FFMPEG = "reading and writing video needs imageio-ffmpeg: pip install 'feratt-jax[video]' (or imageio-ffmpeg)"


def is_video(path: str | pathlib.Path) -> bool:
    return pathlib.Path(path).suffix.lower() in VIDEO_SUFFIXES


def _require_ffmpeg() -> None:
    import importlib.util

    if importlib.util.find_spec("imageio_ffmpeg") is None:
        raise ImportError(NEEDS_FFMPEG)


def open_video(path: str | pathlib.Path) -> tuple[Any, float, int]:
    """``(reader, fps, frame count or 0)``; any decoder failure is a ValueError naming the file."""
    _require_ffmpeg()
    import imageio.v2 as iio

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    try:
        reader = iio.get_reader(str(path), format="ffmpeg")
        meta = reader.get_meta_data()
        first = reader.get_data(0)
    except Exception as err:  # imageio/ffmpeg raise several types for a bad file
        raise ValueError(f"cannot read video {path} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if first.ndim < 2:
        raise ValueError(f"cannot read video {path} (no image frames)")
    fps = float(meta.get("fps") or 0.0) or 25.0
    try:
        count = int(reader.count_frames())
    except Exception:  # noqa: BLE001 - only the progress bar's total
        count = 0
    return reader, fps, count


def smooth_probabilities(probs_TC: np.ndarray, smooth: float) -> np.ndarray:
    """Exponential moving average over frames: ``s_t = smooth * s_{t-1} + (1 - smooth) * p_t`` (s_0 = p_0)."""
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"--smooth must be in [0, 1), got {smooth}")
    out = np.array(probs_TC, np.float64, copy=True)
    for t in range(1, len(out)):
        out[t] = smooth * out[t - 1] + (1.0 - smooth) * out[t]
    return out


def annotate(frame: np.ndarray, box: tuple[int, int, int, int], text: str, attention: np.ndarray | None) -> np.ndarray:
    """The frame (H, W, 3) uint8 with the attention map blended into ``box``, the box and ``text``."""
    from PIL import Image, ImageDraw
    from skimage import transform

    out = np.array(frame[..., :3] if frame.ndim == 3 else np.repeat(frame[..., None], 3, -1), np.float64)
    r, c, h, w = box
    if attention is not None and h > 1 and w > 1:
        heat = transform.resize(np.asarray(attention, np.float64), (h, w), preserve_range=True)
        tint = np.stack([heat, np.zeros_like(heat), 1.0 - heat], -1) * 255.0  # red = attended, blue = not
        out[r : r + h, c : c + w] = 0.6 * out[r : r + h, c : c + w] + 0.4 * tint
    image = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle([c, r, c + w - 1, r + h - 1], outline=(0, 255, 0), width=2)
    draw.text((c + 3, max(r - 12, 0)), text, fill=(0, 255, 0))
    return np.asarray(image)


def _batches(reader: Any, size: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for frame in reader:
        batch.append(np.asarray(frame))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_video(
    path: str | pathlib.Path,
    workdir: str | pathlib.Path,
    *,
    out: str | pathlib.Path | None = None,
    margin: float | None = None,
    smooth: float = 0.0,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Classifies every frame of a video; writes the CSV and the annotated video.

    The video is opened (and checked) before the model is loaded.

    Returns:
      ``{"csv", "video", "frames", "fps", "labels"}`` (``labels``: per frame).

    Raises:
      FileNotFoundError / ValueError: missing or unreadable video (named), bad options.
      ImportError: imageio-ffmpeg is not installed.
    """
    from tqdm.auto import tqdm

    from feratt_jax import predict
    from feratt_jax.runs import LoadedRun

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"--smooth must be in [0, 1), got {smooth}")
    margin = predict.DEFAULT_MARGIN if margin is None else margin
    path = pathlib.Path(path)
    reader, fps, count = open_video(path)
    run = LoadedRun(workdir)
    out_dir = pathlib.Path(out) if out is not None else run.workdir / "predict"
    out_dir.mkdir(parents=True, exist_ok=True)

    boxes, detected, probs, frames_seen = [], [], [], 0
    attention_maps: list[np.ndarray] = []
    with tqdm(total=count or None, disable=not progress, unit="frame", desc=f"predict {path.name}") as bar:
        for frames in _batches(reader, batch_size):
            faces = [predict.crop_face(predict.to_grey(f, "video frame"), run.image_size, margin) for f in frames]
            batch_probs, batch_attention = predict.classify_crops(run, np.stack([f.crop for f in faces]))
            probs.append(batch_probs)
            if batch_attention is not None:
                attention_maps.append(batch_attention)
            boxes += [f.box for f in faces]
            detected += [f.detected for f in faces]
            frames_seen += len(frames)
            bar.update(len(frames))
    reader.close()
    probs_TC = smooth_probabilities(np.concatenate(probs), smooth)
    attention = np.concatenate(attention_maps) if attention_maps else None
    labels = [run.class_names[k] for k in probs_TC.argmax(-1)]

    csv_path = out_dir / f"{path.stem}.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "time_s", "face_detected", "box_row", "box_col", "box_height", "box_width", "label", *run.class_names])
        for t in range(frames_seen):
            writer.writerow([t, f"{t / fps:.4f}", int(detected[t]), *boxes[t], labels[t], *(f"{p:.6f}" for p in probs_TC[t])])

    import imageio.v2 as iio

    video_path = out_dir / f"{path.stem}_annotated.mp4"
    reader, _, _ = open_video(path)
    with iio.get_writer(str(video_path), format="ffmpeg", fps=fps, macro_block_size=1) as writer:
        for t, frame in enumerate(reader):
            text = f"{labels[t]} {probs_TC[t].max():.2f}" + ("" if detected[t] else " (no face)")
            writer.append_data(annotate(np.asarray(frame), boxes[t], text, None if attention is None else attention[t]))
    reader.close()
    return {"csv": str(csv_path), "video": str(video_path), "frames": frames_seen, "fps": fps, "labels": labels}
