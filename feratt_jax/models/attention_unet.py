"""The attention module: a ResNet-34-encoder U-Net producing C attention logits.

Shapes for a 64x64 input (docs/reference.md 1.2): the stem (7x7/2 conv, BN, ReLU,
then the module's own 2x2 max pool instead of ResNet's 3x3/2) gives 16x16;
ResNet-34's four stages give 16, 8, 4, 2; a 2x2 max pool gives 1x1; six
decoder blocks (bilinear x2, ConvRelu, ConvRelu) climb back to 64x64, each
concatenating [decoder, skip] in that order; a ConvRelu + 1x1 conv head
outputs the logits.

Unlike the reference we do not build torchvision's ``encoder.fc``/``avgpool``
(513,000 dead parameters) nor keep the encoder twice in the state_dict.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from feratt_jax.models.layers import BatchNorm2d, Conv2d, ConvTranspose2d, max_pool_2x2, upsample_bilinear_2x
from feratt_jax.models.resnet import RESNET34_BLOCKS, STAGE_PLANES, ResNetStage

Dtype = Any


class ConvRelu(nn.Module):
    """conv3x3 (PyTorch default init, bias) then ReLU; the conv is named "conv"."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        return nn.relu(Conv2d(self.features, 3, 1, 1, dtype=self.dtype, name="conv")(x_BHWC))


class DecoderBlockV2(nn.Module):
    """Bilinear x2 upsample (align_corners=False), ConvRelu(in->mid), ConvRelu(mid->out)."""

    middle_channels: int
    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        x = upsample_bilinear_2x(x_BHWC)
        x = ConvRelu(self.middle_channels, self.dtype, name="cr1")(x)
        return ConvRelu(self.out_channels, self.dtype, name="cr2")(x)


class _Stem(nn.Module):
    """``conv1 = Sequential(encoder.conv1, encoder.bn1, relu, MaxPool2d(2,2))``."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, *, train: bool) -> jax.Array:
        x = Conv2d(64, 7, 2, 3, use_bias=False, init_style="kaiming_fan_out", dtype=self.dtype, name="0")(x_BHWC)
        x = nn.relu(BatchNorm2d(dtype=self.dtype, name="1")(x, train=train))
        return max_pool_2x2(x)


class _AttentionHead(nn.Module):
    """``attention_map = Sequential(ConvRelu(F, F), Conv1x1(F -> C))``."""

    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        x = ConvRelu(x_BHWC.shape[-1], self.dtype, name="0")(x_BHWC)
        return Conv2d(self.out_channels, 1, dtype=self.dtype, name="1")(x)


def resnet34_encoder(x_BHWC: jax.Array, *, train: bool, dtype: Dtype = jnp.float32) -> list[jax.Array]:
    """The borrowed ResNet-34 encoder: the stem and stages, as submodules "conv1".."conv5" of the caller.

    Call it inside a compact method; the submodules attach to that module (in
    HEAD under ``attention_map``, in the paper-era model at the top level).
    Returns [conv1, ..., conv5] at strides 4, 4, 8, 16, 32.
    """
    skips = [_Stem(dtype, name="conv1")(x_BHWC, train=train)]
    for i, (planes, blocks) in enumerate(zip(STAGE_PLANES, RESNET34_BLOCKS)):
        stage = ResNetStage(planes, blocks, 1 if i == 0 else 2, dtype, name=f"conv{i + 2}")
        skips.append(stage(skips[-1], train=train))
    return skips


class AttentionResNet(nn.Module):
    """ResNet-34 U-Net. Returns the attention logits g_att (B, H, W, out_channels).

    The input side must be a multiple of 64 (five halvings to 1x1 at 64 and
    a pool over the 2x2 bottom map).
    """

    out_channels: int
    num_filters: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, *, train: bool) -> jax.Array:
        h, w = x_BHWC.shape[1:3]
        if h % 64 or w % 64:
            raise ValueError(f"AttentionResNet needs H and W divisible by 64, got {h}x{w}")
        nf = self.num_filters
        _, conv2, conv3, conv4, conv5 = resnet34_encoder(x_BHWC, train=train, dtype=self.dtype)

        def block(mid: int, out: int, name: str) -> DecoderBlockV2:
            return DecoderBlockV2(mid, out, self.dtype, name=name)

        center = block(nf * 16, nf * 8, "center")(max_pool_2x2(conv5))
        dec5 = block(nf * 16, nf * 8, "dec5")(jnp.concatenate([center, conv5], axis=-1))
        dec4 = block(nf * 16, nf * 8, "dec4")(jnp.concatenate([dec5, conv4], axis=-1))
        dec3 = block(nf * 8, nf * 2, "dec3")(jnp.concatenate([dec4, conv3], axis=-1))
        dec2 = block(nf * 4, nf * 4, "dec2")(jnp.concatenate([dec3, conv2], axis=-1))
        dec1 = block(nf * 4, nf, "dec1")(dec2)
        return _AttentionHead(self.out_channels, self.dtype, name="attention_map")(dec1)


# --------------------------------------------------------------------------
# The paper-era U-Net (reference commit 53fd5e4, docs/reference.md 8)
# --------------------------------------------------------------------------


class DilateCenter(nn.Module):
    """Four chained 3x3 convs with dilation 1, 2, 3, 4 ("same" padding); ReLU of the sum of their outputs.

    The reference accumulates the sum in a ``torch.zeros(...).cuda()`` it
    allocates in forward (a CUDA-only, float32-only defect); the sum itself
    needs no buffer.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        total = None
        for d in (1, 2, 3, 4):
            x_BHWC = Conv2d(self.features, 3, 1, d, dilation=d, dtype=self.dtype, name=f"conv_d{d}")(x_BHWC)
            total = x_BHWC if total is None else total + x_BHWC
        return nn.relu(total)


class _DeconvSequential(nn.Module):
    """``block = Sequential(ConvRelu(in, mid), ConvTranspose2d(mid, out, 4, 2, 1), ReLU)``."""

    middle_channels: int
    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        x = ConvRelu(self.middle_channels, self.dtype, name="0")(x_BHWC)
        return nn.relu(ConvTranspose2d(self.out_channels, 4, 2, 1, dtype=self.dtype, name="1")(x))


class DecoderBlockDeconv(nn.Module):
    """The paper-era DecoderBlockV2 (is_deconv=True): ConvRelu then a x2 transposed conv and ReLU."""

    middle_channels: int
    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        return _DeconvSequential(self.middle_channels, self.out_channels, self.dtype, name="block")(x_BHWC)


def attention_unet_2019(x_BHWC: jax.Array, *, num_filters: int, train: bool, dtype: Dtype = jnp.float32) -> jax.Array:
    """The paper-era attention U-Net; returns the 1-channel attention logits at the input's size.

    Its submodules attach to the calling module (call inside a compact
    method) under the reference's top-level names: conv1-conv5 (ResNet-34),
    center (DilateCenter on conv5, no pooling), dec5-dec1 (transposed-conv
    decoder, [decoder, skip] concatenations) and attention_map (ConvRelu +
    1x1 conv to one channel). H and W must be multiples of 32.
    """
    h, w = x_BHWC.shape[1:3]
    if h % 32 or w % 32:
        raise ValueError(f"the paper-era attention U-Net needs H and W divisible by 32, got {h}x{w}")
    nf = num_filters
    _, conv2, conv3, conv4, conv5 = resnet34_encoder(x_BHWC, train=train, dtype=dtype)
    center = DilateCenter(nf * 8, dtype, name="center")(conv5)
    dec5 = DecoderBlockDeconv(nf * 16, nf * 8, dtype, name="dec5")(jnp.concatenate([center, conv5], axis=-1))
    dec4 = DecoderBlockDeconv(nf * 16, nf * 8, dtype, name="dec4")(jnp.concatenate([dec5, conv4], axis=-1))
    dec3 = DecoderBlockDeconv(nf * 8, nf * 2, dtype, name="dec3")(jnp.concatenate([dec4, conv3], axis=-1))
    dec2 = DecoderBlockDeconv(nf * 4, nf * 4, dtype, name="dec2")(jnp.concatenate([dec3, conv2], axis=-1))
    dec1 = DecoderBlockDeconv(nf * 4, nf, dtype, name="dec1")(dec2)
    return _AttentionHead(1, dtype, name="attention_map")(dec1)
