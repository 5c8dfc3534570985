"""Model zoo: the four FERAtt variants and the three baseline classifiers.

Every model is a Flax Linen module (``ferattention_2019`` is the paper-era
FERAtt, with ferattentiongmmstn's outputs); ``module.apply(variables, x_BHWC,
train=bool, mutable=[...])`` returns a dict of named outputs (always
``logits``; FERAtt variants add ``reconstruction``, ``attention``,
``features`` and, where they have them, ``embedding``, ``theta``,
``warped``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from feratt_jax.models.cvgg import CVGG13
from feratt_jax.models.feratt import BACKBONES, FERAttention, FERAttention2019
from feratt_jax.models.preact_resnet import PreActResNet18
from feratt_jax.models.resnet import ResNet18

# name -> (embedding, use_stn): the reference's arch names.
FERATT_VARIANTS = {
    "ferattention": (False, False),
    "ferattentiongmm": (True, False),
    "ferattentionstn": (False, True),
    "ferattentiongmmstn": (True, True),
}
BASELINES = {"preactresnet18": PreActResNet18, "resnet18": ResNet18, "cvgg13": CVGG13}
# The paper-era FERAtt (reference commit 53fd5e4, docs/reference.md 8): a model of
# its own, since its layout differs from HEAD's ferattentiongmmstn throughout.
PAPER_ERA_MODELS = {"ferattention_2019": FERAttention2019}
# Our name -> the arch name the reference's checkpoints record, where they differ.
REFERENCE_ARCH = {"ferattention_2019": "atentionresnet34"}
# Loss variant (feratt_jax.losses.feratt_losses) of each model, as the
# reference pairs its trainers with its archs; baselines train on CE only.
LOSS_VARIANT = {
    "ferattention": "attention",
    "ferattentiongmm": "attention_gmm",
    "ferattentionstn": "attention_stn",
    "ferattentiongmmstn": "attention_gmm_stn",
    "preactresnet18": "classifier",
    "resnet18": "classifier",
    "cvgg13": "classifier",
    "ferattention_2019": "attention_gmm_stn_2019",
}
MODEL_NAMES = tuple(FERATT_VARIANTS) + tuple(PAPER_ERA_MODELS) + tuple(BASELINES)


def model_name_for_arch(arch: str) -> str:
    """Our model name for an arch name a reference checkpoint records (most are the same)."""
    return {ref: ours for ours, ref in REFERENCE_ARCH.items()}.get(arch, arch)


def build_model(name: str, *, num_classes: int, dim: int = 32, dtype: Any = jnp.float32, **options: Any) -> nn.Module:
    """Build a model by the reference's arch name.

    Args:
      name: one of ``MODEL_NAMES``.
      num_classes: number of expression classes C.
      dim: embedding size for the GMM ("Rep") variants, and for a baseline
        built with ``embedding=True``.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
      **options: FERAtt variants: ``backbone`` (preactresnet18 | resnet18 |
        cvgg13), ``attention_channels`` (default = num_classes, as the
        reference ties them), ``num_feature_blocks``,
        ``gmmstn_cvgg_skips_warp``, and for quick CPU runs ``num_filters``
        (decoder width, 32) and ``backbone_width`` (PreActResNet18, 64). Baselines: ``embedding`` (bool),
        ``dropout_rate`` for cvgg13, and ``initial_channels`` (64) for preactresnet18.
        ferattention_2019: ``image_size`` (128), ``num_filters`` (32), ``num_feature_blocks`` (4),
        ``backbone_width`` (64), and ``backbone`` only as "preactresnet18".

    Raises:
      ValueError: unknown name, bad num_classes/dim or an unknown option.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if name in FERATT_VARIANTS:
        embedding, use_stn = FERATT_VARIANTS[name]
        allowed = {"backbone", "attention_channels", "num_feature_blocks", "num_filters", "backbone_width", "reconstruction_relu", "gmmstn_cvgg_skips_warp"}
        _check_options(name, options, allowed)
        backbone = options.get("backbone", "preactresnet18")
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
        return FERAttention(num_classes=num_classes, dim=dim, embedding=embedding, use_stn=use_stn, dtype=dtype, **options)
    if name in PAPER_ERA_MODELS:
        _check_options(name, options, {"backbone", "image_size", "num_filters", "num_feature_blocks", "backbone_width"})
        if options.pop("backbone", "preactresnet18") != "preactresnet18":
            raise ValueError(f"model {name!r} has only the preactresnet18 backbone (preactresembnetex18), as the reference")
        return PAPER_ERA_MODELS[name](num_classes=num_classes, dim=dim, dtype=dtype, **options)
    if name in BASELINES:
        allowed = {"embedding"} | ({"dropout_rate"} if name == "cvgg13" else set()) | ({"initial_channels"} if name == "preactresnet18" else set())
        _check_options(name, options, allowed)
        embedding = options.pop("embedding", False)
        return BASELINES[name](num_classes=num_classes, dim=dim if embedding else None, dtype=dtype, **options)
    raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")


def _check_options(name: str, options: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"model {name!r} does not take option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


__all__ = [
    "build_model",
    "model_name_for_arch",
    "MODEL_NAMES",
    "LOSS_VARIANT",
    "FERATT_VARIANTS",
    "PAPER_ERA_MODELS",
    "REFERENCE_ARCH",
    "BASELINES",
    "BACKBONES",
    "FERAttention",
    "FERAttention2019",
]
