"""PyTorch implementation of the FERAtt family with the reference's state_dict keys.

Written from docs/reference.md (sections 1.1-1.5), not copied from the reference
code. It exists so that parity tests and ``experiments/compare_torch.py`` have
a PyTorch model to compare the Flax models against, and so that exported
checkpoints can be checked by loading them into a real ``nn.Module``.

Layout is NCHW, as in PyTorch. ``build_torch_model`` mirrors
:func:`feratt_jax.models.build_model` (same names and options) and every
model's ``forward`` returns a dict with the same output names as the Flax
module (images in NCHW here):

* FERAtt variants: ``logits``, ``reconstruction`` (the reference's ``att``),
  ``attention`` (``g_att``), ``features`` (``g_ft``), plus ``embedding`` for
  the GMM variants and ``theta``, ``warped`` (``att_t``) for the STN ones.
* baselines: ``logits`` (and ``embedding`` with ``embedding=True``).

With ``include_encoder_alias=True`` the attention module also registers the
torchvision ResNet-34 it borrows its encoder from, as ``attention_map.encoder``
(with its unused ``fc``), so the state_dict has the reference's duplicated
``attention_map.encoder.*`` keys. Without it the key set is exactly the
Flax naming contract's.

Initialisation follows the reference per layer family (PyTorch defaults,
torchvision's kaiming-normal fan-out for ResNet convs, CVGG's normal init,
the STN's identity regressor); parity tests overwrite weights anyway.

Importing this module requires torch.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from feratt_jax.interop import require_torch

torch = require_torch()
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

BACKBONES = ("preactresnet18", "resnet18", "cvgg13")
FERATT_VARIANTS = {
    "ferattention": (False, False),
    "ferattentiongmm": (True, False),
    "ferattentionstn": (False, True),
    "ferattentiongmmstn": (True, True),
}
BASELINES = ("preactresnet18", "resnet18", "cvgg13")

# The reference's fixed normalize_layer constants (CIFAR-10 mean/std).
_NORM_MEAN = (0.4914, 0.4822, 0.4465)
_NORM_STD = (0.2023, 0.1994, 0.2010)


def normalize_layer(x_BCHW: torch.Tensor) -> torch.Tensor:
    """Per-channel ``y = x * (s / 0.5) + (m - 0.5) / 0.5`` (docs/reference.md 1.1 step 5)."""
    scale = torch.tensor([s / 0.5 for s in _NORM_STD], dtype=x_BCHW.dtype, device=x_BCHW.device)
    shift = torch.tensor([(m - 0.5) / 0.5 for m in _NORM_MEAN], dtype=x_BCHW.dtype, device=x_BCHW.device)
    return x_BCHW * scale.view(1, 3, 1, 1) + shift.view(1, 3, 1, 1)


def _kaiming_fan_out_(module: nn.Module) -> None:
    """torchvision's ResNet init: convs kaiming-normal fan-out, BN gamma 1 / beta 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------
# torchvision-style ResNet (encoder and resnet18 backbone)
# --------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """conv3x3(s)-BN-ReLU-conv3x3-BN, plus the (optionally downsampled) input, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _resnet_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride)] + [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class TorchvisionResNet(nn.Module):
    """torchvision's ``ResNet`` with BasicBlocks: conv1, bn1, relu, maxpool, layer1-4, avgpool, fc.

    Used (a) as the ResNet-34 the attention module borrows its encoder from
    and (b) as the ``resnet18`` backbone. ``embedding_dim`` set gives the
    reference's ``resnetembex18`` head: ``fc`` (512 -> dim) then
    ``classification`` (dim -> C). The pooling is global (torchvision's
    adaptive pool; the reference's fixed ``AvgPool2d(7)`` equals it at 224).
    """

    def __init__(self, blocks: Sequence[int], num_classes: int = 1000, embedding_dim: int | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        planes = (64, 128, 256, 512)
        in_planes = 64
        for i, (p, n) in enumerate(zip(planes, blocks)):
            setattr(self, f"layer{i + 1}", _resnet_stage(in_planes, p, n, 1 if i == 0 else 2))
            in_planes = p
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim = embedding_dim
        self.fc = nn.Linear(512, embedding_dim if embedding_dim is not None else num_classes)
        if embedding_dim is not None:
            self.classification = nn.Linear(embedding_dim, num_classes)
        _kaiming_fan_out_(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        pooled = torch.flatten(self.avgpool(x), 1)
        if self.embedding_dim is None:
            return {"logits": self.fc(pooled)}
        z = self.fc(pooled)
        return {"embedding": z, "logits": self.classification(z)}


# --------------------------------------------------------------------------
# PreActResNet18 (default backbone)
# --------------------------------------------------------------------------


class PreActBlock(nn.Module):
    """o = relu(bn1(x)); shortcut from o (1x1 conv) or x; conv1 -> relu(bn2) -> conv2; add."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.has_shortcut = stride != 1 or in_planes != planes
        if self.has_shortcut:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.has_shortcut else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """``preactresnet18`` (``linear``: 512 -> C) or, with ``embedding_dim``, ``preactresembnetex18``
    (``linear``: 512 -> dim, ``classification``: dim -> C, no activation between).

    No final BN+ReLU before the pooling, as in the reference.
    """

    def __init__(self, num_classes: int, embedding_dim: int | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        in_planes = 64
        for i, planes in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes)))
            in_planes = planes
        self.embedding_dim = embedding_dim
        self.linear = nn.Linear(512, embedding_dim if embedding_dim is not None else num_classes)
        if embedding_dim is not None:
            self.classification = nn.Linear(embedding_dim, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        pooled = out.mean(dim=(2, 3))
        if self.embedding_dim is None:
            return {"logits": self.linear(pooled)}
        z = self.linear(pooled)
        return {"embedding": z, "logits": self.classification(z)}


# --------------------------------------------------------------------------
# CVGG13
# --------------------------------------------------------------------------

_CVGG13_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 256, 256, 256, "M")


class CVGG13(nn.Module):
    """``cvgg13`` / ``cvggembex13``: conv3x3+ReLU stack with max pools, 4096-wide classifier.

    Needs a 64x64 input (256x4x4 features). Dropout p=``dropout_rate``.
    """

    def __init__(self, num_classes: int, embedding_dim: int | None = None, dropout_rate: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in _CVGG13_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                in_ch = int(v)
        self.features = nn.Sequential(*layers)
        self.embedding_dim = embedding_dim
        if embedding_dim is None:
            self.classifier = nn.Sequential(
                nn.Linear(4096, 1024), nn.ReLU(True), nn.Dropout(dropout_rate),
                nn.Linear(1024, 1024), nn.ReLU(True), nn.Dropout(dropout_rate),
                nn.Linear(1024, num_classes),
            )  # fmt: skip
        else:
            self.embedded = nn.Sequential(
                nn.Linear(4096, 1024), nn.ReLU(True), nn.Dropout(dropout_rate), nn.Linear(1024, embedding_dim)
            )
            self.classification = nn.Linear(embedding_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if tuple(x.shape[2:]) != (64, 64):
            raise ValueError(f"CVGG13 needs a 64x64 input, got {tuple(x.shape[2:])}")
        flat = torch.flatten(self.features(x), 1)  # CHW order
        if self.embedding_dim is None:
            return {"logits": self.classifier(flat)}
        z = self.embedded(flat)
        return {"embedding": z, "logits": self.classification(z)}


def make_backbone(backbone: str, num_classes: int, embedding_dim: int | None, dropout_rate: float = 0.5) -> nn.Module:
    """The classification network ``netclass`` for one backbone name."""
    if backbone == "preactresnet18":
        return PreActResNet18(num_classes, embedding_dim)
    if backbone == "resnet18":
        return TorchvisionResNet((2, 2, 2, 2), num_classes, embedding_dim)
    if backbone == "cvgg13":
        return CVGG13(num_classes, embedding_dim, dropout_rate)
    raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")


def backbone_input(backbone: str, image_BCHW: torch.Tensor) -> torch.Tensor:
    """avg-pool 2 (preact), bilinear 224 (resnet), unchanged (cvgg), as in the reference."""
    if backbone == "preactresnet18":
        return F.avg_pool2d(image_BCHW, 2)
    if backbone == "resnet18":
        return F.interpolate(image_BCHW, size=(224, 224), mode="bilinear", align_corners=False)
    if backbone == "cvgg13":
        return image_BCHW
    raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")


# --------------------------------------------------------------------------
# Attention module (ResNet-34 U-Net)
# --------------------------------------------------------------------------


class ConvRelu(nn.Module):
    """conv3x3 (bias, PyTorch default init) + ReLU; the conv is ``conv``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv(x))


class DecoderBlockV2(nn.Module):
    """Bilinear x2 (align_corners=False), ConvRelu ``cr1`` (in -> mid), ConvRelu ``cr2`` (mid -> out)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.cr1 = ConvRelu(in_ch, mid_ch)
        self.cr2 = ConvRelu(mid_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.cr2(self.cr1(x))


class AttentionResNet(nn.Module):
    """ResNet-34 encoder U-Net producing ``out_channels`` attention logits.

    The stem is the encoder's conv1/bn1/ReLU followed by the module's own
    ``MaxPool2d(2, 2)``; ``conv2``-``conv5`` are the encoder's layer1-4.
    With ``include_encoder_alias`` the whole torchvision ResNet-34 is
    registered as ``encoder`` too (the reference does, which duplicates
    every encoder tensor in the state_dict and adds a dead ``encoder.fc``).
    """

    def __init__(self, out_channels: int, num_filters: int = 32, include_encoder_alias: bool = False) -> None:
        super().__init__()
        encoder = TorchvisionResNet((3, 4, 6, 3), num_classes=1000)
        if include_encoder_alias:
            self.encoder = encoder
        self.pool = nn.MaxPool2d(2, 2)
        self.conv1 = nn.Sequential(encoder.conv1, encoder.bn1, nn.ReLU(inplace=True), nn.MaxPool2d(2, 2))
        self.conv2 = encoder.layer1
        self.conv3 = encoder.layer2
        self.conv4 = encoder.layer3
        self.conv5 = encoder.layer4
        nf = num_filters
        self.center = DecoderBlockV2(512, nf * 16, nf * 8)
        self.dec5 = DecoderBlockV2(512 + nf * 8, nf * 16, nf * 8)
        self.dec4 = DecoderBlockV2(256 + nf * 8, nf * 16, nf * 8)
        self.dec3 = DecoderBlockV2(128 + nf * 8, nf * 8, nf * 2)
        self.dec2 = DecoderBlockV2(64 + nf * 2, nf * 4, nf * 4)
        self.dec1 = DecoderBlockV2(nf * 4, nf * 4, nf)
        self.attention_map = nn.Sequential(ConvRelu(nf, nf), nn.Conv2d(nf, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv1 = self.conv1(x)
        conv2 = self.conv2(conv1)
        conv3 = self.conv3(conv2)
        conv4 = self.conv4(conv3)
        conv5 = self.conv5(conv4)
        center = self.center(self.pool(conv5))
        dec5 = self.dec5(torch.cat([center, conv5], 1))
        dec4 = self.dec4(torch.cat([dec5, conv4], 1))
        dec3 = self.dec3(torch.cat([dec4, conv3], 1))
        dec2 = self.dec2(torch.cat([dec3, conv2], 1))
        return self.attention_map(self.dec1(dec2))


# --------------------------------------------------------------------------
# STN
# --------------------------------------------------------------------------


class STN(nn.Module):
    """Localisation net on a 1 x input_size x input_size map (HEAD: 64) -> theta (B, 2, 3), starting at the identity."""

    def __init__(self, input_size: int = 64) -> None:
        super().__init__()
        side = ((input_size - 6) // 2 - 4) // 2  # conv7, pool2, conv5, pool2
        self.localization = nn.Sequential(
            nn.Conv2d(1, 8, 7), nn.MaxPool2d(2, 2), nn.ReLU(True),
            nn.Conv2d(8, 10, 5), nn.MaxPool2d(2, 2), nn.ReLU(True),
        )  # fmt: skip
        self.fc_loc = nn.Sequential(nn.Linear(10 * side * side, 32), nn.ReLU(True), nn.Linear(32, 6))
        with torch.no_grad():
            self.fc_loc[2].weight.zero_()
            self.fc_loc[2].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def forward(self, x_B1HW: torch.Tensor) -> torch.Tensor:
        feats = torch.flatten(self.localization(x_B1HW), 1)
        return self.fc_loc(feats).view(-1, 2, 3)


def warp(image_BCHW: torch.Tensor, theta_B23: torch.Tensor) -> torch.Tensor:
    """``grid_sample(x, affine_grid(theta, x.size()))`` with align_corners=False (the reference's
    implicit default since PyTorch 1.3), bilinear, zero padding."""
    grid = F.affine_grid(theta_B23, list(image_BCHW.shape), align_corners=False)
    return F.grid_sample(image_BCHW, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# --------------------------------------------------------------------------
# FERAtt
# --------------------------------------------------------------------------


class ResidualBlockSR(nn.Module):
    """``conv2(LeakyReLU_0.2(conv1(x))) + x``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.relu = nn.LeakyReLU(0.2, inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x))) + x


class FERAttention(nn.Module):
    """The four FERAtt variants (docs/reference.md 1.5), same options as the Flax module.

    Args:
      num_classes: C.
      dim: embedding size of the GMM variants.
      embedding: GMM ("Rep") variant.
      use_stn: STN variant.
      backbone: preactresnet18 | resnet18 | cvgg13.
      attention_channels: channels of g_att / g_ft (None = num_classes, as the reference).
      num_feature_blocks: residual blocks in the feature branch (8).
      gmmstn_cvgg_skips_warp: the reference bug where GMMSTN + cvgg classifies the unwarped image.
      include_encoder_alias: register ``attention_map.encoder`` as the reference does.
      num_filters: width of the attention decoder and the reconstruction hidden layer (32).
    """

    def __init__(
        self,
        num_classes: int,
        dim: int = 32,
        embedding: bool = False,
        use_stn: bool = False,
        backbone: str = "preactresnet18",
        attention_channels: int | None = None,
        num_feature_blocks: int = 8,
        gmmstn_cvgg_skips_warp: bool = False,
        include_encoder_alias: bool = False,
        num_filters: int = 32,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
        a = attention_channels or num_classes
        self.embedding, self.use_stn, self.backbone = embedding, use_stn, backbone
        self.gmmstn_cvgg_skips_warp = gmmstn_cvgg_skips_warp
        self.attention_map = AttentionResNet(a, num_filters, include_encoder_alias)
        self.conv_input = nn.Conv2d(3, a, 9, 1, 4)
        self.feature = nn.Sequential(*[ResidualBlockSR(a) for _ in range(num_feature_blocks)])
        self.conv_mid = nn.Conv2d(a, a, 3, 1, 1)
        self.reconstruction = nn.Sequential(ConvRelu(2 * a + 3, num_filters), nn.Conv2d(num_filters, 3, 1))
        self.conv2_bn = nn.BatchNorm2d(3)
        if use_stn:
            self.stn = STN()
        self.netclass = make_backbone(backbone, num_classes, dim if embedding else None)

    def forward(self, x: torch.Tensor, x_org: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        del x_org  # accepted and ignored, as in the reference
        g_att = self.attention_map(x)
        f0 = self.conv_input(x)
        g_ft = self.conv_mid(self.feature(f0)) + f0
        attmap = torch.sigmoid(g_att) * g_ft
        att = self.reconstruction(torch.cat([attmap, x, g_att], 1))
        att = F.relu(self.conv2_bn(att))
        out: dict[str, torch.Tensor] = {"reconstruction": att, "attention": g_att, "features": g_ft}
        if self.use_stn:
            if self.embedding:
                # GMMSTN: normalise, then predict theta from and warp the normalised image.
                att_out = normalize_layer(att)
                theta = self.stn(att_out.mean(dim=1, keepdim=True).detach())
                att_t = warp(att_out, theta)
                skip = self.gmmstn_cvgg_skips_warp and self.backbone == "cvgg13"
                classify = att_out if skip else att_t
            else:
                # STN: warp the raw reconstruction, normalise the warped image.
                theta = self.stn(att.mean(dim=1, keepdim=True).detach())
                att_t = normalize_layer(warp(att, theta))
                classify = att_t
            out.update(theta=theta, warped=att_t)
        else:
            classify = normalize_layer(att)
        out.update(self.netclass(backbone_input(self.backbone, classify)))
        return out


# --------------------------------------------------------------------------
# The paper-era FERAtt (reference commit 53fd5e4, docs/reference.md 8)
# --------------------------------------------------------------------------


class DilateCenter(nn.Module):
    """conv_d1..conv_d4: 3x3 convs with dilation (and padding) 1-4, chained; ReLU of the sum of their outputs.

    ``buffer_on_cuda=True`` reproduces the reference's accumulator, a float32
    ``torch.zeros(...).cuda()`` made inside forward: it fails without a GPU
    and rounds a float64 model's centre to float32. Off by default: the sum
    is formed directly, on the input's device and dtype.
    """

    def __init__(self, in_ch: int, out_ch: int, buffer_on_cuda: bool = False) -> None:
        super().__init__()
        self.out_ch, self.buffer_on_cuda = out_ch, buffer_on_cuda
        for d in (1, 2, 3, 4):
            setattr(self, f"conv_d{d}", nn.Conv2d(in_ch if d == 1 else out_ch, out_ch, 3, 1, d, dilation=d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for d in (1, 2, 3, 4):
            x = getattr(self, f"conv_d{d}")(x)
            outs.append(x)
        if self.buffer_on_cuda:
            total = torch.zeros(x.shape[0], self.out_ch, x.shape[2], x.shape[3]).cuda()
            for o in outs:
                total += o
        else:
            total = outs[0] + outs[1] + outs[2] + outs[3]
        return F.relu(total)


class DecoderBlockDeconv(nn.Module):
    """``block = Sequential(ConvRelu(in, mid), ConvTranspose2d(mid, out, 4, stride 2, padding 1), ReLU)``."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(ConvRelu(in_ch, mid_ch), nn.ConvTranspose2d(mid_ch, out_ch, 4, 2, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class FERAttention2019(nn.Module):
    """The paper-era FERAtt (arch ``atentionresnet34``), written from docs/reference.md 8 and that commit's structure.

    Outputs as ferattentiongmmstn. The attention U-Net's parts are attributes
    of this module itself (``conv1``..``conv5``, ``center``, ``dec5``..``dec1``,
    ``attention_map``); with ``include_encoder_alias`` the borrowed
    torchvision ResNet-34 is registered first as ``encoder``, as the reference
    does. ``image_size`` sets the STN regressor's input (10 * s * s, s = 28 at
    the reference's 128). ``center_buffer_on_cuda``: see :class:`DilateCenter`.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int = 32,
        num_filters: int = 32,
        num_feature_blocks: int = 4,
        image_size: int = 128,
        include_encoder_alias: bool = False,
        center_buffer_on_cuda: bool = False,
    ) -> None:
        super().__init__()
        encoder = TorchvisionResNet((3, 4, 6, 3), num_classes=1000)
        if include_encoder_alias:
            self.encoder = encoder
        self.conv1 = nn.Sequential(encoder.conv1, encoder.bn1, nn.ReLU(inplace=True), nn.MaxPool2d(2, 2))
        self.conv2, self.conv3, self.conv4, self.conv5 = encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4
        nf = num_filters
        self.center = DilateCenter(512, nf * 8, center_buffer_on_cuda)
        self.dec5 = DecoderBlockDeconv(512 + nf * 8, nf * 16, nf * 8)
        self.dec4 = DecoderBlockDeconv(256 + nf * 8, nf * 16, nf * 8)
        self.dec3 = DecoderBlockDeconv(128 + nf * 8, nf * 8, nf * 2)
        self.dec2 = DecoderBlockDeconv(64 + nf * 2, nf * 4, nf * 4)
        self.dec1 = DecoderBlockDeconv(nf * 4, nf * 4, nf)
        self.attention_map = nn.Sequential(ConvRelu(nf, nf), nn.Conv2d(nf, 1, 1))
        self.conv_input = nn.Conv2d(3, nf, 9, 1, 4)
        self.feature = nn.Sequential(*[ResidualBlockSR(nf) for _ in range(num_feature_blocks)])
        self.conv_mid = nn.Conv2d(nf, nf, 3, 1, 1)
        self.reconstruction = nn.Sequential(ConvRelu(nf, nf), nn.Conv2d(nf, 3, 1))
        self.stn = STN(image_size)
        self.netclass = PreActResNet18(num_classes, dim)

    def forward(self, x: torch.Tensor, x_org: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        del x_org  # accepted and ignored, as in the reference
        conv1 = self.conv1(x)
        conv2 = self.conv2(conv1)
        conv3 = self.conv3(conv2)
        conv4 = self.conv4(conv3)
        conv5 = self.conv5(conv4)
        center = self.center(conv5)
        dec5 = self.dec5(torch.cat([center, conv5], 1))
        dec4 = self.dec4(torch.cat([dec5, conv4], 1))
        dec3 = self.dec3(torch.cat([dec4, conv3], 1))
        dec2 = self.dec2(torch.cat([dec3, conv2], 1))
        g_att = self.attention_map(self.dec1(dec2))
        f0 = self.conv_input(x)
        g_ft = self.conv_mid(self.feature(f0)) + f0
        att = self.reconstruction(torch.sigmoid(g_att) * g_ft)
        att = att * (torch.abs(att) > 0.02).to(att.dtype)
        theta = self.stn(att.mean(dim=1, keepdim=True).detach())
        att_t = warp(att, theta)
        att_t = att_t * (torch.abs(att_t) >= 0.02).to(att_t.dtype)
        out = {"reconstruction": att, "attention": g_att, "features": g_ft, "theta": theta, "warped": att_t}
        out.update(self.netclass(F.avg_pool2d(att_t, 4)))
        return out


def build_torch_model(
    name: str,
    *,
    num_classes: int,
    dim: int = 32,
    include_encoder_alias: bool = False,
    **options: Any,
) -> nn.Module:
    """PyTorch twin of :func:`feratt_jax.models.build_model` (same names and options).

    Args:
      name: ferattention | ferattentiongmm | ferattentionstn | ferattentiongmmstn |
        preactresnet18 | resnet18 | cvgg13 | ferattention_2019.
      num_classes: C.
      dim: embedding size (GMM variants, or baselines with ``embedding=True``).
      include_encoder_alias: FERAtt only: register ``attention_map.encoder`` like the reference.
      **options: as for ``build_model`` (backbone, attention_channels,
        num_feature_blocks, gmmstn_cvgg_skips_warp; baselines: embedding,
        dropout_rate for cvgg13; ferattention_2019: num_filters,
        num_feature_blocks, image_size (128), center_buffer_on_cuda).

    Returns:
      The ``nn.Module`` (in training mode, as PyTorch modules start).
    """
    if name in FERATT_VARIANTS:
        embedding, use_stn = FERATT_VARIANTS[name]
        allowed = {"backbone", "attention_channels", "num_feature_blocks", "gmmstn_cvgg_skips_warp"}
        unknown = set(options) - allowed
        if unknown:
            raise ValueError(f"model {name!r} does not take option(s) {sorted(unknown)}")
        return FERAttention(
            num_classes, dim, embedding, use_stn, include_encoder_alias=include_encoder_alias, **options
        )
    if name == "ferattention_2019":
        allowed = {"num_filters", "num_feature_blocks", "image_size", "center_buffer_on_cuda"}
        unknown = set(options) - allowed
        if unknown:
            raise ValueError(f"model {name!r} does not take option(s) {sorted(unknown)}")
        return FERAttention2019(num_classes, dim, include_encoder_alias=include_encoder_alias, **options)
    if name in BASELINES:
        allowed = {"embedding"} | ({"dropout_rate"} if name == "cvgg13" else set())
        unknown = set(options) - allowed
        if unknown:
            raise ValueError(f"model {name!r} does not take option(s) {sorted(unknown)}")
        emb = dim if options.get("embedding", False) else None
        if name == "cvgg13":
            return CVGG13(num_classes, emb, options.get("dropout_rate", 0.5))
        return make_backbone(name, num_classes, emb)
    raise ValueError(f"unknown model {name!r}; choose one of {tuple(FERATT_VARIANTS) + ('ferattention_2019',) + BASELINES}")


__all__ = [
    "AttentionResNet",
    "FERAttention2019",
    "BasicBlock",
    "CVGG13",
    "FERAttention",
    "PreActResNet18",
    "STN",
    "TorchvisionResNet",
    "build_torch_model",
    "normalize_layer",
    "warp",
]
