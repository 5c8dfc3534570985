"""AffectNet: native layout and labels (docs/data.md 6.6, docs/reference.md 5.1).

``Manually_Annotated_file_lists/training.csv`` and ``validation.csv`` have the
columns ``subDirectory_filePath, face_x, face_y, face_width, face_height,
facial_landmarks, expression, valence, arousal``; images are under
``Manually_Annotated_Images/`` (or ``Manually_Annotated/Manually_Annotated_Images/``).
``facial_landmarks`` is ``x1;y1;...;x68;y68``. Expressions 0-7 are neutral,
happy, sad, surprise, fear, disgust, anger, contempt (mapped with
``[0, 1, 3, 2, 6, 5, 4, 7]``); 8 none, 9 uncertain and 10 no-face are dropped.

``training.csv`` is the train partition; ``validation.csv`` (AffectNet's
test set is not public) is the test partition. AffectNet has no identities:
every image is its own subject.
"""

from __future__ import annotations

import pathlib

import numpy as np

from feratt_jax.data.real.items import Listing, RawItem, first_existing, map_code, parse_int, read_csv_rows, relative
from feratt_jax.data.real.records import PARTITION_TEST, PARTITION_TRAIN

NUM_CLASSES = 8
AFFECTNET_TO_UNIFIED = dict(enumerate([0, 1, 3, 2, 6, 5, 4, 7]))
DROPPED_CODES = {8: "none", 9: "uncertain", 10: "no-face"}
COLUMNS = (
    "subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks", "expression",
)
_LIST_DIRS = ("Manually_Annotated_file_lists", ".")
_IMAGE_DIRS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images", ".")
_CSV_PARTITIONS = (("training.csv", PARTITION_TRAIN), ("validation.csv", PARTITION_TEST))


def _parse_landmarks(text: str) -> np.ndarray | None:
    """``x1;y1;...`` -> (68, 2), or ``None`` when absent or malformed (the face box is used then)."""
    try:
        values = np.array([float(v) for v in text.replace(",", ";").split(";") if v.strip()])
    except ValueError:
        return None
    if values.size != 136 or not np.all(np.isfinite(values)):
        return None
    return values.reshape(68, 2)


def list_items(raw_dir: pathlib.Path) -> Listing:
    """Lists the manually annotated AffectNet images with labels 0-7.

    Raises:
      FileNotFoundError: neither CSV nor the image folder exists.
      ValueError: a CSV lacks a column (names the file and line 1).
    """
    listing = Listing(items=[], num_classes=NUM_CLASSES)
    csvs = []
    for name, partition in _CSV_PARTITIONS:
        for d in _LIST_DIRS:
            if (raw_dir / d / name).is_file():
                csvs.append((raw_dir / d / name, partition))
                break
    if not csvs:  # raises, naming every place looked at
        places = [f"{d}/{n}" for d in _LIST_DIRS for n, _ in _CSV_PARTITIONS]
        first_existing(raw_dir, places, "AffectNet CSVs", is_dir=False)
    # "." last: paths in the CSV may also be relative to the raw folder itself.
    image_root = next(raw_dir / d for d in _IMAGE_DIRS if (raw_dir / d).is_dir())
    for csv_path, partition in csvs:
        where = relative(csv_path, raw_dir)
        for line, row in read_csv_rows(csv_path, COLUMNS, listing.skips, where):
            source = f"{where}:{line}"
            try:
                code = parse_int(row["expression"])
                if code in DROPPED_CODES:
                    listing.dropped[f"expression {code} ({DROPPED_CODES[code]})"] += 1
                    continue
                label = map_code(code, AFFECTNET_TO_UNIFIED)
                box = tuple(float(row[k]) for k in ("face_x", "face_y", "face_width", "face_height"))
                if box[2] <= 0 or box[3] <= 0:
                    raise ValueError(f"empty face box {box}")
            except ValueError as err:
                listing.skips.append((source, str(err)))
                continue
            rel_path = row["subDirectory_filePath"].strip()
            listing.items.append(
                RawItem(
                    source=f"{source} ({rel_path})",
                    label=label,
                    subject=None,
                    partition=partition,
                    image_path=str(image_root / rel_path),
                    landmarks=_parse_landmarks(row["facial_landmarks"]),
                    face_box=box,
                )
            )
    return listing
