"""Reference PyTorch checkpoints <-> Flax variables.

Naming contract (see :mod:`feratt_jax.models.layers`): the path of a Flax
variable joined with "." is the reference's state_dict key, with the leaf
renamed and the layout changed:

===================  =====================  ================================
Flax leaf            PyTorch key suffix     layout
===================  =====================  ================================
params ``kernel``    ``weight``             conv HWIO <-> OIHW; linear (in, out) <-> (out, in)
params ``scale``     ``weight``             BN gamma, unchanged
params ``bias``      ``bias``               unchanged
batch_stats ``mean`` ``running_mean``       unchanged
batch_stats ``var``  ``running_var``        unchanged (both store the unbiased variance)
===================  =====================  ================================

The reference's files also hold every attention-encoder tensor a second time
under ``attention_map.encoder.*`` (torchvision ResNet-34 names, docs/reference.md
1.2) plus the unused ``attention_map.encoder.fc`` (the paper-era model,
``ferattention_2019``, has its U-Net at the top level: ``encoder.*`` aliasing
``conv1.0/1``, ``conv2``-``conv5``); BN layers add
``num_batches_tracked``. Reading tolerates all three (duplicates must equal
the tensors they alias); writing for the reference adds them back.

The pure conversion functions (:func:`state_dict_to_variables`,
:func:`variables_to_state_dict`) take and return NumPy arrays (torch tensors
are accepted as input) and need no torch; reading and writing files does.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from feratt_jax.interop import require_torch
from feratt_jax.model_io import CheckpointError, abstract_variables, check_variables, plain_dict, summarise_problems
from feratt_jax.models import FERATT_VARIANTS, PAPER_ERA_MODELS, REFERENCE_ARCH, build_model
from feratt_jax.models.attention_unet import AttentionResNet
from feratt_jax.models.summary import DEFAULT_IMAGE_SIZE

_LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}

# attention_map.encoder.<torchvision name> -> attention_map.<alias in the U-Net>.
_ENCODER_ALIAS = {"conv1": "conv1.0", "bn1": "conv1.1", "layer1": "conv2", "layer2": "conv3", "layer3": "conv4", "layer4": "conv5"}
# The prefix is empty for the paper-era model, whose U-Net parts are top-level attributes.
_ENCODER_KEY = re.compile(r"^(?P<prefix>(?:(?:.*\.)?attention_map\.)?)encoder\.(?P<part>conv1|bn1|layer[1-4]|fc)\.(?P<rest>.+)$")
_ENCODER_SUBMODULES = ("conv1", "conv2", "conv3", "conv4", "conv5")

# torchvision ResNet-34's classifier, which the reference keeps (unused) as attention_map.encoder.fc.
_RESNET34_FC_SHAPES = {"weight": (1000, 512), "bias": (1000,)}


# --------------------------------------------------------------------------
# Key and layout mapping
# --------------------------------------------------------------------------


def _torch_key(collection: str, path: tuple[str, ...]) -> str:
    try:
        leaf = _LEAF_TO_TORCH[(collection, path[-1])]
    except KeyError:
        raise ValueError(f"no PyTorch equivalent for Flax variable {collection}/{'/'.join(path)}") from None
    return ".".join(path[:-1] + (leaf,))


def _to_torch_layout(array: np.ndarray, collection: str, leaf: str) -> np.ndarray:
    if collection == "params" and leaf == "kernel":
        if array.ndim == 4:
            return np.transpose(array, (3, 2, 0, 1))  # HWIO -> OIHW
        if array.ndim == 2:
            return array.T  # (in, out) -> (out, in)
        raise ValueError(f"kernel of rank {array.ndim} has no PyTorch layout rule")
    return array


def _from_torch_layout(array: np.ndarray, collection: str, leaf: str) -> np.ndarray:
    if collection == "params" and leaf == "kernel":
        if array.ndim == 4:
            return np.transpose(array, (2, 3, 1, 0))  # OIHW -> HWIO
        if array.ndim == 2:
            return array.T
    return array


def _torch_shape(shape: tuple[int, ...], collection: str, leaf: str) -> tuple[int, ...]:
    if collection == "params" and leaf == "kernel":
        if len(shape) == 4:
            h, w, i, o = shape
            return (o, i, h, w)
        if len(shape) == 2:
            return (shape[1], shape[0])
    return tuple(shape)


def _as_numpy(value: Any) -> np.ndarray:
    """torch.Tensor / array-like -> NumPy array (CPU, detached)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        # NumPy has no bfloat16; reference files are float32, but be lenient.
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def normalize_state_dict(state_dict: Mapping[str, Any], *, source: str = "state_dict") -> dict[str, np.ndarray]:
    """Bring a reference state_dict to the naming contract's key set.

    Strips DataParallel's ``module.`` prefix, drops ``num_batches_tracked``
    and ``attention_map.encoder.fc.*``, and folds ``attention_map.encoder.*``
    into the aliased ``attention_map.conv1.0/1``, ``conv2``-``conv5`` keys
    (for the paper-era model: top-level ``encoder.*`` into ``conv1.0/1``, ...).

    Args:
      state_dict: key -> tensor/array.
      source: name used in error messages.

    Returns:
      key -> NumPy array.

    Raises:
      CheckpointError: a duplicated encoder tensor differs from the tensor it aliases.
    """
    items = {str(k): v for k, v in state_dict.items()}
    if items and all(k.startswith("module.") for k in items):
        items = {k[len("module.") :]: v for k, v in items.items()}
    out: dict[str, np.ndarray] = {}
    aliases: dict[str, tuple[str, np.ndarray]] = {}
    for key, value in items.items():
        if key.endswith("num_batches_tracked"):
            continue
        match = _ENCODER_KEY.match(key)
        if match:
            if match["part"] == "fc":
                continue  # the dead torchvision classifier
            canonical = f"{match['prefix']}{_ENCODER_ALIAS[match['part']]}.{match['rest']}"
            aliases[canonical] = (key, _as_numpy(value))
            continue
        out[key] = _as_numpy(value)
    problems = []
    for canonical, (alias_key, value) in aliases.items():
        if canonical not in out:
            out[canonical] = value  # only the encoder copy was stored
        elif out[canonical].shape != value.shape or not np.array_equal(out[canonical], value):
            problems.append(
                f"{alias_key!r} {value.shape} differs from its alias {canonical!r} {out[canonical].shape}"
            )
    if problems:
        raise CheckpointError(summarise_problems(f"{source}: inconsistent duplicated encoder tensors", problems))
    return out


def state_dict_to_variables(
    state_dict: Mapping[str, Any], template: Mapping[str, Any], *, source: str = "state_dict"
) -> dict[str, Any]:
    """Convert a reference state_dict to Flax variables shaped like ``template``.

    Args:
      state_dict: key -> torch tensor or array, in the reference's naming
        (with or without ``module.``, encoder duplicates, ``num_batches_tracked``).
      template: the model's variables or their shapes, e.g.
        :func:`feratt_jax.model_io.abstract_variables` of the module.
      source: name used in error messages (e.g. the file).

    Returns:
      ``{"params": ..., "batch_stats": ...}`` with NumPy leaves in the
      template's dtypes (collections as in the template).

    Raises:
      CheckpointError: missing keys, unexpected keys or shape mismatches, all
        listed with the key and both shapes (PyTorch layout).
    """
    given = normalize_state_dict(state_dict, source=source)
    flat_template = flatten_dict(plain_dict(template))
    expected: dict[str, tuple[tuple[str, ...], tuple[int, ...], Any]] = {}
    for full_path, leaf in flat_template.items():
        collection, path = full_path[0], full_path[1:]
        expected[_torch_key(collection, path)] = (full_path, _torch_shape(tuple(leaf.shape), collection, path[-1]), leaf.dtype)

    problems = [f"missing key {k!r} (model expects shape {shape})" for k, (_, shape, _) in expected.items() if k not in given]
    problems += [f"unexpected key {k!r} (shape {tuple(v.shape)})" for k, v in given.items() if k not in expected]
    problems += [
        f"shape mismatch for {k!r}: checkpoint has {tuple(given[k].shape)}, model expects {shape}"
        for k, (_, shape, _) in expected.items()
        if k in given and tuple(given[k].shape) != shape
    ]
    if problems:
        raise CheckpointError(summarise_problems(f"{source} does not match the model", problems))

    flat: dict[tuple[str, ...], np.ndarray] = {}
    for key, (full_path, _, dtype) in expected.items():
        value = _from_torch_layout(given[key], full_path[0], full_path[-1])
        # Always copy: Tensor.numpy() shares memory with the torch module, which would keep
        # mutating these arrays (e.g. BN running stats in a later train-mode forward), and
        # JAX may read host arrays without copying them.
        flat[full_path] = np.array(value, dtype=dtype, order="C", copy=True)
    return unflatten_dict(flat)


def variables_to_state_dict(
    variables: Mapping[str, Any],
    *,
    include_encoder_alias: bool = False,
    num_batches_tracked: int | None = 0,
) -> "OrderedDict[str, np.ndarray]":
    """Convert Flax variables to a reference-named state_dict of NumPy arrays.

    Args:
      variables: ``{"params": ..., "batch_stats": ...}``.
      include_encoder_alias: also emit ``attention_map.encoder.*`` (the
        torchvision-named duplicates of the encoder) and a zero
        ``attention_map.encoder.fc`` (1000x512), as the reference's modules
        have them. Ignored for models without an attention module.
      num_batches_tracked: value of each BN layer's ``num_batches_tracked``
        (int64 scalar); None leaves those keys out.

    Returns:
      Ordered key -> array (float32 weights keep their dtype).
    """
    flat = flatten_dict(plain_dict(variables))
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    bn_prefixes: list[str] = []
    for full_path, leaf in flat.items():
        collection, path = full_path[0], full_path[1:]
        key = _torch_key(collection, path)
        out[key] = np.array(_to_torch_layout(np.asarray(leaf), collection, path[-1]), order="C", copy=True)
        if collection == "batch_stats" and path[-1] == "var":
            bn_prefixes.append(".".join(path[:-1]))
    if num_batches_tracked is not None:
        for prefix in bn_prefixes:
            out[f"{prefix}.num_batches_tracked"] = np.asarray(num_batches_tracked, dtype=np.int64)
    if include_encoder_alias:
        out = _add_encoder_alias(out)
    return out


def _add_encoder_alias(sd: "OrderedDict[str, np.ndarray]") -> "OrderedDict[str, np.ndarray]":
    reverse = {alias: part for part, alias in _ENCODER_ALIAS.items()}
    stem = "conv1.0.weight"  # the encoder's first conv, under the U-Net's alias
    prefixes = sorted({k[: -len(stem)] for k in sd if k.endswith(stem) and (k == stem or k.endswith("attention_map." + stem))})
    if not prefixes:
        return sd
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for prefix in prefixes:
        # The reference registers the encoder first, so its keys come first.
        for key, value in sd.items():
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix) :]
            for alias, part in reverse.items():
                if rest.startswith(alias + "."):
                    out[f"{prefix}encoder.{part}.{rest[len(alias) + 1 :]}"] = value
                    break
        dtype = sd[f"{prefix}conv1.0.weight"].dtype
        for name, shape in _RESNET34_FC_SHAPES.items():
            out[f"{prefix}encoder.fc.{name}"] = np.zeros(shape, dtype)
    out.update(sd)
    return out


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def _numpy_safe_globals() -> list[Any]:
    """NumPy scalar/dtype types that trainer checkpoints commonly pickle (e.g. ``prec``)."""
    import numpy.dtypes as npd

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    types = [getattr(npd, n) for n in dir(npd) if n.endswith("DType")]
    return [scalar, np.dtype, *types]


def _holds_pickle(path: Path) -> bool:
    """A zip archive (torch.save's format) or a pickle stream (protocol >= 2, the legacy format)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return zipfile.is_zipfile(path) or head[:1] == b"\x80"


def read_torch_checkpoint(path: str | os.PathLike[str], *, weights_only: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a reference checkpoint file.

    Args:
      path: the trainer's ``.pth.tar`` (a dict with ``state_dict``) or a bare
        ``torch.save(model.state_dict())`` file.
      weights_only: use ``torch.load(weights_only=True)``, which refuses
        arbitrary pickled objects. Set False only for files you trust.

    Returns:
      ``(state_dict, metadata)``: the tensors, and the other top-level entries
      of a trainer dict (``arch``, ``num_classes``, ...; without ``optimizer``).

    Raises:
      ImportError: torch is not installed (names the extra).
      FileNotFoundError: no such file.
      CheckpointError: unreadable/corrupt file, or no state_dict inside (names the file).
    """
    torch = require_torch()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PyTorch checkpoint {path} does not exist")
    safe = getattr(torch.serialization, "safe_globals", None)
    ctx = safe(_numpy_safe_globals()) if (safe is not None and weights_only) else contextlib.nullcontext()
    try:
        with ctx:
            obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, KeyError, EOFError, ... for damaged files
        # Safe loading names the pickled class it refused ("Unsupported global");
        # for bytes that are no pickle at all it fails too, and the advice to
        # trust the file would only mislead.
        if weights_only and _holds_pickle(path) and "Unsupported global" in str(err):
            raise CheckpointError(
                f"{path} holds Python objects that safe (weights_only) loading refuses. If you trust the file, "
                f"load it with weights_only=False (CLI: --trust-pickle). Details: {err}"
            ) from err
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (or corrupt): {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}") from err

    if hasattr(obj, "state_dict") and callable(obj.state_dict):  # a pickled nn.Module (weights_only=False)
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict or a checkpoint dict")
    if "state_dict" in obj:
        state_dict = obj["state_dict"]
        metadata = {k: v for k, v in obj.items() if k not in ("state_dict", "optimizer")}
    else:
        state_dict, metadata = obj, {}
    if not isinstance(state_dict, Mapping) or not all(hasattr(v, "shape") for v in state_dict.values()):
        raise CheckpointError(f"{path} has no state_dict of tensors")
    return dict(state_dict), metadata


def load_reference_checkpoint(
    path: str | os.PathLike[str],
    model_name: str,
    *,
    num_classes: int,
    dim: int = 32,
    weights_only: bool = True,
    **model_options: Any,
) -> dict[str, Any]:
    """Load a reference checkpoint into Flax variables for ``build_model(model_name, ...)``.

    Args:
      path: the reference trainer's ``.pth.tar`` or a bare state_dict file.
      model_name: e.g. ``"ferattention"`` (see :data:`feratt_jax.models.MODEL_NAMES`).
      num_classes: C.
      dim: embedding size (GMM variants).
      weights_only: safe unpickling (see :func:`read_torch_checkpoint`).
      **model_options: other ``build_model`` options (``backbone``, ...).

    Returns:
      ``{"params": ..., "batch_stats": ...}`` with NumPy leaves.

    Raises:
      ImportError: torch missing. FileNotFoundError: no file.
      CheckpointError: corrupt file, or keys/shapes not matching the model
        (every problem named with the key and both shapes).
    """
    state_dict, _ = read_torch_checkpoint(path, weights_only=weights_only)
    module = build_model(model_name, num_classes=num_classes, dim=dim, **model_options)
    return state_dict_to_variables(state_dict, abstract_variables(module), source=str(path))


def _encoder_template() -> dict[str, Any]:
    # Any output width will do: the encoder does not depend on it.
    template = abstract_variables(AttentionResNet(1))
    return {col: {name: tree[name] for name in _ENCODER_SUBMODULES if name in tree} for col, tree in template.items()}


def torchvision_resnet34_to_encoder(state_dict: Mapping[str, Any], *, source: str = "state_dict") -> dict[str, Any]:
    """torchvision ResNet-34 state_dict -> variables of the attention encoder (``conv1``-``conv5``).

    Args:
      state_dict: torchvision names (``conv1``, ``bn1``, ``layer1``-``layer4``; ``fc`` is ignored).
      source: name used in error messages.

    Returns:
      ``{"params": {"conv1": ..., ..., "conv5": ...}, "batch_stats": {...}}``,
      the subtrees to put under ``attention_map`` (see :func:`insert_attention_encoder`).

    Raises:
      CheckpointError: missing/unexpected keys or shape mismatches (named).
    """
    items = {str(k): v for k, v in state_dict.items()}
    if items and all(k.startswith("module.") for k in items):
        items = {k[len("module.") :]: v for k, v in items.items()}
    renamed = {}
    for key, value in items.items():
        part, _, rest = key.partition(".")
        if part == "fc" or key.endswith("num_batches_tracked"):
            continue
        renamed[f"{_ENCODER_ALIAS[part]}.{rest}" if part in _ENCODER_ALIAS else key] = value
    return state_dict_to_variables(renamed, _encoder_template(), source=source)


def load_torchvision_resnet34(path: str | os.PathLike[str], *, weights_only: bool = True) -> dict[str, Any]:
    """Read torchvision's ResNet-34 weights file (e.g. ``resnet34-b627a593.pth``) for the attention encoder.

    Args:
      path: a ``torch.save``'d torchvision ResNet-34 state_dict.
      weights_only: safe unpickling.

    Returns:
      ``{"params": {"conv1".."conv5"}, "batch_stats": {...}}``; merge it into a
      FERAtt model's variables with :func:`insert_attention_encoder`, as the
      reference starts from ImageNet weights.

    Raises:
      ImportError, FileNotFoundError, CheckpointError: as :func:`load_reference_checkpoint`.
    """
    state_dict, _ = read_torch_checkpoint(path, weights_only=weights_only)
    return torchvision_resnet34_to_encoder(state_dict, source=str(path))


def insert_attention_encoder(variables: Mapping[str, Any], encoder: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``variables`` with the attention encoder ``conv1..conv5`` replaced by ``encoder``.

    The encoder sits under ``attention_map`` in HEAD's FERAtt variants and at
    the top level in the paper-era model (``ferattention_2019``).

    Args:
      variables: a FERAtt model's ``{"params", "batch_stats"}``.
      encoder: from :func:`load_torchvision_resnet34`.

    Returns:
      A new variables dict (other leaves shared, not copied).

    Raises:
      CheckpointError: the model has no attention module or a shape differs.
    """
    out = {col: dict(tree) for col, tree in plain_dict(variables).items()}
    for col, subtrees in plain_dict(encoder).items():
        tree = out.get(col, {})
        if "conv1" in tree.get("attention_map", {}):
            parent, where = dict(tree["attention_map"]), f"{col}/attention_map"
        elif "conv1" in tree and "conv5" in tree:  # the paper-era model's top-level U-Net
            parent, where = tree, col
        else:
            raise CheckpointError("these variables have no attention_map module to receive the encoder")
        for name, subtree in subtrees.items():
            old = flatten_dict(parent[name])
            new = flatten_dict(subtree)
            if {k: np.shape(v) for k, v in old.items()} != {k: np.shape(v) for k, v in new.items()}:
                raise CheckpointError(f"encoder subtree {where}/{name} does not match the model's")
            parent[name] = subtree
        if parent is not tree:
            tree["attention_map"] = parent
    return out


def export_reference_checkpoint(
    variables: Mapping[str, Any],
    model_name: str,
    path: str | os.PathLike[str],
    *,
    num_classes: int,
    dim: int = 32,
    include_encoder_alias: bool = True,
    epoch: int = 0,
    prec: float = 0.0,
    imsize: int | None = None,
    legacy_format: bool = True,
    **model_options: Any,
) -> Path:
    """Write Flax variables as a reference-trainer ``.pth.tar`` that the reference's loader accepts.

    The file is a dict with the keys the reference's ``save()`` writes
    (``epoch``, ``arch``, ``imsize``, ``num_output_channels`` (= dim),
    ``num_input_channels`` (3), ``num_classes``, ``state_dict``, ``prec``,
    ``optimizer`` (None)), plus ``feratt_jax_model_options`` recording options
    the reference cannot (e.g. the backbone). The state_dict has the
    reference module's exact key set when ``include_encoder_alias`` is True
    (so ``load_state_dict(strict=True)`` works): the duplicated
    ``attention_map.encoder.*`` keys, a zero ``encoder.fc`` and
    ``num_batches_tracked``.

    Args:
      variables: ``{"params", "batch_stats"}`` of ``build_model(model_name, ...)``.
      model_name: the arch name.
      path: output file; written atomically (temp file + rename).
      num_classes: C. dim: embedding size.
      include_encoder_alias: see above (FERAtt models only).
      epoch, prec, imsize: metadata fields of the reference's checkpoint
        (imsize None: 128 for ferattention_2019, else 64). ``arch`` is the
        reference's name for the model (``atentionresnet34`` for
        ferattention_2019, which the paper-era loader looks up).
      legacy_format: use PyTorch's pre-1.6 (non-zip) serialisation, readable
        by the PyTorch 1.5 the reference's Docker image installs as well as
        by current releases.
      **model_options: the ``build_model`` options; used to check the variables.

    Returns:
      The written path.

    Raises:
      ImportError: torch missing. CheckpointError: variables do not fit the model.
    """
    torch = require_torch()
    module = build_model(model_name, num_classes=num_classes, dim=dim, **model_options)
    check_variables(variables, abstract_variables(module), source="variables")
    has_encoder = model_name in FERATT_VARIANTS or model_name in PAPER_ERA_MODELS
    sd = variables_to_state_dict(variables, include_encoder_alias=include_encoder_alias and has_encoder)
    if imsize is None:
        imsize = DEFAULT_IMAGE_SIZE[model_name] if model_name in PAPER_ERA_MODELS else 64
    state_dict = OrderedDict((k, torch.from_numpy(np.array(v, copy=True))) for k, v in sd.items())
    checkpoint = {
        "epoch": int(epoch),
        "arch": REFERENCE_ARCH.get(model_name, model_name),
        "imsize": int(imsize),
        "num_output_channels": int(dim),
        "num_input_channels": 3,
        "num_classes": int(num_classes),
        "state_dict": state_dict,
        "prec": float(prec),
        "optimizer": None,
        "feratt_jax_model_options": dict(model_options),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f, _use_new_zipfile_serialization=not legacy_format)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


__all__ = [
    "CheckpointError",
    "export_reference_checkpoint",
    "insert_attention_encoder",
    "load_reference_checkpoint",
    "load_torchvision_resnet34",
    "normalize_state_dict",
    "read_torch_checkpoint",
    "state_dict_to_variables",
    "torchvision_resnet34_to_encoder",
    "variables_to_state_dict",
]
