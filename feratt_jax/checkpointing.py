"""Checkpoints: orbax CheckpointManager (async), the last N and the best.

Each checkpoint holds the train state (params, batch_stats, optimizer state,
step), the input iterator's state and a JSON "meta" item with the resolved
config and the best validation accuracy so far. Restoring walks back from
the newest step: a corrupt or partial newest checkpoint is reported and the
previous one is used, so a crash during a save never costs the run.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """The run's two CheckpointManagers: ``checkpoints/`` (last N) and ``best/`` (1)."""

    def __init__(self, workdir: str | pathlib.Path, *, keep: int = 3, async_save: bool = True):
        workdir = pathlib.Path(workdir).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max(keep, 1), create=True, enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(workdir / "checkpoints", options=options)
        best_options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=async_save)
        self.best = ocp.CheckpointManager(workdir / "best", options=best_options)

    @staticmethod
    def _args(state: Any, data_state: dict, meta: dict) -> ocp.args.Composite:
        return ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta),
        )

    def save(self, step: int, state: Any, data_state: dict, meta: dict, *, force: bool = False) -> None:
        """Save asynchronously; the arrays are copied before this returns."""
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=self._args(state, data_state, meta), force=force)

    def save_best(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
        for old in self.best.all_steps():
            if old == step:
                return
        self.best.save(step, args=self._args(state, data_state, meta), force=True)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict, dict] | None:
        """Restore the newest readable checkpoint, or None if there is none.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` carrying the
        target shardings, so arrays come back already placed.
        """
        return _restore_newest(self.manager, abstract_state)

    def restore_best(self, abstract_state: Any) -> tuple[Any, dict, dict] | None:
        return _restore_newest(self.best, abstract_state)

    def wait(self) -> None:
        self.manager.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
        self.best.close()


def _restore_newest(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[Any, dict, dict] | None:
    manager.reload()
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except Exception as err:  # noqa: BLE001 - any unreadable checkpoint: try the previous one
            message = f"checkpoint at step {step} in {manager.directory} is unreadable ({type(err).__name__}: {err}); falling back to the previous one"
            log.warning(message)
            print(f"warning: {message}", flush=True)
            continue
        return restored["state"], dict(restored["data"] or {}), dict(restored["meta"] or {})
    return None


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
