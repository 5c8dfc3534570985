"""CK+ (extended Cohn-Kanade): native layout and labels (docs/data.md 6.1).

Layout under the raw folder::

    cohn-kanade-images/S005/001/S005_001_00000001.png   (frames of a sequence)
    Emotion/S005/001/S005_001_00000011_emotion.txt       (one number; labelled sequences only)
    Landmarks/S005/001/S005_001_00000001_landmarks.txt   (68 lines "x y"; optional)

Protocol (the usual one, and the reference's): of each labelled sequence the
last ``frames_per_sequence`` frames get the sequence's label and the first
frame is neutral. Sequences without an emotion file are dropped. The subject
is the ``S###`` folder. Labels are CK+'s 0 neutral, 1 anger, 2 contempt,
3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise, mapped with
``[0, 4, 7, 5, 6, 1, 3, 2]``.
"""

from __future__ import annotations

import pathlib

from feratt_jax.data.real.items import (
    Listing,
    RawItem,
    map_code,
    parse_int,
    parse_landmark_text,
    relative,
    require_dir,
)

NUM_CLASSES = 8
# CK+ code -> unified label (neutral, happiness, surprise, sadness, anger, disgust, fear, contempt).
CKPLUS_TO_UNIFIED = dict(enumerate([0, 4, 7, 5, 6, 1, 3, 2]))
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _frames(folder: pathlib.Path) -> list[pathlib.Path]:
    """A sequence's frames in order (file names carry the frame number)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith("."))


def list_items(raw_dir: pathlib.Path, *, frames_per_sequence: int = 3) -> Listing:
    """Lists CK+ faces: the peak frames and the first (neutral) frame of every labelled sequence.

    Args:
      raw_dir: the CK+ folder (holding ``cohn-kanade-images/`` and ``Emotion/``).
      frames_per_sequence: peak frames taken from the end of each sequence.

    Returns:
      The :class:`Listing`.

    Raises:
      FileNotFoundError: a required folder is missing.
    """
    if frames_per_sequence < 1:
        raise ValueError(f"frames_per_sequence must be >= 1, got {frames_per_sequence}")
    images = require_dir(raw_dir / "cohn-kanade-images", "CK+ frames (cohn-kanade-images/S###/###/*.png)")
    emotions = require_dir(raw_dir / "Emotion", "CK+ labels (Emotion/S###/###/*_emotion.txt)")
    landmarks_dir = raw_dir / "Landmarks"
    listing = Listing(items=[], num_classes=NUM_CLASSES)
    if not landmarks_dir.is_dir():
        listing.notes.append(f"no {landmarks_dir.name}/ folder: faces are found with the LBP cascade")
    labelled = set()
    for emo_file in sorted(emotions.glob("*/*/*_emotion.txt")):
        subject, sequence = emo_file.parent.parent.name, emo_file.parent.name
        where = relative(emo_file, raw_dir)
        labelled.add((subject, sequence))
        try:
            label = map_code(parse_int(emo_file.read_text()), CKPLUS_TO_UNIFIED)
        except ValueError as err:
            listing.skips.append((f"{where}:1", str(err)))
            continue
        frames = _frames(images / subject / sequence)
        if not frames:
            listing.skips.append((where, f"no frames in {relative(images / subject / sequence, raw_dir)}"))
            continue
        # Last frames carry the expression; the first frame is the neutral onset.
        peak = list(range(max(1, len(frames) - frames_per_sequence), len(frames)))
        chosen = [(0, 0)] + [(i, label) for i in peak]
        for i, frame_label in chosen:
            frame = frames[i]
            lm_file = landmarks_dir / subject / sequence / f"{frame.stem}_landmarks.txt"
            landmarks = None
            if lm_file.is_file():
                try:
                    landmarks = parse_landmark_text(lm_file.read_text())
                except ValueError as err:
                    listing.skips.append((relative(lm_file, raw_dir), f"bad landmark file: {err}"))
                    continue
            listing.items.append(
                RawItem(
                    source=relative(frame, raw_dir),
                    label=frame_label,
                    subject=subject,
                    image_path=str(frame),
                    landmarks=landmarks,
                )
            )
    unlabelled = sum(
        1 for seq in images.glob("*/*") if seq.is_dir() and (seq.parent.name, seq.name) not in labelled
    )
    if unlabelled:
        listing.dropped["sequence without an emotion label"] += unlabelled
    return listing
