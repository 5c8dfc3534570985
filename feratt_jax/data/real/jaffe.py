"""JAFFE: native layout and labels (docs/data.md 6.2).

213 grey 256x256 TIFFs of 10 subjects, named ``KA.AN1.39.tiff``: subject
``KA``, expression code ``AN`` with repetition ``1``, image number ``39``.
Codes AN DI FE HA NE SA SU; no contempt, so 7 classes. JAFFE ships no
landmarks: faces are found with the LBP cascade unless a landmarks CSV is
given to the converter.
"""

from __future__ import annotations

import pathlib
import re

from feratt_jax.data.real.items import Listing, RawItem, image_files, map_code, relative, require_dir

NUM_CLASSES = 7
# Expression code -> unified label (shared with BU-3DFE).
EXPRESSION_CODES = {"NE": 0, "HA": 1, "SU": 2, "SA": 3, "AN": 4, "DI": 5, "FE": 6}
_NAME = re.compile(r"^(?P<subject>[A-Za-z]+)\.(?P<code>[A-Za-z]+?)(?P<rep>\d*)\.(?P<number>\d+)$")


def list_items(raw_dir: pathlib.Path) -> Listing:
    """Lists the JAFFE images found anywhere under ``raw_dir``.

    Raises:
      FileNotFoundError: ``raw_dir`` is missing.
    """
    require_dir(raw_dir, "JAFFE images (KA.AN1.39.tiff, ...)")
    listing = Listing(items=[], num_classes=NUM_CLASSES)
    for path in image_files(raw_dir):
        where = relative(path, raw_dir)
        m = _NAME.match(path.stem)
        if m is None:
            listing.skips.append((where, "file name is not SUBJECT.CODEn.NUMBER (e.g. KA.AN1.39.tiff)"))
            continue
        try:
            label = map_code(m["code"].upper(), EXPRESSION_CODES)
        except ValueError as err:
            listing.skips.append((where, str(err)))
            continue
        listing.items.append(RawItem(source=where, label=label, subject=m["subject"].upper(), image_path=str(path)))
    if not listing.items and not listing.skips:
        raise FileNotFoundError(f"no JAFFE images (SUBJECT.CODEn.NUMBER.tiff) under {raw_dir}")
    return listing
