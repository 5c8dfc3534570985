"""Optional TFDS builders around the real-dataset converters (extra ``[tfds]``; TensorFlow not needed).

For people who keep their data in TFDS: each builder reads the dataset's
native layout from TFDS's manual-download folder and yields the same aligned
records as ``feratt data prepare`` (:mod:`feratt_jax.data.real`), one TFDS
feature per field of :data:`feratt_jax.data.real.records.RECORD_DTYPE`::

    pip install 'feratt-jax[tfds]'
    python -c "from feratt_jax.data.tfds_builders import build; build('ckplus', '~/raw/CK+', '~/tfds')"
    TFDS_DATA_DIR=~/tfds feratt train --config ckplus_real --workdir runs/ck --config.data.source=tfds:ckplus

Without TensorFlow: TFDS encodes ``Image`` features through TensorFlow and
writes its default tfrecord files with it, so these builders store the faces
as uint8 ``Tensor`` features and default to the ``array_record`` file format,
both of which TFDS writes and reads (``tfds.data_source``) with NumPy and
array_record alone (measured: docs/install.md).

The main path stays ``feratt data prepare`` (no TFDS): this module imports
``tensorflow_datasets`` only when a builder is asked for.
"""

from __future__ import annotations

import functools
import logging
import os
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

    from feratt_jax.data.real import align, prepare, records

    num_classes = NUM_CLASSES[dataset]

    def _info(self):
        size = align.FACE_SIZE
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{dataset} faces aligned into 128x128 grey dark faces by feratt_jax (unified label order).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(size, size), dtype=np.uint8),
                    "mask": tfds.features.Tensor(shape=(size, size), dtype=np.uint8),
                    "landmarks": tfds.features.Tensor(shape=(align.NUM_LANDMARKS, 2), dtype=np.float32),
                    "label": tfds.features.ClassLabel(names=list(EXPRESSION_NAMES[:num_classes])),
                    "subject": tfds.features.Tensor(shape=(), dtype=np.int32),
                    "source_index": tfds.features.Tensor(shape=(), dtype=np.int64),
                    "method": tfds.features.ClassLabel(names=list(align.METHOD_NAMES)),
                    "partition": tfds.features.Tensor(shape=(), dtype=np.uint8),
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
            yield int(item.source_index), {key: rec[key].item() if rec[key].ndim == 0 else rec[key] for key in records.RECORD_KEYS}

    def __init__(self, *, file_format: str = "array_record", **kwargs):
        # tfrecord (TFDS's default) is written through TensorFlow; array_record is not.
        tfds.core.GeneratorBasedBuilder.__init__(self, file_format=file_format, **kwargs)

    attrs = {
        "VERSION": tfds.core.Version("2.0.0"),
        "RELEASE_NOTES": {
            "1.0.0": "Image features (needed TensorFlow to build).",
            "2.0.0": "uint8 Tensor features, array_record files, every prepared field: builds without TensorFlow.",
        },
        "__init__": __init__,
        "MANUAL_DOWNLOAD_INSTRUCTIONS": MANUAL_DOWNLOAD_INSTRUCTIONS[dataset],
        "__doc__": f"{dataset} converted by feratt_jax.data.real (manual download).",
        "__module__": __name__,
        "_info": _info,
        "_split_generators": _split_generators,
        "_generate_examples": _generate_examples,
    }
    # TFDS derives the registered name from the class name: FerattCkplus -> feratt_ckplus.
    return type(f"Feratt{dataset.capitalize()}", (tfds.core.GeneratorBasedBuilder,), attrs)


def build(dataset: str, manual_dir: str | pathlib.Path, data_dir: str | pathlib.Path | None = None) -> Any:
    """Build ``feratt_<dataset>`` from the raw files in ``manual_dir`` into ``data_dir`` (TFDS's default if None)."""
    tfds = require_tfds()
    builder = builder_class(dataset)(data_dir=None if data_dir is None else str(pathlib.Path(data_dir).expanduser()))
    manual = pathlib.Path(manual_dir).expanduser()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    return builder


def load_tfds_bank(dataset: str, data_dir: str | pathlib.Path | None = None) -> dict:
    """A built ``feratt_<dataset>`` read back through ``tfds.data_source`` as the trainer's face bank.

    ``data_dir`` defaults to ``$TFDS_DATA_DIR``, then TFDS's own default.

    Every split is read (the partition is a field of each record) and the
    records are put back in the dataset's listing order, so the bank equals
    the one :func:`feratt_jax.data.real.records.load_prepared_bank` gives for
    the same raw files.

    Raises:
      ValueError: unknown dataset.
      FileNotFoundError: not built in ``data_dir`` (the message says how to build it).
    """
    import numpy as np

    from feratt_jax.data.real import records

    # TFDS reads $TFDS_DATA_DIR once, at import; read it here so a later setting counts.
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    root = None if data_dir is None else str(pathlib.Path(data_dir).expanduser())
    builder = builder_class(dataset)(data_dir=root)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {builder.name} is not built in {builder.data_dir}: run "
            f"feratt_jax.data.tfds_builders.build({dataset!r}, RAW_DIR, DATA_DIR) (or set TFDS_DATA_DIR)"
        )
    tfds = require_tfds()
    rows = []
    for split in builder.info.splits:
        source = tfds.data_source(builder.name, split=split, data_dir=root)
        for i in range(len(source)):
            ex = source[i]
            rec = np.zeros((), records.RECORD_DTYPE)
            for key in records.RECORD_KEYS:
                value = ex[key]
                rec[key] = value.decode() if isinstance(value, bytes) else value
            rows.append(rec)
    recs = np.stack(rows) if rows else np.zeros(0, records.RECORD_DTYPE)
    recs = recs[np.argsort(recs["source_index"], kind="stable")]
    return records.bank_from_records(recs)
