"""``feratt export``: a trained model as a serialized inference function for serving.

StableHLO through ``jax.export``: the function ``images (B, S, S, 3) float32
in [0, 1] -> {"logits", "probabilities"[, "attention"]}`` with the weights
baked in and a symbolic batch dimension ``B``, so one file serves any batch
size. The output folder holds:

* ``feratt.stablehlo``: the serialized :class:`jax.export.Exported`;
* ``export.json``: input shape, class names, outputs, source step;
* ``load_feratt.py``: a short loader that needs only jax, numpy and
  flatbuffers (which ``jax.export`` serialization needs on both sides; extra
  ``[export]``).

ONNX (jax2onnx) is not offered; see :data:`ONNX_UNAVAILABLE` for why.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

# jax is imported inside the functions: the command line lists FORMATS without starting jax.

FORMATS = ("stablehlo", "onnx")
FUNCTION_FILE = "feratt.stablehlo"
SPEC_FILE = "export.json"
LOADER_FILE = "load_feratt.py"
ONNX_UNAVAILABLE = (
    "--format onnx is not available: jax2onnx 0.13-0.17 require orbax-checkpoint<0.11.37 (feratt_jax needs >=0.12.8), "
    "and 0.12.5 fails on flax.linen max_pool (its patched max_pool takes no window argument); use --format stablehlo"
)
NEEDS_FLATBUFFERS = "feratt export needs flatbuffers for jax.export serialization: pip install 'feratt-jax[export]' (or flatbuffers)"

# Written into the export folder; kept short on purpose (jax, numpy, flatbuffers only).
LOADER = '''"""Runs the exported FERAtt model; needs only jax, numpy, flatbuffers.  python load_feratt.py [IMAGES.npy]"""
import json, pathlib, sys
import jax, numpy as np

HERE = pathlib.Path(__file__).resolve().parent
SPEC = json.loads((HERE / "export.json").read_text())
FN = jax.export.deserialize((HERE / "feratt.stablehlo").read_bytes())

def predict(images):
    """images: (B, S, S, 3) float32 in [0, 1] -> dict of logits, probabilities (and attention)."""
    return {k: np.asarray(v) for k, v in FN.call(np.asarray(images, np.float32)).items()}

if __name__ == "__main__":
    x = np.load(sys.argv[1]) if len(sys.argv) > 1 else np.zeros([2] + SPEC["input_shape"][1:], np.float32)
    probs = predict(x)["probabilities"]
    print([SPEC["class_names"][i] for i in probs.argmax(-1)])
'''


def inference_function(run: Any):
    """``images -> {"logits", "probabilities"[, "attention"]}`` of a loaded run, weights closed over.

    Attention (FERAtt models only) is the sigmoid of the attention logits,
    as the predict overlays show it.
    """
    import jax

    params, batch_stats = run.state.params, run.state.batch_stats

    def infer(images_BHWC):
        outputs = run.eval_step(params, batch_stats, images_BHWC)
        result = {"logits": outputs["logits"], "probabilities": jax.nn.softmax(outputs["logits"], axis=-1)}
        if "attention" in outputs:
            result["attention"] = jax.nn.sigmoid(outputs["attention"])
        return result

    return infer


def export_stablehlo(run: Any, out_dir: str | pathlib.Path, *, platforms: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Serializes ``run``'s inference function with a polymorphic batch into ``out_dir``.

    Args:
      run: a :class:`feratt_jax.runs.LoadedRun`.
      out_dir: created if needed; the three files of the module docstring.
      platforms: lowering platforms (e.g. ``("cpu", "cuda")``); None: this machine's.

    Returns:
      The ``export.json`` contents.
    """
    import jax
    import jax.numpy as jnp

    out = pathlib.Path(out_dir)
    size = run.image_size
    (batch,) = jax.export.symbolic_shape("B")
    spec_in = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    exported = jax.export.export(jax.jit(inference_function(run)), platforms=platforms)(spec_in)
    out.mkdir(parents=True, exist_ok=True)
    (out / FUNCTION_FILE).write_bytes(exported.serialize())
    spec = {
        "format": "stablehlo",
        "input_shape": ["B", size, size, 3],
        "input": "float32 images in [0, 1], RGB (grey repeated on the three channels)",
        "outputs": {k: [str(d) for d in v.shape] for k, v in zip(_output_names(exported), exported.out_avals)},
        "class_names": list(run.class_names),
        "platforms": list(exported.platforms),
        "model": str(run.config.model.name),
        "step": int(run.step),
    }
    (out / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    (out / LOADER_FILE).write_text(LOADER)
    return spec


def _output_names(exported: Any) -> list[str]:
    """Output dict keys in the flattened order of ``out_avals``."""
    import jax

    placeholder = jax.tree.unflatten(exported.out_tree, list(range(len(exported.out_avals))))
    return [k for k, _ in sorted(placeholder.items(), key=lambda kv: kv[1])]


def export_model(workdir: str | pathlib.Path, out_dir: str | pathlib.Path, *, format: str = "stablehlo", platforms: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Loads the best checkpoint of ``workdir`` (or a model export) and exports it.

    Raises:
      ValueError: an unknown or unavailable format.
      FileNotFoundError: no config or no readable checkpoint in ``workdir`` (named).
    """
    if format not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {format!r}")
    if format == "onnx":
        raise ValueError(ONNX_UNAVAILABLE)
    _check_source(pathlib.Path(workdir))
    import importlib.util

    if importlib.util.find_spec("flatbuffers") is None:
        raise ImportError(NEEDS_FLATBUFFERS)
    from feratt_jax.runs import LoadedRun

    return export_stablehlo(LoadedRun(workdir), out_dir, platforms=platforms)


def _check_source(workdir: pathlib.Path) -> None:
    """Fails before any model is built when ``workdir`` cannot hold a model."""
    from feratt_jax import model_io

    if (workdir / model_io.SPEC_FILENAME).is_file():
        return
    if not (workdir / "config.json").is_file():
        raise FileNotFoundError(f"{workdir} is neither a feratt train workdir (no config.json) nor a model export")
    if not any(p.name.isdigit() for d in ("checkpoints", "best") if (workdir / d).is_dir() for p in (workdir / d).iterdir()):
        raise FileNotFoundError(f"{workdir} holds no checkpoint (checkpoints/ and best/ are empty): nothing to export")


def load_exported(out_dir: str | pathlib.Path):
    """``images -> outputs`` from an export folder (what ``load_feratt.py`` does; needs flatbuffers)."""
    import jax

    exported = jax.export.deserialize((pathlib.Path(out_dir) / FUNCTION_FILE).read_bytes())
    return lambda images: {k: np.asarray(v) for k, v in exported.call(np.asarray(images, np.float32)).items()}
