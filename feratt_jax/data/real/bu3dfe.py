"""BU-3DFE: native layout and labels (docs/data.md 6.3).

The 2D frontal renders are ``F0001/F0001_AN01WH_F2D.bmp``: subject ``F0001``
(F female, M male), expression ``AN`` at intensity ``01`` (01-04; neutral is
``NE00``), ethnicity ``WH``. Codes AN DI FE HA NE SA SU; no contempt, so 7
classes. The 83 BU-3DFE feature points are not the 68 iBUG ones, so faces
are found with the LBP cascade unless a 68-point landmarks CSV is given.
"""

from __future__ import annotations

import pathlib
import re

from feratt_jax.data.real.items import Listing, RawItem, image_files, map_code, relative, require_dir
from feratt_jax.data.real.jaffe import EXPRESSION_CODES

NUM_CLASSES = 7
_NAME = re.compile(r"^(?P<subject>[FM]\d{4})_(?P<code>[A-Z]{2})(?P<intensity>\d{2})(?P<race>[A-Z]{2})_F2D$")


def list_items(raw_dir: pathlib.Path, *, min_intensity: int = 1) -> Listing:
    """Lists the ``*_F2D`` images under ``raw_dir``.

    Args:
      raw_dir: the BU-3DFE folder.
      min_intensity: expressive faces below this intensity (1-4) are dropped
        (1 = all; some protocols keep only 3-4). Neutral faces are always kept.

    Raises:
      FileNotFoundError: ``raw_dir`` is missing or holds no ``*_F2D`` image.
    """
    require_dir(raw_dir, "BU-3DFE 2D images (F0001/F0001_AN01WH_F2D.bmp, ...)")
    listing = Listing(items=[], num_classes=NUM_CLASSES)
    for path in image_files(raw_dir):
        if not path.stem.upper().endswith("_F2D"):
            continue  # 3D-model textures and other files of the distribution
        where = relative(path, raw_dir)
        m = _NAME.match(path.stem.upper())
        if m is None:
            listing.skips.append((where, "file name is not SUBJECT_CODEnnRR_F2D (e.g. F0001_AN01WH_F2D.bmp)"))
            continue
        try:
            label = map_code(m["code"], EXPRESSION_CODES)
        except ValueError as err:
            listing.skips.append((where, str(err)))
            continue
        if label != 0 and int(m["intensity"]) < min_intensity:
            listing.dropped[f"intensity below {min_intensity}"] += 1
            continue
        listing.items.append(RawItem(source=where, label=label, subject=m["subject"], image_path=str(path)))
    if not listing.items and not listing.skips and not listing.dropped:
        raise FileNotFoundError(f"no BU-3DFE 2D images (*_F2D.bmp) under {raw_dir}")
    return listing
