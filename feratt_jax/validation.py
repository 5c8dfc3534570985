"""``validate(config)``: every field checked before any work, and what a resume may change.

Field types come from :func:`feratt_jax.configs.base_config`'s defaults (and
``feratt_jax.data.pipeline.DataConfig`` for ``data.*`` fields the base config
does not list), so a field added there is type-checked without touching this
file; only choices, ranges and cross-field rules are tables here.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from typing import Any, Callable, Iterable, Mapping

import ml_collections

from feratt_jax import configs
from feratt_jax.data import pipeline, sampling
from feratt_jax.data.render import PRESETS
from feratt_jax.data.splits import num_folds_for
from feratt_jax.losses import PAPER_ERA_VARIANTS, RECONSTRUCTION_FORMS, VARIANT_TERMS
from feratt_jax.models import FERATT_VARIANTS, LOSS_VARIANT, MODEL_NAMES
from feratt_jax.models.feratt import BACKBONES

CHOICES: dict[str, tuple[Any, ...]] = {
    "model.name": MODEL_NAMES,
    "model.backbone": BACKBONES,
    "model.compute_dtype": ("float32", "bfloat16"),
    "loss.variant": tuple(VARIANT_TERMS),
    "loss.mixup_label_mode": ("soft", "reference"),
    "loss.reconstruction_form": RECONSTRUCTION_FORMS,
    "optimizer.name": ("adam",),
    "optimizer.schedule": ("constant", "cosine", "step", "plateau"),
    "data.mode": pipeline.MODES,
    "data.split": pipeline.SPLITS,
    "data.loader": sampling.LOADERS,
    "data.render_preset": tuple(PRESETS),
    "data.eval_render_preset": tuple(PRESETS),
    "data.curriculum_preset": ("",) + tuple(PRESETS),
}

_AT_LEAST_0 = (">=", 0)
_AT_LEAST_1 = (">=", 1)
_POSITIVE = (">", 0)
# (operator, bound) pairs each numeric field must satisfy.
RANGES: dict[str, tuple[tuple[str, float], ...]] = {
    "seed": (_AT_LEAST_0,),
    "model.num_classes": (_AT_LEAST_1,),
    "model.dim": (_AT_LEAST_1,),
    "model.attention_channels": (_AT_LEAST_0,),
    "model.num_filters": (_AT_LEAST_1,),
    "model.backbone_width": (_AT_LEAST_1,),
    "model.num_feature_blocks": (_AT_LEAST_0,),
    "model.baseline_width": (_AT_LEAST_0,),
    "model.input_size": (_AT_LEAST_0,),
    "loss.sigma": (_POSITIVE,),
    "loss.cross_entropy_weight": (_AT_LEAST_0,),
    "loss.reconstruction_weight": (_AT_LEAST_0,),
    "loss.stn_weight": (_AT_LEAST_0,),
    "loss.gaussian_space_weight": (_AT_LEAST_0,),
    "optimizer.learning_rate": (_POSITIVE,),
    "optimizer.b1": (_AT_LEAST_0, ("<", 1)),
    "optimizer.b2": (_AT_LEAST_0, ("<", 1)),
    "optimizer.eps": (_POSITIVE,),
    "optimizer.weight_decay": (_AT_LEAST_0,),
    "optimizer.decoupled_weight_decay": (_AT_LEAST_0,),
    "optimizer.warmup_steps": (_AT_LEAST_0,),
    "optimizer.grad_clip_norm": (_AT_LEAST_0,),
    "optimizer.step_size": (_AT_LEAST_0,),
    "optimizer.step_gamma": (_POSITIVE, ("<=", 1)),
    "optimizer.plateau_factor": (_POSITIVE, ("<", 1)),
    "optimizer.plateau_patience": (_AT_LEAST_1,),
    "data.fold": (_AT_LEAST_0,),
    "data.num_folds": (_AT_LEAST_0,),
    "data.val_subjects": ((">=", -1),),
    "data.image_size": ((">=", 8),),
    "data.curriculum_steps": (_AT_LEAST_0,),
    "train.batch_size": (_AT_LEAST_1,),
    "train.num_steps": (_AT_LEAST_0,),
    "train.log_every": (_AT_LEAST_1,),
    "train.eval_every": (_AT_LEAST_1,),
    "train.checkpoint_every": (_AT_LEAST_1,),
    "train.keep_checkpoints": (_AT_LEAST_1,),
    "train.image_log_every": (_AT_LEAST_0,),
    "train.eval_batch_size": (_AT_LEAST_1,),
    "train.precise_bn_batches": (_AT_LEAST_0,),
    "train.early_stopping_patience": (_AT_LEAST_0,),
}
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
}

# Options only some models read: a changed value elsewhere is a mistake, not a
# no-op. (The FERAtt widths are not listed: the ``quick`` size narrows them in
# every config, and the baselines ignore them by design.)
MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "model.backbone": tuple(FERATT_VARIANTS),
    "model.attention_channels": tuple(FERATT_VARIANTS),
    "model.baseline_width": ("preactresnet18",),
}

# A workdir's record of how its images are drawn (``DataConfig.provenance``).
DATA_PROVENANCE_FILE = "data.json"

# What a resumed run may change: its length, and how often it logs, evaluates
# and saves; plus plumbing that leaves the numbers alone.
RESUMABLE_CHANGES = {
    "train.num_steps",
    "train.log_every",
    "train.image_log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.profile",
    "train.distributed",
    "train.init_from",  # read only when a run starts
    "train.final_figures",  # pictures written after training
    "train.early_stopping_patience",  # like num_steps, how long the run goes on
    "data.cache_dir",
    "data.use_cache",
    "data.bank_workers",
    "data.loader",  # grain and numpy yield the same batches for the same state
    "data.prefetch",
}
# Fields added after runs existed, with the value that reproduces the older
# behaviour: a stored config that predates a field counts as having it
# (optimizer.decoupled_weight_decay is derived instead: upgrade_stored_config).
DEFAULTS_OF_NEWER_FIELDS = {
    "train.precise_bn_batches": 0,
    "model.baseline_width": 0,
    "optimizer.step_size": 0,
    "optimizer.step_gamma": 0.1,
    "train.final_figures": False,
    "train.early_stopping_patience": 0,
    "optimizer.plateau_factor": 0.1,
    "optimizer.plateau_patience": 5,
    "loss.reconstruction_form": "tanh",
    "data.face_scene_prob": 0.0,
    "data.curriculum_preset": "",
    "data.curriculum_steps": 0,
    "model.reconstruction_relu": True,
    "loss.class_mean_includes_self": True,
}
# The options of the DGMM term: they change nothing in a run whose loss variant has no such term,
# so a resume check skips them there (a baseline run predating an option resumes as it is).
DGMM_OPTIONS = (
    "loss.sigma",
    "loss.mixup",
    "loss.mixup_label_mode",
    "loss.class_mean_includes_self",
    "loss.gaussian_space_weight",
)


def upgrade_stored_config(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored ``config.json``, flattened, in today's fields with the meaning it was run with.

    Fields it predates get :data:`DEFAULTS_OF_NEWER_FIELDS`. Before
    ``optimizer.decoupled_weight_decay`` existed, ``optimizer.weight_decay``
    was applied after the Adam direction (AdamW); such a config reads as
    ``decoupled_weight_decay = <its weight_decay>``, ``weight_decay = 0``.
    """
    # A JSON round trip puts it in the form of a fresh config's (tuples become lists).
    flat = configs.flatten(json.loads(json.dumps(dict(stored))))
    upgraded = {**DEFAULTS_OF_NEWER_FIELDS, **flat}
    if "optimizer.weight_decay" in flat and "optimizer.decoupled_weight_decay" not in flat:
        upgraded["optimizer.decoupled_weight_decay"] = flat["optimizer.weight_decay"]
        upgraded["optimizer.weight_decay"] = 0.0
    return upgraded


def config_differences(stored: Mapping[str, Any], wanted: ml_collections.ConfigDict, ignored: Iterable[str]) -> list[str]:
    """Fields (outside ``ignored``) where a stored ``config.json`` differs from ``wanted``."""
    a = upgrade_stored_config(stored)
    b = configs.flatten(json.loads(json.dumps(wanted.to_dict())))
    ignored = set(ignored)
    variants = {a.get("loss.variant"), b.get("loss.variant")}
    if not any("gaussian_space" in VARIANT_TERMS.get(v, ()) for v in variants):
        ignored |= set(DGMM_OPTIONS)
    return sorted(k for k in set(a) | set(b) if k not in ignored and a.get(k) != b.get(k))


def check_resume(stored: Mapping[str, Any], config: ml_collections.ConfigDict, workdir: Any) -> None:
    """Raise unless ``config`` differs from a workdir's stored config only in :data:`RESUMABLE_CHANGES`."""
    differ = config_differences(stored, config, RESUMABLE_CHANGES)
    if differ:
        a, b = upgrade_stored_config(stored), configs.flatten(config.to_dict())
        shown = ", ".join(f"{k} ({a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r})" for k in differ[:8])
        hint = ""
        if "optimizer.decoupled_weight_decay" in differ and "decoupled_weight_decay" not in stored.get("optimizer", {}):
            hint = (
                f" (that run predates optimizer.decoupled_weight_decay: its weight_decay was AdamW's; continue it with "
                f"--config.optimizer.decoupled_weight_decay={a['optimizer.decoupled_weight_decay']!r} --config.optimizer.weight_decay=0.0)"
            )
        raise ValueError(
            f"{workdir} holds a run with a different config; resuming it may change only the run length and the "
            f"logging/eval/checkpoint cadence, but these differ: {shown}{hint}. Use a new --workdir"
        )


def _flatten_json(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten_json(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resume_data(stored: Mapping[str, Any], current: Mapping[str, Any], workdir: Any) -> None:
    """Raise unless the data a run resumes on are drawn as they were (both from ``DataConfig.provenance``).

    The message gives the ``--config.data.generator.FIELD=VALUE`` overrides
    that restore a changed default; a new generator version cannot be undone,
    so then only a new workdir helps.
    """
    a, b = _flatten_json(stored), _flatten_json(current)
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if not differ:
        return
    shown = ", ".join(f"{k} ({a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r})" for k in differ[:8])
    parts = [f"{workdir} holds a run whose images were drawn differently ({DATA_PROVENANCE_FILE}): {shown}."]
    restore = [f"--config.data.{k}={a[k]!r}" for k in differ if k.startswith(("generator.", "render.")) and k in a]
    if "generator_version" in differ:
        parts.append("The face generator's drawing changed since that run started, so its faces cannot be drawn again.")
    if "generator_version" not in differ and len(restore) == len(differ):
        parts.append(f"If a default changed, continue it with {' '.join(restore)}; otherwise use a new --workdir")
    else:
        parts.append("Use a new --workdir")
    raise ValueError(" ".join(parts))


def _expected_types() -> dict[str, type]:
    """Field -> type of its default, over every model's base config and DataConfig."""
    types: dict[str, type] = {}
    for name in MODEL_NAMES:
        for key, value in configs.flatten(configs.base_config(name).to_dict()).items():
            types.setdefault(key, type(value))
    for field in dataclasses.fields(pipeline.DataConfig):
        if field.name not in ("batch_size", "num_classes"):
            default = field.default
            types.setdefault(f"data.{field.name}", dict if field.name in ("render", "generator") else type(default))
    return types


def _type_error(key: str, value: Any, expected: type) -> str | None:
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return None
    if expected is int and isinstance(value, bool):
        return f"{key} must be an int, got {value!r}"
    if expected is dict and isinstance(value, (Mapping, ml_collections.ConfigDict, tuple, list)):
        return None
    if isinstance(value, expected):
        return None
    return f"{key} must be {expected.__name__}, got {type(value).__name__} {value!r}"


def supported_folds(config: ml_collections.ConfigDict) -> int:
    """How many folds ``config.data`` defines (``data.num_folds``, or subjects // subjects per fold)."""
    max_folds = num_folds_for(int(config.data.num_subjects), int(config.data.subjects_per_fold))
    configured = int(config.data.get("num_folds", 0) or 0)
    return min(configured, max_folds) if configured > 0 else max_folds


def validate(config: ml_collections.ConfigDict, *, device_count: int | None = None) -> None:
    """Check every field and the cross-field rules; raise one ValueError listing every problem.

    Args:
      config: the experiment config.
      device_count: devices the global batch is split over (None: skip that rule).
    """
    errors: list[str] = []
    types = _expected_types()
    flat = configs.flatten(config.to_dict())
    for key, value in flat.items():
        if key not in types:
            errors.append(configs.unknown_field_message(key, list(types)))
            continue
        error = _type_error(key, value, types[key])
        if error:
            errors.append(error)
    if errors:  # the rules below assume the right types
        raise ValueError("config: " + "; ".join(errors))

    for key, choices in CHOICES.items():
        if key in flat and flat[key] not in choices:
            close = difflib.get_close_matches(str(flat[key]), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            errors.append(f"{key} must be one of {list(choices)}, got {flat[key]!r}{hint}")
    for key, rules in RANGES.items():
        for op, bound in rules:
            if key in flat and not _COMPARE[op](flat[key], bound):
                errors.append(f"{key} must be {op} {bound}, got {flat[key]!r}")
    errors += _cross_field_errors(config, flat, device_count)
    if errors:
        raise ValueError("config: " + "; ".join(errors))


def _cross_field_errors(config: ml_collections.ConfigDict, flat: Mapping[str, Any], device_count: int | None) -> list[str]:
    errors: list[str] = []
    name = flat["model.name"]
    if name not in MODEL_NAMES:
        return errors  # reported above
    defaults = configs.flatten(configs.base_config(name).to_dict())
    for key, models in MODEL_OPTIONS.items():
        if key in flat and name not in models and flat[key] != defaults.get(key):
            errors.append(f"{key}={flat[key]!r} applies only to {', '.join(models)}, not model.name={name!r}")
    variant = flat["loss.variant"]
    if variant in VARIANT_TERMS and variant not in ("classifier", LOSS_VARIANT[name]):
        gmm, stn = FERATT_VARIANTS.get(name, (None, None))
        if gmm is None or ("gmm" in variant and not gmm) or ("stn" in variant and not stn) or variant in PAPER_ERA_VARIANTS:
            errors.append(f"loss.variant={variant!r} needs outputs model.name={name!r} does not produce (its own: {LOSS_VARIANT[name]!r})")
    if flat["optimizer.schedule"] == "step" and flat["optimizer.step_size"] < 1:
        errors.append(f"optimizer.step_size={flat['optimizer.step_size']} must be >= 1 with optimizer.schedule='step'")
    if device_count:
        for key in ("train.batch_size", "train.eval_batch_size"):
            if flat[key] % device_count:
                errors.append(f"{key}={flat[key]} is not divisible by the {device_count} devices")
    image_size, input_size = flat["data.image_size"], flat["model.input_size"]
    if 0 < input_size < image_size and image_size % input_size:
        errors.append(f"model.input_size={input_size} must divide data.image_size={image_size} (or be 0 or larger)")
    if flat["data.split"] == "kfold" and flat["data.num_subjects"] >= 1 and flat["data.subjects_per_fold"] >= 1:
        folds = supported_folds(config)
        if flat["data.fold"] >= folds:
            errors.append(
                f"data.fold={flat['data.fold']} is out of range: data.num_subjects={flat['data.num_subjects']} with "
                f"data.subjects_per_fold={flat['data.subjects_per_fold']} gives folds 0..{folds - 1}"
            )
    if errors:
        return errors
    try:  # the data side's own checks: sources, presets, render/generator overrides
        pipeline.DataConfig.from_dict(config.data.to_dict(), batch_size=config.train.batch_size, num_classes=config.model.num_classes)
    except ValueError as err:
        errors.append(str(err))
    return errors
