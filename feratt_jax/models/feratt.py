"""FERAtt: attention module x feature branch -> reconstruction -> backbone.

One module covers the reference's four architectures:

=====================  ============  ======  =====================================
reference arch name    embedding     STN     outputs
=====================  ============  ======  =====================================
ferattention           no            no      logits, reconstruction, attention, features
ferattentiongmm        yes           no      + embedding
ferattentionstn        no            yes     + theta, warped
ferattentiongmmstn     yes           yes     + embedding, theta, warped
=====================  ============  ======  =====================================

Forward (docs/reference.md 1.1): g_att = AttentionResNet(x); g_ft = feature
branch(x); attmap = sigmoid(g_att) * g_ft; reconstruction ("I_att") =
ReLU(BN(conv1x1(ConvRelu(cat[attmap, x, g_att])))); the backbone classifies
normalize_layer(reconstruction), after the STN warp in the STN variants.

The reference's STN variants differ in where normalisation happens:
ferattentionstn warps the raw reconstruction and normalises the warped
image; ferattentiongmmstn normalises first and warps the normalised image.
Both orders are kept, as the reference has them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from feratt_jax.models.attention_unet import AttentionResNet, ConvRelu, attention_unet_2019
from feratt_jax.models.cvgg import CVGG13
from feratt_jax.models.layers import BatchNorm2d, Conv2d, avg_pool, normalize_layer, resize_bilinear
from feratt_jax.models.preact_resnet import PreActResNet18
from feratt_jax.models.resnet import ResNet18
from feratt_jax.models.stn import STN
from feratt_jax.ops.spatial_transform import warp_affine

Dtype = Any

BACKBONES = ("preactresnet18", "resnet18", "cvgg13")


class ResidualBlockSR(nn.Module):
    """y = conv3x3(LeakyReLU_0.2(conv3x3(x))) + x, no activation after the add."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        c = x_BHWC.shape[-1]
        out = nn.leaky_relu(Conv2d(c, 3, 1, 1, dtype=self.dtype, name="conv1")(x_BHWC), 0.2)
        return Conv2d(c, 3, 1, 1, dtype=self.dtype, name="conv2")(out) + x_BHWC


class _FeatureStack(nn.Module):
    num_blocks: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        for i in range(self.num_blocks):
            x_BHWC = ResidualBlockSR(self.dtype, name=str(i))(x_BHWC)
        return x_BHWC


def feature_branch(x_BHWC: jax.Array, channels: int, num_blocks: int, dtype: Dtype = jnp.float32) -> jax.Array:
    """g_ft = conv_mid(feature(conv_input(x))) + conv_input(x), as submodules of the caller.

    ``conv_input`` is a 9x9 conv (3 -> channels), ``feature`` ``num_blocks``
    LeakyReLU residual blocks and ``conv_mid`` a 3x3 conv; call inside a
    compact method (HEAD and the paper-era model both have them at the top level).
    """
    f0 = Conv2d(channels, 9, 1, 4, dtype=dtype, name="conv_input")(x_BHWC)
    out = _FeatureStack(num_blocks, dtype, name="feature")(f0)
    return Conv2d(channels, 3, 1, 1, dtype=dtype, name="conv_mid")(out) + f0


class _ReconstructionConvs(nn.Module):
    """``reconstruction = Sequential(ConvRelu(2A+3 -> 32), Conv1x1(32 -> 3))``."""

    out_channels: int
    hidden: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        x = ConvRelu(self.hidden, self.dtype, name="0")(x_BHWC)
        return Conv2d(self.out_channels, 1, dtype=self.dtype, name="1")(x)


def backbone_input(backbone: str, image_BHWC: jax.Array) -> jax.Array:
    """Resize the (normalised) reconstruction to what each backbone expects."""
    if backbone == "preactresnet18":
        return avg_pool(image_BHWC, 2)  # 64 -> 32, as the reference
    if backbone == "resnet18":
        return resize_bilinear(image_BHWC, 224, 224)
    if backbone == "cvgg13":
        return image_BHWC
    raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")


def make_backbone(backbone: str, num_classes: int, dim: int | None, dtype: Dtype, name: str, width: int = 64) -> nn.Module:
    if width != 64 and backbone != "preactresnet18":
        raise ValueError(f"backbone_width is only supported for preactresnet18, not {backbone!r}")
    if backbone == "preactresnet18":
        return PreActResNet18(num_classes, dim, initial_channels=width, dtype=dtype, name=name)
    if backbone == "resnet18":
        return ResNet18(num_classes, dim, dtype=dtype, name=name)
    if backbone == "cvgg13":
        return CVGG13(num_classes, dim, dtype=dtype, name=name)
    raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")


class FERAttention(nn.Module):
    """The FERAtt family. See the module docstring for the variants.

    Attributes:
      num_classes: C, the number of expression classes.
      dim: embedding size (used when ``embedding`` is True).
      embedding: the "Rep"/GMM variants: backbone returns an embedding too.
      use_stn: the STN variants.
      backbone: preactresnet18 (reference default) | resnet18 | cvgg13.
      attention_channels: channels of g_att and g_ft. The reference ties this
        to num_classes (defect 4); None keeps that tie.
      num_feature_blocks: LeakyReLU residual blocks in the feature branch (8).
      num_filters: width of the attention U-Net's decoder (32 in the
        reference). Smaller values are for quick CPU runs only.
      backbone_width: PreActResNet18's first-stage channels (64 in the
        reference); smaller values are for quick CPU runs only.
      reconstruction_relu: end the reconstruction with ReLU(BN(.)) as the
        reference does; False leaves BN(.) alone. A ReLU'd reconstruction
        can fall into an all-black state it has no gradient to leave (every
        unit below zero; docs/training.md section 9).
      gmmstn_cvgg_skips_warp: reproduce the reference bug where
        ferattentiongmmstn with the cvgg backbone classifies the unwarped
        image (defect 7). Off by default.
      dtype: compute dtype (params stay float32; BN statistics in float32).
    """

    num_classes: int
    dim: int = 32
    embedding: bool = False
    use_stn: bool = False
    backbone: str = "preactresnet18"
    attention_channels: int | None = None
    num_feature_blocks: int = 8
    num_filters: int = 32
    backbone_width: int = 64
    reconstruction_relu: bool = True
    gmmstn_cvgg_skips_warp: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        if x_BHWC.ndim != 4 or x_BHWC.shape[-1] != 3:
            raise ValueError(f"FERAttention expects (B, H, W, 3) input, got shape {x_BHWC.shape}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {BACKBONES}")
        channels = self.attention_channels or self.num_classes
        x = x_BHWC.astype(self.dtype)

        g_att = AttentionResNet(channels, num_filters=self.num_filters, dtype=self.dtype, name="attention_map")(x, train=train)

        g_ft = feature_branch(x, channels, self.num_feature_blocks, self.dtype)

        attmap = nn.sigmoid(g_att) * g_ft
        fused = jnp.concatenate([attmap, x, g_att], axis=-1)
        recon = _ReconstructionConvs(3, dtype=self.dtype, name="reconstruction")(fused)
        recon = BatchNorm2d(dtype=self.dtype, name="conv2_bn")(recon, train=train)
        if self.reconstruction_relu:
            recon = nn.relu(recon)

        outputs = {"reconstruction": recon, "attention": g_att, "features": g_ft}
        if self.use_stn:
            stn = STN(self.dtype, name="stn")
            if self.embedding:
                normalized = normalize_layer(recon)
                theta = stn(jax.lax.stop_gradient(jnp.mean(normalized, axis=-1, keepdims=True)))
                warped = warp_affine(normalized, theta.astype(normalized.dtype))
                classify = normalized if (self.gmmstn_cvgg_skips_warp and self.backbone == "cvgg13") else warped
            else:
                theta = stn(jax.lax.stop_gradient(jnp.mean(recon, axis=-1, keepdims=True)))
                warped = normalize_layer(warp_affine(recon, theta.astype(recon.dtype)))
                classify = warped
            outputs.update(theta=theta, warped=warped)
        else:
            classify = normalize_layer(recon)

        dim = self.dim if self.embedding else None
        head = make_backbone(self.backbone, self.num_classes, dim, self.dtype, "netclass", self.backbone_width)
        outputs.update(head(backbone_input(self.backbone, classify), train=train))
        return outputs


# The paper-era model's hard thresholds on the reconstruction and on its warp.
PAPER_ERA_THRESHOLD = 0.02


class FERAttention2019(nn.Module):
    """The paper-era FERAtt (reference commit 53fd5e4, arch ``atentionresnet34``; docs/reference.md 8).

    The code that produced the paper's tables. It has the structure of
    ferattentiongmmstn (embedding, STN, the same output names) but:

    * 128x128 input; the attention U-Net sits at the top level of the module
      (``conv1``..``conv5``, ``center``, ``dec5``..``dec1``, ``attention_map``),
      with a dilated centre block on conv5 and transposed-conv decoder blocks,
      and outputs **one** attention channel;
    * the feature branch has ``num_filters`` (32) channels and 4 residual blocks;
    * the reconstruction is ``ConvRelu(F -> F), conv1x1(F -> 3)`` of
      ``sigmoid(g_att) * g_ft`` only (no BatchNorm, no ReLU, no normalize
      layer), then hard-thresholded: ``att * (|att| > 0.02)``;
    * the STN always runs on ``mean_c(att)`` (gradient stopped); the warped
      image is thresholded again (``>= 0.02``, as the reference) and
      ``avg_pool(4)`` takes it to 32x32 for PreActResNet18 with the
      embedding head.

    The STN's regressor input size is fixed by ``image_size`` (128 in the
    reference: 10*28*28 inputs); other multiples of 32 build the same network
    with a smaller regressor (the parity tests use 64 to stay cheap).

    Attributes:
      num_classes: C.
      dim: embedding size.
      image_size: the input side the model accepts (128).
      num_filters: decoder width, feature-branch and reconstruction channels (32).
      num_feature_blocks: residual blocks of the feature branch (4).
      backbone_width: PreActResNet18's first-stage channels (64).
      dtype: compute dtype.
    """

    num_classes: int
    dim: int = 32
    image_size: int = 128
    num_filters: int = 32
    num_feature_blocks: int = 4
    backbone_width: int = 64
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        n = self.image_size
        if x_BHWC.ndim != 4 or x_BHWC.shape[1:] != (n, n, 3):
            raise ValueError(f"FERAttention2019 built for image_size={n} expects (B, {n}, {n}, 3) input, got shape {x_BHWC.shape}")
        x = x_BHWC.astype(self.dtype)
        nf = self.num_filters
        g_att = attention_unet_2019(x, num_filters=nf, train=train, dtype=self.dtype)
        g_ft = feature_branch(x, nf, self.num_feature_blocks, self.dtype)
        att = _ReconstructionConvs(3, hidden=nf, dtype=self.dtype, name="reconstruction")(nn.sigmoid(g_att) * g_ft)
        # Multiplying by the 0/1 mask (not jnp.where) passes the gradient where kept, as the reference.
        att = att * (jnp.abs(att) > PAPER_ERA_THRESHOLD).astype(att.dtype)
        theta = STN(self.dtype, input_size=n, name="stn")(jax.lax.stop_gradient(jnp.mean(att, axis=-1, keepdims=True)))
        att_t = warp_affine(att, theta.astype(att.dtype))
        att_t = att_t * (jnp.abs(att_t) >= PAPER_ERA_THRESHOLD).astype(att_t.dtype)
        head = make_backbone("preactresnet18", self.num_classes, self.dim, self.dtype, "netclass", self.backbone_width)
        outputs = {"reconstruction": att, "attention": g_att, "features": g_ft, "theta": theta, "warped": att_t}
        outputs.update(head(avg_pool(att_t, 4), train=train))
        return outputs
