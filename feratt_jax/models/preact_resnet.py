"""PreActResNet18, the reference's default backbone, and its embedding variant.

Layer for layer as the reference: a 3x3 stem conv with no BN/ReLU after it,
four stages of two pre-activation blocks, global average pooling and a
linear head. Like the reference (and unlike He et al.'s PreAct ResNet) there
is no final BN+ReLU before the pooling; we keep that for parity.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from feratt_jax.models.layers import BatchNorm2d, Conv2d, Linear, statistics_dtype

Dtype = Any


class _Shortcut(nn.Module):
    planes: int
    stride: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        # The reference wraps the 1x1 conv in nn.Sequential: key "shortcut.0".
        return Conv2d(self.planes, 1, self.stride, 0, use_bias=False, dtype=self.dtype, name="0")(x_BHWC)


class PreActBlock(nn.Module):
    """relu(bn1(x)) -> [shortcut from the activation] -> conv1 -> relu(bn2) -> conv2 (+)."""

    planes: int
    stride: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, *, train: bool) -> jax.Array:
        out = nn.relu(BatchNorm2d(dtype=self.dtype, name="bn1")(x_BHWC, train=train))
        if self.stride != 1 or x_BHWC.shape[-1] != self.planes:
            shortcut = _Shortcut(self.planes, self.stride, self.dtype, name="shortcut")(out)
        else:
            shortcut = x_BHWC
        out = Conv2d(self.planes, 3, self.stride, 1, use_bias=False, dtype=self.dtype, name="conv1")(out)
        out = nn.relu(BatchNorm2d(dtype=self.dtype, name="bn2")(out, train=train))
        out = Conv2d(self.planes, 3, 1, 1, use_bias=False, dtype=self.dtype, name="conv2")(out)
        return out + shortcut


class _PreActStage(nn.Module):
    planes: int
    num_blocks: int
    stride: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, *, train: bool) -> jax.Array:
        for i in range(self.num_blocks):
            x_BHWC = PreActBlock(self.planes, self.stride if i == 0 else 1, self.dtype, name=str(i))(x_BHWC, train=train)
        return x_BHWC


class PreActResNet18(nn.Module):
    """``preactresnet18`` (``dim=None``) or ``preactresembnetex18`` (``dim`` set).

    The embedding variant maps the pooled 512 features to ``embedding``
    (``linear``: 512 -> dim) and classifies the embedding with
    ``classification`` (dim -> C), with no activation between, as the
    reference does.
    """

    num_classes: int
    dim: int | None = None
    initial_channels: int = 64
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        c = self.initial_channels
        x = Conv2d(c, 3, 1, 1, use_bias=False, dtype=self.dtype, name="conv1")(x_BHWC)
        for i, mult in enumerate((1, 2, 4, 8)):
            x = _PreActStage(c * mult, 2, 1 if i == 0 else 2, self.dtype, name=f"layer{i + 1}")(x, train=train)
        # F.avg_pool2d(out, out.shape[3]): a global mean for square maps.
        head = statistics_dtype(self.dtype)  # the head runs in float32 (float64 in float64 runs)
        pooled = jnp.mean(x.astype(head), axis=(1, 2))
        if self.dim is None:
            return {"logits": Linear(self.num_classes, dtype=head, name="linear")(pooled)}
        embedding = Linear(self.dim, dtype=head, name="linear")(pooled)
        return {"embedding": embedding, "logits": Linear(self.num_classes, dtype=head, name="classification")(embedding)}
