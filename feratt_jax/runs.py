"""A trained run, from a ``feratt train`` workdir or a model export, ready for inference; and atomic JSON.

:class:`LoadedRun` gives a config, the Flax module, its state and a jitted
eval step; :func:`load_any` the module, variables and a spec for exporting.
Everything above the trainer (``feratt eval``, ``predict``, ``represent``,
``convert``) and the trainer's ``init_from`` start here.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from feratt_jax import EXPRESSION_NAMES, configs, factory, model_io, sharding
from feratt_jax.checkpointing import Checkpointer
from feratt_jax.step import TrainState, make_eval_step, predict_dataset


def write_json(path: pathlib.Path, payload: Any) -> None:
    """Write JSON atomically: a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    except OSError as err:  # name the file: a full disk's OSError carries no path
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, f"{err.strerror} writing {path}", str(path)) from err
    tmp.replace(path)


def load_run_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {workdir} a feratt training workdir?")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


class LoadedRun:
    """A trained model ready for inference: config, module, state, eval step.

    ``source`` is a ``feratt train`` workdir (its best checkpoint, or the
    latest with ``which="latest"``) or a model export written by
    ``feratt convert`` / :func:`feratt_jax.model_io.save_model`; for an
    export, the data settings are the defaults of the model's base config.
    """

    def __init__(self, source: str | pathlib.Path, which: str = "best", overrides: Sequence[str] = ()):
        self.workdir = pathlib.Path(source)
        self.mesh = sharding.make_mesh()
        if (self.workdir / model_io.SPEC_FILENAME).is_file():
            self._load_export()
        else:
            self._load_workdir(which)
        # e.g. --config.data.test_size=256 for an export, whose data settings
        # are otherwise its base config's defaults.
        configs.apply_overrides(self.config, overrides)
        self.image_size = int(self.config.data.image_size)
        self.eval_step = jax.jit(make_eval_step(self.model, factory.model_input_fn(self.config)))
        self.class_names = list(EXPRESSION_NAMES[: int(self.config.model.num_classes)])

    def _load_workdir(self, which: str) -> None:
        self.config = load_run_config(self.workdir)
        self.model, _, _, init_state = factory.build_training(self.config, int(self.config.data.image_size))
        abstract, _ = factory.abstract_train_state(init_state, self.mesh)
        checkpointer = Checkpointer(self.workdir, keep=int(self.config.train.keep_checkpoints))
        restored = checkpointer.restore_best(abstract) if which == "best" else None
        if restored is None:
            restored = checkpointer.restore_latest(abstract)
        checkpointer.close()
        if restored is None:
            raise FileNotFoundError(f"no readable checkpoint in {self.workdir / 'checkpoints'} or {self.workdir / 'best'}")
        self.state = restored[0]
        self.step = int(self.state.step)

    def _load_export(self) -> None:
        self.model, variables, spec = model_io.load_model(self.workdir)
        self.config = factory.config_from_spec(spec)
        self.state = TrainState(
            step=jnp.asarray(int(spec.get("extra", {}).get("step", 0))),
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            opt_state=None,
        )
        self.step = int(self.state.step)

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.state.params, "batch_stats": self.state.batch_stats}

    def predict(self, images_BHWC: np.ndarray, keep: tuple[str, ...] = ("logits", "embedding")) -> dict[str, np.ndarray]:
        batch = int(self.config.train.eval_batch_size)
        return predict_dataset(self.eval_step, self.state, {"image": images_BHWC}, batch, self.mesh, keep=keep)


def load_any(source: str | pathlib.Path) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Load a model export (``model.json``) or a training workdir (``config.json``, best checkpoint).

    Args:
      source: an export directory or a ``feratt train`` workdir.

    Returns:
      ``(module, variables, spec)`` as :func:`feratt_jax.model_io.load_model`; for a workdir the
      spec is synthesised from the run (``extra`` holds ``step`` and ``workdir``).

    Raises:
      FileNotFoundError: neither kind of directory.
      CheckpointError: as :func:`feratt_jax.model_io.load_model`.
    """
    path = pathlib.Path(source)
    if (path / model_io.SPEC_FILENAME).is_file():
        return model_io.load_model(path)
    if (path / "config.json").is_file():
        run = LoadedRun(path)
        spec = {"format": model_io.FORMAT_NAME, "format_version": model_io.FORMAT_VERSION, **factory.spec_fields(run.config)}
        spec["model_options"] = model_io.module_options(run.model)
        spec["extra"].update(step=run.step, workdir=str(path))
        return run.model, run.variables, spec
    raise FileNotFoundError(f"{source} is neither a model export (no {model_io.SPEC_FILENAME}) nor a training workdir (no config.json)")
