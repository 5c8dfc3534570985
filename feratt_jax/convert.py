"""Reference PyTorch checkpoints <-> feratt-jax model exports (``feratt convert``).

:func:`from_torch` writes a :mod:`feratt_jax.model_io` export (what ``feratt
eval``/``predict`` load) from a reference ``.pth.tar`` or bare state_dict; the
model name, class count and embedding size default to the ``arch`` /
``num_classes`` / ``num_output_channels`` a reference trainer file records
(the paper-era arch ``atentionresnet34`` is ``ferattention_2019``).
:func:`to_torch` writes an export or a training workdir as a ``.pth.tar``
the reference's loader accepts. torch is needed by both (the ``[torch]``
extra); :mod:`feratt_jax.interop.torch_checkpoint` imports it only when they run.
"""

from __future__ import annotations

import pathlib
from typing import Any

from feratt_jax import model_io, runs
from feratt_jax.interop.torch_checkpoint import export_reference_checkpoint, read_torch_checkpoint, state_dict_to_variables
from feratt_jax.models import FERATT_VARIANTS, build_model, model_name_for_arch

# The reference spells backbones without the depth; accept both.
BACKBONE_ALIASES = {"preactresnet": "preactresnet18", "resnet": "resnet18", "cvgg": "cvgg13"}


def from_torch(
    source: str | pathlib.Path,
    out: str | pathlib.Path,
    *,
    model: str | None = None,
    num_classes: int | None = None,
    dim: int | None = None,
    backbone: str | None = None,
    attention_channels: int | None = None,
    trust_pickle: bool = False,
) -> tuple[pathlib.Path, dict[str, Any]]:
    """Import a reference checkpoint into an export at ``out``; returns the ``model.json`` path and its spec.

    Raises:
      ValueError: the file records no arch/num_classes and none were given,
        or FERAtt-only options for another model.
      feratt_jax.model_io.CheckpointError: the weights do not fit the model.
    """
    state_dict, meta = read_torch_checkpoint(source, weights_only=not trust_pickle)
    model_name = model or (model_name_for_arch(meta["arch"]) if meta.get("arch") else None)
    num_classes = num_classes if num_classes is not None else meta.get("num_classes")
    if model_name is None or num_classes is None:
        raise ValueError(f"{source} does not record arch/num_classes: pass --model and --num-classes")
    dim = dim if dim is not None else int(meta.get("num_output_channels", 32))
    options: dict[str, Any] = dict(meta.get("feratt_jax_model_options") or {})
    if backbone:
        options["backbone"] = BACKBONE_ALIASES.get(backbone, backbone)
    if attention_channels:
        options["attention_channels"] = attention_channels
    if model_name not in FERATT_VARIANTS and (backbone or attention_channels):
        raise ValueError(f"--backbone/--attention-channels apply to FERAtt variants, not {model_name!r}")
    module = build_model(model_name, num_classes=int(num_classes), dim=dim, **options)
    variables = state_dict_to_variables(state_dict, model_io.abstract_variables(module), source=str(source))
    extra = {"converted_from": str(source)}
    for key in ("epoch", "prec", "imsize"):
        if isinstance(meta.get(key), (int, float)):
            extra[f"reference_{key}"] = meta[key]
    spec_path = model_io.save_model(
        out, variables, model_name=model_name, num_classes=int(num_classes), dim=dim, model_options=options, extra=extra
    )
    return spec_path, model_io.read_spec(out)


def to_torch(source: str | pathlib.Path, out: str | pathlib.Path, *, include_encoder_alias: bool = True) -> tuple[pathlib.Path, dict[str, Any]]:
    """Write an export or a training workdir as a reference ``.pth.tar``; returns its path and the source's spec.

    ``include_encoder_alias``: also write the reference's duplicated
    ``attention_map.encoder.*`` keys. A spec whose ``extra`` has
    ``input_standardization`` needs its images standardized before the
    model, which the reference's loaders do not do; one whose model options
    have ``reconstruction_relu: False`` (the quick size's) ends its
    reconstruction without the ReLU the reference's network applies. Both are
    recorded in the checkpoint's ``feratt_jax_model_options``.
    """
    _, variables, spec = runs.load_any(source)
    extra = spec.get("extra", {})
    path = export_reference_checkpoint(
        variables,
        spec["model_name"],
        out,
        num_classes=spec["num_classes"],
        dim=spec["dim"],
        include_encoder_alias=include_encoder_alias,
        epoch=int(extra.get("epoch", extra.get("reference_epoch", 0))),
        prec=float(extra.get("prec", extra.get("reference_prec", 0.0))),
        **spec.get("model_options", {}),
    )
    return pathlib.Path(path), spec
