"""RAF-DB (basic emotions): native layout and labels (docs/data.md 6.7).

``EmoLabel/list_patition_label.txt`` (sic) has one ``train_00001.jpg 5`` line
per image; the 100x100 aligned faces are ``Image/aligned/train_00001_aligned.jpg``.
Labels 1 surprise, 2 fear, 3 disgust, 4 happiness, 5 sadness, 6 anger,
7 neutral (7 classes). The ``train_`` / ``test_`` prefix is the official
partition. RAF-DB has no identities (every image is its own subject) and its
aligned faces are pre-cropped, so an ellipse inscribed in the frame masks them.
"""

from __future__ import annotations

import pathlib

from feratt_jax.data.real.items import Listing, RawItem, first_existing, map_code, parse_int, relative
from feratt_jax.data.real.records import PARTITION_TEST, PARTITION_TRAIN

NUM_CLASSES = 7
RAFDB_TO_UNIFIED = {1: 2, 2: 6, 3: 5, 4: 1, 5: 3, 6: 4, 7: 0}
_LABEL_PLACES = (
    "EmoLabel/list_patition_label.txt",
    "list_patition_label.txt",
    "basic/EmoLabel/list_patition_label.txt",
)
_ALIGNED_PLACES = ("Image/aligned", "aligned", "basic/Image/aligned")


def list_items(raw_dir: pathlib.Path) -> Listing:
    """Lists the RAF-DB basic-emotion images.

    Raises:
      FileNotFoundError: the label list or the aligned-image folder is missing.
    """
    label_file = first_existing(raw_dir, _LABEL_PLACES, "RAF-DB label list (list_patition_label.txt)", is_dir=False)
    aligned = first_existing(raw_dir, _ALIGNED_PLACES, "RAF-DB aligned faces (Image/aligned/)", is_dir=True)
    where = relative(label_file, raw_dir)
    listing = Listing(items=[], num_classes=NUM_CLASSES)
    for line_no, line in enumerate(label_file.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        source = f"{where}:{line_no}"
        if len(fields) != 2:
            listing.skips.append((source, f"expected 'NAME LABEL', got {line.strip()!r}"))
            continue
        name, code = fields
        try:
            label = map_code(parse_int(code), RAFDB_TO_UNIFIED)
        except ValueError as err:
            listing.skips.append((source, str(err)))
            continue
        stem = pathlib.Path(name).stem
        candidates = [aligned / f"{stem}_aligned{pathlib.Path(name).suffix}", aligned / name]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            listing.skips.append((source, f"image not found: {relative(candidates[0], raw_dir)}"))
            continue
        partition = PARTITION_TEST if stem.startswith("test") else PARTITION_TRAIN
        listing.items.append(
            RawItem(
                source=relative(image, raw_dir),
                label=label,
                subject=None,
                partition=partition,
                image_path=str(image),
                pre_cropped=True,
            )
        )
    return listing
