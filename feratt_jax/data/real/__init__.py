"""Converters for real facial-expression datasets (bring your own data, converted once).

None of CK+, JAFFE, BU-3DFE, FER2013 / FER+, AffectNet or RAF-DB can be
redistributed, so the project ships converters, not data (docs/data.md 0.2):
``feratt data prepare --dataset NAME --raw-dir DIR --out DIR`` parses the
native layout, maps labels to the unified order, aligns every face into the
128x128 grey "dark" face of the synthetic generator's record schema and
writes it once; training then reads the prepared folder with
``--config.data.source=NAME`` (or a path).

Modules:

* :mod:`.align`: landmark alignment (the reference's "dark" faces, with its
  bbox clamp fixed), the LBP-cascade / face-box / full-frame ellipse fallbacks;
* :mod:`.records`: the on-disk record layout, chunked writers that resume,
  and loading a prepared folder back as a face bank;
* :mod:`.ckplus`, :mod:`.jaffe`, :mod:`.bu3dfe`, :mod:`.fer2013` (FER2013 and
  FER+), :mod:`.affectnet`, :mod:`.rafdb`: one native layout each;
* :mod:`.folder`: any class-per-folder image tree;
* :mod:`.prepare`: dispatch, the conversion loop and the CLI entry.

This package's ``__init__`` imports nothing heavy, so the input pipeline can
read :data:`DATASETS` without pulling in scikit-image.
"""

from __future__ import annotations

# Dataset names accepted by ``--dataset`` and ``data.source``.
DATASETS = ("ckplus", "jaffe", "bu3dfe", "fer2013", "ferplus", "affectnet", "rafdb")
# Output formats of ``feratt data prepare --format`` (auto: npz or shards by dataset size).
FORMAT_CHOICES = ("auto", "npz", "shards", "array_record", "npz_shards")
# ``feratt data prepare --dataset folder``: a class-per-folder tree (:mod:`.folder`). Not a
# ``data.source`` name: train on the prepared folder's path.
FOLDER = "folder"
PREPARE_DATASETS = DATASETS + (FOLDER,)
# Classes of each dataset (7: no contempt); labels are 0..C-1 of the unified order.
NUM_CLASSES = {"ckplus": 8, "jaffe": 7, "bu3dfe": 7, "fer2013": 7, "ferplus": 8, "affectnet": 8, "rafdb": 7}
