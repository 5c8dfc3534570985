"""A small, framework-free export format for trained models: ``model.json`` + an ``.npz``.

Layout of an export directory::

    model.json                    the spec: model name, num_classes, dim, options, ...
    variables-<sha16>.npz         every Flax variable, keyed "collection/path/to/leaf"

``model.json`` names its variables file and records the file's SHA-256, so a
reader always gets a matching pair. Writing is crash-safe: the new ``.npz`` is
written under a new, content-derived name (temp file + rename), then
``model.json`` is replaced atomically (temp file + ``os.replace``), and only
then are variables files no longer referenced removed. An interrupted save
therefore leaves either the old export or the new one, never a mix; other
files in the directory are left alone.

The trainer, ``feratt convert`` and ``feratt eval``/``predict`` share this
format. :func:`load_model` rebuilds the module with
:func:`feratt_jax.models.build_model` and checks every variable's path and
shape against it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from feratt_jax import __version__
from feratt_jax.models import FERAttention, build_model
from feratt_jax.models.cvgg import CVGG13

FORMAT_NAME = "feratt-jax-model"
FORMAT_VERSION = 1
SPEC_FILENAME = "model.json"
_VARIABLES_PREFIX = "variables-"

# Every model accepts a 64x64 RGB batch except those that declare their own
# ``image_size`` (ferattention_2019: 128, which sizes its STN regressor).
TEMPLATE_INPUT_SHAPE = (1, 64, 64, 3)


class CheckpointError(ValueError):
    """A checkpoint or export file is unreadable, corrupt or does not match the model."""


# --------------------------------------------------------------------------
# Variable trees
# --------------------------------------------------------------------------


def abstract_variables(module: nn.Module, input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Shapes and dtypes of ``module``'s variables, without allocating or computing them.

    Args:
      module: a model from :func:`feratt_jax.models.build_model`.
      input_shape: (B, H, W, 3) input used to trace ``init``; None: 64x64, or
        the module's own ``image_size`` where it has one.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` (collections the module has) of
      ``jax.ShapeDtypeStruct`` leaves.
    """

    if input_shape is None:
        side = getattr(module, "image_size", TEMPLATE_INPUT_SHAPE[1])
        input_shape = (1, side, side, 3)

    def init() -> Any:
        return module.init(jax.random.key(0), jnp.zeros(input_shape, jnp.float32), train=False)

    variables = jax.eval_shape(init)
    return {col: dict(tree) for col, tree in variables.items()}


def flatten_variables(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{"params": {"a": {"b": x}}}`` -> ``{"params/a/b": np.asarray(x)}``.

    Args:
      variables: nested dict (or FrozenDict) of arrays.

    Returns:
      Flat dict keyed by "/"-joined paths, values as NumPy arrays.
    """
    flat = flatten_dict(plain_dict(variables), sep="/")
    return {key: np.asarray(value) for key, value in flat.items()}


def unflatten_variables(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_variables` (values are kept as given)."""
    return unflatten_dict(dict(flat), sep="/")


def check_variables(variables: Mapping[str, Any], template: Mapping[str, Any], *, source: str) -> None:
    """Raise a :class:`CheckpointError` unless ``variables`` has exactly the template's paths and shapes.

    Args:
      variables: nested variables to check.
      template: e.g. from :func:`abstract_variables`.
      source: what the variables came from, for the message (a file name).

    Raises:
      CheckpointError: listing every missing and unexpected path and every shape mismatch.
    """
    got = {k: tuple(np.shape(v)) for k, v in flatten_dict(plain_dict(variables), sep="/").items()}
    want = {k: tuple(v.shape) for k, v in flatten_dict(plain_dict(template), sep="/").items()}
    problems = [f"missing variable {k!r} (expected shape {want[k]})" for k in want if k not in got]
    problems += [f"unexpected variable {k!r} (shape {got[k]})" for k in got if k not in want]
    problems += [
        f"shape mismatch for {k!r}: file has {got[k]}, model expects {want[k]}"
        for k in want
        if k in got and got[k] != want[k]
    ]
    if problems:
        raise CheckpointError(summarise_problems(f"{source} does not match the model", problems))


def plain_dict(tree: Any) -> Any:
    """FrozenDict/Mapping -> plain nested dict (leaves untouched)."""
    if isinstance(tree, Mapping):
        return {k: plain_dict(v) for k, v in tree.items()}
    return tree


def summarise_problems(headline: str, problems: list[str], limit: int = 20) -> str:
    """One error message: a headline with the problem count, then the first ``limit`` problems, one a line."""
    shown = problems[:limit]
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{headline} ({len(problems)} problem(s)):\n  " + "\n  ".join(shown) + more


# --------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------


def save_model(
    directory: str | os.PathLike[str],
    variables: Mapping[str, Any],
    *,
    model_name: str,
    num_classes: int,
    dim: int,
    model_options: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write an export (``model.json`` + variables ``.npz``) into ``directory``.

    Args:
      directory: created if needed; an existing export there is replaced atomically.
      variables: ``{"params": ..., "batch_stats": ...}`` (arrays on any device).
      model_name: a :data:`feratt_jax.models.MODEL_NAMES` name.
      num_classes: C.
      dim: embedding size passed to ``build_model``.
      model_options: the other ``build_model`` options (JSON-serialisable).
      extra: free-form JSON-serialisable metadata (e.g. training step, metrics).

    Returns:
      Path of the written ``model.json``.

    Raises:
      TypeError: options or extra are not JSON-serialisable.
    """
    model_options = dict(model_options or {})
    extra = dict(extra or {})
    json.dumps({"model_options": model_options, "extra": extra})  # fail before writing anything
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    flat = flatten_variables(variables)
    arrays, dtypes = {}, {}
    for key, value in flat.items():
        # NumPy's .npz cannot hold bfloat16 & co.; store float32 and record the dtype.
        if value.dtype.kind not in "biuf" or value.dtype.name == "bfloat16":
            dtypes[key] = str(value.dtype)
            value = value.astype(np.float32)
        arrays[key] = value

    # 1. The variables, under a fresh name derived from the content.
    fd, tmp_npz = tempfile.mkstemp(prefix=".variables-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        digest = _sha256(Path(tmp_npz))
        npz_name = f"{_VARIABLES_PREFIX}{digest[:16]}.npz"
        os.replace(tmp_npz, directory / npz_name)
    except BaseException:
        Path(tmp_npz).unlink(missing_ok=True)
        raise

    # 2. The spec, replaced atomically: this is the commit point.
    spec = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "num_classes": int(num_classes),
        "dim": int(dim),
        "model_options": model_options,
        "variables_file": npz_name,
        "variables_sha256": digest,
        "dtypes": dtypes,
        "feratt_jax_version": __version__,
        "extra": extra,
    }
    text = json.dumps(spec, indent=2, sort_keys=True)
    fd, tmp_json = tempfile.mkstemp(prefix=".model-", suffix=".json.tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_json, directory / SPEC_FILENAME)
    except BaseException:
        Path(tmp_json).unlink(missing_ok=True)
        raise

    # 3. Old variables files are now unreferenced.
    for old in directory.glob(f"{_VARIABLES_PREFIX}*.npz"):
        if old.name != npz_name:
            old.unlink(missing_ok=True)
    return directory / SPEC_FILENAME


def read_spec(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate ``model.json`` of an export.

    Args:
      directory: the export directory.

    Returns:
      The spec dict.

    Raises:
      FileNotFoundError: no ``model.json`` (message names the path).
      CheckpointError: not valid JSON, or not a feratt-jax export.
    """
    path = Path(directory) / SPEC_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no model export at {directory}: {path} does not exist")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"corrupt model spec {path}: {err}") from err
    if not isinstance(spec, dict) or spec.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a {FORMAT_NAME} spec")
    if spec.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {spec['format_version']}; this feratt-jax reads up to {FORMAT_VERSION}"
        )
    for key in ("model_name", "num_classes", "dim", "variables_file"):
        if key not in spec:
            raise CheckpointError(f"corrupt model spec {path}: missing field {key!r}")
    return spec


def load_model(directory: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Load an export written by :func:`save_model`.

    Args:
      directory: the export directory.

    Returns:
      ``(module, variables, spec)``: the rebuilt Flax module, its variables
      (``jax.Array`` leaves, original dtypes) and the ``model.json`` content.

    Raises:
      FileNotFoundError: ``model.json`` or the variables file is missing.
      CheckpointError: a corrupt file (named), a checksum mismatch, or
        variables that do not fit the model (paths/shapes named).
    """
    spec = read_spec(directory)
    module = build_model(
        spec["model_name"], num_classes=spec["num_classes"], dim=spec["dim"], **spec.get("model_options", {})
    )
    npz_path = Path(directory) / spec["variables_file"]
    if not npz_path.is_file():
        raise FileNotFoundError(f"variables file {npz_path} named by {Path(directory) / SPEC_FILENAME} does not exist")
    expected = spec.get("variables_sha256")
    if expected and _sha256(npz_path) != expected:
        raise CheckpointError(f"corrupt variables file {npz_path}: SHA-256 does not match {SPEC_FILENAME}")
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            flat = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CheckpointError(f"corrupt variables file {npz_path}: {err}") from err
    dtypes = spec.get("dtypes", {})
    variables = unflatten_variables(
        {key: jnp.asarray(value, dtype=dtypes.get(key, value.dtype)) for key, value in flat.items()}
    )
    check_variables(variables, abstract_variables(module), source=str(npz_path))
    return module, variables, spec


def module_options(module: nn.Module) -> dict[str, Any]:
    """The non-default ``build_model`` options that rebuild ``module`` (for specs).

    Args:
      module: a model from :func:`feratt_jax.models.build_model`.

    Returns:
      Options dict (JSON-serialisable), e.g. ``{"backbone": "resnet18"}``.
    """
    if isinstance(module, FERAttention):
        options: dict[str, Any] = {"backbone": module.backbone}
        if module.attention_channels:
            options["attention_channels"] = int(module.attention_channels)
        if module.num_feature_blocks != 8:
            options["num_feature_blocks"] = int(module.num_feature_blocks)
        if module.gmmstn_cvgg_skips_warp:
            options["gmmstn_cvgg_skips_warp"] = True
        if module.num_filters != 32:
            options["num_filters"] = int(module.num_filters)
        if module.backbone_width != 64:
            options["backbone_width"] = int(module.backbone_width)
        if not module.reconstruction_relu:
            options["reconstruction_relu"] = False
        return options
    options = {"embedding": True} if getattr(module, "dim", None) is not None else {}
    if isinstance(module, CVGG13) and module.dropout_rate != 0.5:
        options["dropout_rate"] = float(module.dropout_rate)
    return options


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


__all__ = [
    "CheckpointError",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SPEC_FILENAME",
    "abstract_variables",
    "check_variables",
    "flatten_variables",
    "load_model",
    "module_options",
    "plain_dict",
    "read_spec",
    "save_model",
    "summarise_problems",
    "unflatten_variables",
]
