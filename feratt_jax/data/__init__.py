"""Data: synthetic FACS faces, backgrounds, the on-device compositing renderer, and the input pipeline.

Modules:

* :mod:`~feratt_jax.data.synthfaces`: the procedural face generator (numpy only);
* :mod:`~feratt_jax.data.facebank`: building / caching banks of faces;
* :mod:`~feratt_jax.data.backgrounds`: scikit-image photos, user folders, procedural clutter;
* :mod:`~feratt_jax.data.render`: ``render_batch``, the jitted compositing renderer;
* :mod:`~feratt_jax.data.splits`: subject-independent k-fold splits;
* :mod:`~feratt_jax.data.sampling`: host batches of ingredients (class-balanced, checkpointable iterators);
* :mod:`~feratt_jax.data.device`: rendering train batches and the fixed evaluation sets on the device;
* :mod:`~feratt_jax.data.real`: real-dataset converters and :mod:`~feratt_jax.data.real.bank` (loading them);
* :mod:`~feratt_jax.data.pipeline`: ``DataConfig`` and ``make_datasets``, which assemble the above;
* :mod:`~feratt_jax.data.preview`: the ``feratt data preview`` PNG.

The common names are re-exported lazily, so ``import feratt_jax.data`` stays
free of JAX (the face-bank worker processes import this package).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataConfig": "pipeline",
    "Datasets": "pipeline",
    "make_datasets": "pipeline",
    "eval_batches": "sampling",
    "render_train_batch": "device",
    "keys_from_seeds": "device",
    "RenderConfig": "render",
    "render_batch": "render",
    "render_preset": "render",
    "prepare_faces": "render",
    "TRAIN_PRESET": "render",
    "EVAL_PRESET": "render",
    "GeneratorConfig": "synthfaces",
    "generate_face": "synthfaces",
    "CLASS_NAMES": "synthfaces",
    "load_or_build_bank": "facebank",
    "BackgroundPool": "backgrounds",
    "kfold_subject_split": "splits",
    "write_preview": "preview",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
