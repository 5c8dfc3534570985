"""What evaluations decide: early stopping and the reduce-on-plateau learning rate.

Both watch the validation accuracy at each evaluation (``train.eval_every``):

* :class:`EarlyStopping` counts evaluations without a new best accuracy (the
  same strict ``>`` that saves the best checkpoint) and asks the trainer to
  stop after ``train.early_stopping_patience`` of them. Its state is two
  numbers kept in the checkpoint's metadata, so a resumed run continues the
  count, and a resumed run that had already stopped does not train again.
* ``optimizer.schedule="plateau"`` multiplies the learning rate by
  ``optimizer.plateau_factor`` after ``optimizer.plateau_patience``
  evaluations without improvement, through optax's
  ``contrib.reduce_on_plateau``. That transformation wants the monitored value
  at every ``update``; the train step has no validation value, so the chain
  holds :func:`scale_by_plateau`, which applies the current scale and leaves
  the plateau state alone, and the trainer advances that state once per
  evaluation with :func:`plateau_update`. The state is part of ``opt_state``,
  hence of every checkpoint.

The value given to reduce-on-plateau is the validation *error* (1 - accuracy):
optax minimises, and its relative tolerance assumes a non-negative value.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from optax.contrib import ReduceLROnPlateauState, reduce_on_plateau

PLATEAU_SCHEDULE = "plateau"


def make_plateau(factor: float, patience: int) -> optax.GradientTransformationExtraArgs:
    """optax's reduce-on-plateau: the rate times ``factor`` after ``patience`` evaluations without improvement."""
    return reduce_on_plateau(factor=factor, patience=patience)


def scale_by_plateau(plateau: optax.GradientTransformationExtraArgs) -> optax.GradientTransformation:
    """Scales updates by the plateau state's ``scale``; the state changes only in :func:`plateau_update`."""

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: u * state.scale.astype(u.dtype), updates), state

    return optax.GradientTransformation(plateau.init, update_fn)


def _plateau_index(opt_state: Any) -> int | None:
    """Position of the plateau state in a chain's state tuple (it is the last link), or None."""
    if isinstance(opt_state, tuple) and opt_state and isinstance(opt_state[-1], ReduceLROnPlateauState):
        return len(opt_state) - 1
    return None


def lr_scale(opt_state: Any) -> jax.Array | float:
    """The plateau scale of the learning rate (1.0 without a plateau schedule)."""
    index = _plateau_index(opt_state)
    return 1.0 if index is None else opt_state[index].scale


def plateau_update(plateau: optax.GradientTransformationExtraArgs, opt_state: Any, val_accuracy: float) -> Any:
    """``opt_state`` with its plateau state advanced by one evaluation (unchanged without one).

    The new leaves keep the old leaves' shardings, so the jitted train step
    takes the state as before.
    """
    index = _plateau_index(opt_state)
    if index is None:
        return opt_state
    old = opt_state[index]
    _, new = plateau.update({}, old, value=jnp.asarray(1.0 - val_accuracy))
    new = jax.tree.map(lambda n, o: jax.device_put(jnp.asarray(n, o.dtype), o.sharding), new, old)
    return opt_state[:index] + (new,) + opt_state[index + 1 :]


@dataclasses.dataclass
class EarlyStopping:
    """Evaluations without a new best validation accuracy; stop after ``patience`` (0: never).

    Attributes:
      patience: evaluations without improvement that stop the run (0: off).
      best_step: step of the best evaluation so far (-1: none yet).
      evals_without_improvement: evaluations since then.
    """

    patience: int
    best_step: int = -1
    evals_without_improvement: int = 0

    def record(self, step: int, improved: bool) -> None:
        """Count one evaluation."""
        if improved:
            self.best_step = step
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.evals_without_improvement >= self.patience

    def reason(self, step: int, best_accuracy: float) -> str:
        """One line saying why the run stopped."""
        return (
            f"early stopping at step {step}: validation accuracy has not improved for "
            f"{self.evals_without_improvement} evaluations (train.early_stopping_patience={self.patience}); "
            f"keeping the best checkpoint, step {self.best_step} (accuracy {best_accuracy:.4f})"
        )

    def state_dict(self) -> dict[str, int]:
        """What the checkpoint's metadata keeps."""
        return {"best_step": self.best_step, "evals_without_improvement": self.evals_without_improvement}

    def load(self, meta: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` from a checkpoint's metadata (absent in older checkpoints: a fresh count)."""
        saved = meta.get("early_stopping", {})
        self.best_step = int(saved.get("best_step", -1))
        self.evals_without_improvement = int(saved.get("evals_without_improvement", 0))
