"""CVGG13 (Barsoum et al.'s VGG for FER+) and its embedding variant.

No BatchNorm; conv3x3+ReLU in the config below with 2x2 max pools, a
4096 -> 1024 -> 1024 -> C classifier with dropout 0.5, initialised as the
reference does (conv N(0, 2/(k*k*out)), bias 0; linear N(0, 0.01), bias 0).
Layer names are the indices of the reference's nn.Sequential.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from feratt_jax.models.layers import Conv2d, Linear, max_pool_2x2

Dtype = Any

CVGG13_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 256, 256, 256, "M")


class _Features(nn.Module):
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        index = 0  # position in the reference's nn.Sequential (ReLU/pool count too)
        for v in CVGG13_LAYOUT:
            if v == "M":
                x_BHWC = max_pool_2x2(x_BHWC)
                index += 1
            else:
                x_BHWC = nn.relu(Conv2d(v, 3, 1, 1, init_style="kaiming_fan_out", dtype=self.dtype, name=str(index))(x_BHWC))
                index += 2
        return x_BHWC


class CVGG13(nn.Module):
    """``cvgg13`` (``dim=None``) or ``cvggembex13`` (``dim`` set).

    The classifier expects a 4x4x256 map, i.e. a 64x64 input. The flatten is
    done in PyTorch's CHW order so converted weights apply unchanged.
    """

    num_classes: int
    dim: int | None = None
    dropout_rate: float = 0.5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        if x_BHWC.shape[1:3] != (64, 64):
            raise ValueError(f"CVGG13 needs a 64x64 input (4x4x256 features), got {x_BHWC.shape[1:3]}")
        x = _Features(self.dtype, name="features")(x_BHWC)
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # CHW flatten, as torch's view
        dense = dict(init_style="cvgg", dtype=self.dtype)
        if self.dim is None:
            head = _Classifier(self.num_classes, self.dropout_rate, self.dtype, name="classifier")
            return {"logits": head(x, train=train)}
        embedding = _Embedded(self.dim, self.dropout_rate, self.dtype, name="embedded")(x, train=train)
        logits = Linear(self.num_classes, name="classification", **dense)(embedding)
        return {"embedding": embedding, "logits": logits}


class _Classifier(nn.Module):
    """classifier: Linear(4096,1024) ReLU Dropout Linear(1024,1024) ReLU Dropout Linear(1024,C)."""

    num_classes: int
    dropout_rate: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        dense = dict(init_style="cvgg", dtype=self.dtype)
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        x = drop(nn.relu(Linear(1024, name="0", **dense)(x)))
        x = drop(nn.relu(Linear(1024, name="3", **dense)(x)))
        return Linear(self.num_classes, name="6", **dense)(x)


class _Embedded(nn.Module):
    """embedded: Linear(4096,1024) ReLU Dropout Linear(1024,dim)."""

    dim: int
    dropout_rate: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        dense = dict(init_style="cvgg", dtype=self.dtype)
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        x = drop(nn.relu(Linear(1024, name="0", **dense)(x)))
        return Linear(self.dim, name="3", **dense)(x)
