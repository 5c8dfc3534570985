"""A PNG contact sheet of what the model is trained on (``feratt data preview``).

For a few subjects and every class it shows the generated dark face (with its
68 landmarks), the transformed clean face ``x_org``, the rendered composite
``image`` and the binary ``mask``, with the class names as text.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from feratt_jax.data import synthfaces
from feratt_jax.data.device import keys_from_seeds
from feratt_jax.data.pipeline import DataConfig, build_background_pool
from feratt_jax.data.render import render_batch
from feratt_jax.plots import new_figure


def _as_data_config(config: Any) -> DataConfig:
    """Accepts None, a DataConfig, a mapping of its fields, or a full experiment ConfigDict."""
    if config is None:
        return DataConfig()
    if isinstance(config, DataConfig):
        return config
    data = getattr(config, "data", None)
    if data is not None and not isinstance(config, Mapping):
        config = data
    elif isinstance(config, Mapping) and "data" in config and isinstance(config["data"], Mapping):
        config = config["data"]
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return DataConfig.from_dict(config)


def write_preview(
    out_path: str | pathlib.Path,
    config: Any = None,
    *,
    num_subjects: int = 2,
    seed: int = 0,
    preset: str | None = None,
    dpi: int = 100,
) -> pathlib.Path:
    """Renders a preview grid and writes it as a PNG.

    Args:
      out_path: PNG path (parent folders are created).
      config: ``None`` (defaults), a :class:`DataConfig`, a mapping of its
        fields, or an experiment ConfigDict with a ``data`` field.
      num_subjects: subjects shown (rows of 4 panels each).
      seed: render seed (backgrounds and augmentation).
      preset: renderer preset; default the config's ``render_preset``.
      dpi: output resolution.

    Returns:
      The written path.
    """
    import jax

    cfg = _as_data_config(config)
    if num_subjects < 1:
        raise ValueError(f"num_subjects must be >= 1, got {num_subjects}")
    # Both configs before any face is drawn: a bad preset or override field stops here.
    rcfg = cfg.render_config(preset)
    gen = cfg.generator_config()
    n_cls = cfg.num_classes
    records = []
    for s in range(num_subjects):
        idn = synthfaces.sample_identity(cfg.face_seed, s, gen)
        records += [synthfaces.generate_face(s, c, 0, cfg.face_seed, gen, identity=idn) for c in range(n_cls)]
    bank = synthfaces.stack_records(records)
    # A small procedural set is enough for a picture and keeps the command quick.
    pool = build_background_pool(
        dataclasses.replace(cfg, num_procedural_backgrounds=min(cfg.num_procedural_backgrounds, 32)), seed=seed
    )
    rng = np.random.default_rng(seed)
    n = len(records)
    bgs = pool.sample(rng, n)
    seeds = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32)
    out = jax.device_get(render_batch(bank["image"], bank["mask"], bgs, bank["label"], keys_from_seeds(seeds), rcfg))

    rows = ("dark face + landmarks", "x_org (clean)", "image (composite)", "mask")
    fig, axes = new_figure((1.6 * n_cls, 1.7 * len(rows) * num_subjects), len(rows) * num_subjects, n_cls, squeeze=False)
    for s in range(num_subjects):
        for c in range(n_cls):
            i = s * n_cls + c
            panels = (
                bank["image"][i],
                np.asarray(out["x_org"][i, ..., 0]),
                np.asarray(out["image"][i, ..., 0]),
                np.asarray(out["mask"][i, ..., 0]),
            )
            for r, img in enumerate(panels):
                ax = axes[s * len(rows) + r, c]
                vmax = 255 if img.dtype == np.uint8 else 1.0
                ax.imshow(img, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    lm = bank["landmarks"][i]
                    ax.plot(lm[:, 0], lm[:, 1], ".", ms=1.5, color="tab:red")
                    ax.set_title(f"{c}: {synthfaces.CLASS_NAMES[c]}", fontsize=8)
                if c == 0:
                    ax.set_ylabel(f"subj {s}\n{rows[r]}", fontsize=6)
    fig.suptitle(
        f"synthetic FER data: preset {preset or cfg.render_preset!r}, {cfg.image_size}px, seed {seed}", fontsize=9
    )
    fig.tight_layout()
    path = pathlib.Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path

