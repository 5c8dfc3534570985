"""Spatial transformer: the localisation net that predicts theta (B, 2, 3).

Input is a one-channel 64x64 map (the channel mean of the reconstruction,
with gradients stopped by the caller, as the reference detaches it). The
last layer starts at the identity transform (weight 0, bias [1,0,0,0,1,0]).
Sampling with theta lives in :mod:`feratt_jax.ops.spatial_transform`, with
PyTorch's ``affine_grid``/``grid_sample`` semantics (align_corners=False).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from feratt_jax.models.layers import Conv2d, Linear, max_pool_2x2, statistics_dtype

Dtype = Any

IDENTITY_THETA = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class _Localization(nn.Module):
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHW1: jax.Array) -> jax.Array:
        # Sequential(Conv k7, MaxPool2, ReLU, Conv k5, MaxPool2, ReLU): keys 0 and 3.
        x = nn.relu(max_pool_2x2(Conv2d(8, 7, dtype=self.dtype, name="0")(x_BHW1)))
        return nn.relu(max_pool_2x2(Conv2d(10, 5, dtype=self.dtype, name="3")(x)))


class _Regressor(nn.Module):
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        x = nn.relu(Linear(32, dtype=self.dtype, name="0")(features))
        identity = jnp.asarray(IDENTITY_THETA, jnp.float32)
        return Linear(
            6,
            kernel_init=nn.initializers.zeros,
            bias_init=lambda key, shape, dtype=jnp.float32: identity.astype(dtype),
            dtype=self.dtype,
            name="2",
        )(x)


class STN(nn.Module):
    """Localisation net -> theta (B, 2, 3), float32.

    Only ``input_size`` x ``input_size`` inputs are valid: the regressor's
    input size is fixed by that resolution, exactly as in the reference
    (HEAD: 64 -> 10*12*12; the paper-era code: 128 -> 10*28*28).
    """

    dtype: Dtype = jnp.float32
    input_size: int = 64

    @nn.compact
    def __call__(self, x_BHW1: jax.Array) -> jax.Array:
        n = self.input_size
        if x_BHW1.shape[1:] != (n, n, 1):
            raise ValueError(f"STN expects (B, {n}, {n}, 1) input, got {x_BHW1.shape}")
        feats = _Localization(self.dtype, name="localization")(x_BHW1)
        # Flatten in PyTorch's CHW order so converted weights apply unchanged.
        feats = jnp.transpose(feats, (0, 3, 1, 2)).reshape(feats.shape[0], -1)
        theta = _Regressor(self.dtype, name="fc_loc")(feats)
        return theta.astype(statistics_dtype(self.dtype)).reshape(-1, 2, 3)
