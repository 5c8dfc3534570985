"""Small trainer runs shared by the trainer tests: the tiny config and its restored checkpoints.

The smallest real model (PreActResNet18 on 32x32 from the 64x64 composite)
on a 16-subject face bank, so each run is seconds of compute. The face-bank
cache folder is the session fixture ``cache_dir`` of conftest.py.
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections

from feratt_jax import configs, factory, sharding
from feratt_jax.checkpointing import Checkpointer

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(cache_dir: str, model: str = "preactresnet18", **train_overrides) -> ml_collections.ConfigDict:
    """``model``'s ``tiny`` config on the numpy loader, with ``train`` fields overridden."""
    c = configs.load_config(str(REPO / "experiments" / "configs" / f"{model}.py") + ":tiny")
    c.data.cache_dir = cache_dir
    c.data.loader = "numpy"  # no worker threads: deterministic and cheap in tests
    c.train.eval_every = 1000
    c.train.image_log_every = 0
    for k, v in train_overrides.items():
        c.train[k] = v
    return c


def restored_params(workdir, config):
    """The latest checkpoint's train state (on host) and data position, restored through the real code path."""
    data = factory.make_inputs(config)
    _, _, _, init_state = factory.build_training(config, data.config.image_size)
    abstract, _ = factory.abstract_train_state(init_state, sharding.make_mesh())
    ckpt = Checkpointer(workdir)
    state, data_state, _ = ckpt.restore_latest(abstract)
    ckpt.close()
    return jax.device_get(state), data_state
