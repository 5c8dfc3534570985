"""torchvision-style ResNet pieces: the BasicBlock, its stages, and ResNet18.

The attention module reuses the stages of a ResNet-34 as its encoder and the
``resnet18`` backbone is the full classifier. Both are initialised as
torchvision initialises them (kaiming-normal fan-out convs, BN gamma=1,
beta=0, default Linear), and no zero-init of the last BN in a block.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from feratt_jax.models.layers import BatchNorm2d, Conv2d, Linear, statistics_dtype

Dtype = Any


class BasicBlock(nn.Module):
    """conv3x3(s)-BN-ReLU-conv3x3-BN + shortcut, then ReLU (torchvision)."""

    planes: int
    stride: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, *, train: bool) -> jax.Array:
        conv = dict(init_style="kaiming_fan_out", use_bias=False, dtype=self.dtype)
        out = Conv2d(self.planes, 3, self.stride, 1, name="conv1", **conv)(x_BHWC)
        out = nn.relu(BatchNorm2d(dtype=self.dtype, name="bn1")(out, train=train))
        out = Conv2d(self.planes, 3, 1, 1, name="conv2", **conv)(out)
        out = BatchNorm2d(dtype=self.dtype, name="bn2")(out, train=train)
        shortcut = x_BHWC
        if self.stride != 1 or x_BHWC.shape[-1] != self.planes:
            # torchvision's nn.Sequential(conv1x1, BN): keys "downsample.0/1".
            shortcut = _Downsample(self.planes, self.stride, self.dtype, name="downsample")(x_BHWC, train=train)
        return nn.relu(out + shortcut)


class _Downsample(nn.Module):
    planes: int
    stride: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, *, train: bool) -> jax.Array:
        y = Conv2d(self.planes, 1, self.stride, 0, use_bias=False, init_style="kaiming_fan_out", dtype=self.dtype, name="0")(x_BHWC)
        return BatchNorm2d(dtype=self.dtype, name="1")(y, train=train)


class ResNetStage(nn.Module):
    """One torchvision ``layerN``: ``num_blocks`` BasicBlocks named "0", "1", ..."""

    planes: int
    num_blocks: int
    stride: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, *, train: bool) -> jax.Array:
        for i in range(self.num_blocks):
            stride = self.stride if i == 0 else 1
            x_BHWC = BasicBlock(self.planes, stride, self.dtype, name=str(i))(x_BHWC, train=train)
        return x_BHWC


RESNET18_BLOCKS = (2, 2, 2, 2)
RESNET34_BLOCKS = (3, 4, 6, 3)
STAGE_PLANES = (64, 128, 256, 512)


class ResNet18(nn.Module):
    """The reference's ``resnet18`` backbone (not pretrained), optionally with an embedding.

    With ``dim`` set this is the embedding variant (``resnetembex18``):
    ``embedding = fc(pool)`` (512 -> dim) and ``logits = classification(embedding)``.
    The reference's fixed ``AvgPool2d(7)`` (which only works at 224x224) is
    replaced by a global average pool, equal at 224 and correct elsewhere.
    """

    num_classes: int
    dim: int | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        x = Conv2d(64, 7, 2, 3, use_bias=False, init_style="kaiming_fan_out", dtype=self.dtype, name="conv1")(x_BHWC)
        x = nn.relu(BatchNorm2d(dtype=self.dtype, name="bn1")(x, train=train))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, (planes, blocks) in enumerate(zip(STAGE_PLANES, RESNET18_BLOCKS)):
            x = ResNetStage(planes, blocks, 1 if i == 0 else 2, self.dtype, name=f"layer{i + 1}")(x, train=train)
        head = statistics_dtype(self.dtype)  # the head runs in float32 (float64 in float64 runs)
        pooled = jnp.mean(x.astype(head), axis=(1, 2))
        if self.dim is None:
            return {"logits": Linear(self.num_classes, dtype=head, name="fc")(pooled)}
        embedding = Linear(self.dim, dtype=head, name="fc")(pooled)
        return {"embedding": embedding, "logits": Linear(self.num_classes, dtype=head, name="classification")(embedding)}
