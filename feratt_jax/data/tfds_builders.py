"""Optional TFDS builders around the real-dataset converters (extra ``[tfds]``; TensorFlow not needed).

For people who keep their data in TFDS: each builder reads the dataset's
native layout from TFDS's manual-download folder and yields the same aligned
records as ``feratt data prepare`` (:mod:`feratt_jax.data.real`)::

    pip install 'feratt-jax[tfds]'
    python -c "from feratt_jax.data.tfds_builders import builder_class; \\
        builder_class('ckplus')(data_dir='~/tfds').download_and_prepare(\\
        download_config=__import__('tensorflow_datasets').download.DownloadConfig(manual_dir='~/raw/CK+'))"

The main path stays ``feratt data prepare`` (no TFDS): this module imports
``tensorflow_datasets`` only when a builder is asked for.
"""

from __future__ import annotations

import functools
import logging
import pathlib
from typing import Any

from feratt_jax import EXPRESSION_NAMES
from feratt_jax.data.real import DATASETS, NUM_CLASSES

log = logging.getLogger(__name__)

_WHERE = {
    "ckplus": "the CK+ folder with cohn-kanade-images/, Emotion/ and (optionally) Landmarks/",
    "jaffe": "the JAFFE images (KA.AN1.39.tiff, ...)",
    "bu3dfe": "the BU-3DFE subject folders with the *_F2D.bmp frontal images",
    "fer2013": "fer2013.csv",
    "ferplus": "fer2013.csv and FER+'s fer2013new.csv",
    "affectnet": "Manually_Annotated_file_lists/{training,validation}.csv and Manually_Annotated_Images/",
    "rafdb": "RAF-DB basic: EmoLabel/list_patition_label.txt and Image/aligned/",
}

# Shown by TFDS when the manual folder is missing; the same text for every builder but the contents.
MANUAL_DOWNLOAD_INSTRUCTIONS = {
    name: (
        f"{name} cannot be downloaded automatically: request it from its provider under their licence, "
        f"then point --manual_dir (DownloadConfig(manual_dir=...)) at {where}."
    )
    for name, where in _WHERE.items()
}

_SPLIT_NAMES = {0: "train", 1: "validation", 2: "test"}


def require_tfds() -> Any:
    """Imports ``tensorflow_datasets``, or raises an ImportError naming the ``[tfds]`` extra."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            "the TFDS builders need tensorflow-datasets, an optional extra: pip install 'feratt-jax[tfds]' "
            "(TensorFlow itself is not needed). Without it, use `feratt data prepare`."
        ) from err
    return tfds


@functools.lru_cache(maxsize=None)
def builder_class(dataset: str) -> type:
    """The TFDS ``GeneratorBasedBuilder`` of a dataset (named ``feratt_<dataset>`` in TFDS).

    Cached: TFDS registers a class per name, so each is created once.

    Raises:
      ValueError: unknown dataset.
      ImportError: tensorflow-datasets is not installed (names the ``[tfds]`` extra).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; use one of {DATASETS}")
    tfds = require_tfds()
    import numpy as np

    from feratt_jax.data.real import align, prepare

    num_classes = NUM_CLASSES[dataset]

    def _info(self):
        size = align.FACE_SIZE
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{dataset} faces aligned into 128x128 grey dark faces by feratt_jax (unified label order).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 1)),
                    "mask": tfds.features.Image(shape=(size, size, 1)),
                    "landmarks": tfds.features.Tensor(shape=(align.NUM_LANDMARKS, 2), dtype=np.float32),
                    "label": tfds.features.ClassLabel(names=list(EXPRESSION_NAMES[:num_classes])),
                    "subject": tfds.features.Tensor(shape=(), dtype=np.int32),
                    "method": tfds.features.ClassLabel(names=list(align.METHOD_NAMES)),
                    "source": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        raw = pathlib.Path(str(dl_manager.manual_dir))
        listing = prepare.list_dataset(dataset, raw)
        for where, why in listing.skips:
            log.warning("%s: skipped %s: %s", dataset, where, why)
        prepare.assign_ids(listing.items)
        by_split: dict[str, list] = {}
        for item in listing.items:
            # Datasets without official partitions go to "train"; folds are the user's choice.
            by_split.setdefault(_SPLIT_NAMES.get(item.partition, "train"), []).append(item)
        return {name: self._generate_examples(items) for name, items in by_split.items()}

    def _generate_examples(self, items):
        for item in items:
            try:
                rec = prepare.convert_item(item)
            except ValueError as err:
                log.warning("%s: skipped %s: %s", dataset, item.source, err)
                continue
            yield int(item.source_index), {
                "image": rec["image"][..., None],
                "mask": rec["mask"][..., None],
                "landmarks": rec["landmarks"],
                "label": int(rec["label"]),
                "subject": np.int32(rec["subject"]),
                "method": int(rec["method"]),
                "source": str(rec["source"]),
            }

    attrs = {
        "VERSION": tfds.core.Version("1.0.0"),
        "MANUAL_DOWNLOAD_INSTRUCTIONS": MANUAL_DOWNLOAD_INSTRUCTIONS[dataset],
        "__doc__": f"{dataset} converted by feratt_jax.data.real (manual download).",
        "__module__": __name__,
        "_info": _info,
        "_split_generators": _split_generators,
        "_generate_examples": _generate_examples,
    }
    # TFDS derives the registered name from the class name: FerattCkplus -> feratt_ckplus.
    return type(f"Feratt{dataset.capitalize()}", (tfds.core.GeneratorBasedBuilder,), attrs)
