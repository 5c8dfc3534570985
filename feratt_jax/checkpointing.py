"""Checkpoints: orbax CheckpointManager (async), the last N and the best.

Each checkpoint holds the train state (params, batch_stats, optimizer state,
step), the input iterator's state and a JSON "meta" item with the resolved
config and the best validation accuracy so far. Restoring walks back from
the newest step: a corrupt or partial newest checkpoint is reported and the
previous one is used, so a crash during a save never costs the run.
"""

from __future__ import annotations

import errno
import logging
import pathlib
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class _OutOfSpaceReportedByTrainer(logging.Filter):
    """Drops orbax's tracebacks for a full disk: the trainer reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (is_out_of_space(exc) or "No space left on device" in record.getMessage() or "Save Finalize thread" in record.getMessage() and is_out_of_space(exc))


_ORBAX_FILTER = _OutOfSpaceReportedByTrainer()


class Checkpointer:
    """The run's two CheckpointManagers: ``checkpoints/`` (last N) and ``best/`` (1)."""

    def __init__(self, workdir: str | pathlib.Path, *, keep: int = 3, async_save: bool = True):
        workdir = pathlib.Path(workdir).absolute()
        logging.getLogger("absl").addFilter(_ORBAX_FILTER)  # adding the same filter twice is a no-op
        options = ocp.CheckpointManagerOptions(max_to_keep=max(keep, 1), create=True, enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(workdir / "checkpoints", options=options)
        best_options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=async_save)
        self.best = ocp.CheckpointManager(workdir / "best", options=best_options)

    @staticmethod
    def has_checkpoints(workdir: str | pathlib.Path) -> bool:
        """Whether ``workdir`` holds a committed checkpoint (cheap: no manager is built)."""
        directory = pathlib.Path(workdir) / "checkpoints"
        return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())

    @staticmethod
    def _args(state: Any, data_state: dict, meta: dict) -> ocp.args.Composite:
        return ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta),
        )

    def save(self, step: int, state: Any, data_state: dict, meta: dict, *, force: bool = False) -> None:
        """Save asynchronously; the arrays are copied before this returns.

        Raises:
          OSError: ENOSPC naming the checkpoint folder, when this or the
            previous (asynchronous) save ran out of disk space.
        """
        if step in self.manager.all_steps():
            return
        _out_of_space_as_oserror(lambda: self.manager.save(step, args=self._args(state, data_state, meta), force=force), self.manager.directory)

    def save_best(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
        for old in self.best.all_steps():
            if old == step:
                return
        _out_of_space_as_oserror(lambda: self.best.save(step, args=self._args(state, data_state, meta), force=True), self.best.directory)

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
        _out_of_space_as_oserror(self.manager.wait_until_finished, self.manager.directory)
        _out_of_space_as_oserror(self.best.wait_until_finished, self.best.directory)

    def close(self) -> None:
        _out_of_space_as_oserror(self.manager.close, self.manager.directory)
        _out_of_space_as_oserror(self.best.close, self.best.directory)

    def abandon(self) -> None:
        """Let writes in flight end and close, ignoring their errors (after a failure already reported)."""
        for manager in (self.manager, self.best):
            for end in (manager.wait_until_finished, manager.close):
                try:
                    end()
                except Exception:  # noqa: BLE001 - the failure that brought us here is what gets reported
                    pass

    def committed_steps(self) -> list[int]:
        """Steps whose checkpoint is committed on disk (not a ``*.orbax-checkpoint-tmp*`` folder)."""
        directory = pathlib.Path(self.manager.directory)
        return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def is_out_of_space(err: BaseException | None) -> bool:
    """Whether ``err`` (or what caused it) is a full disk: an ENOSPC OSError, or tensorstore's text for one."""
    while err is not None:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(err) or "os_error_code='28'" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _out_of_space_as_oserror(fn: Callable[[], Any], directory: Any) -> Any:
    """Call ``fn``; a full disk, however orbax reports it, becomes one ENOSPC OSError naming ``directory``."""
    try:
        return fn()
    except Exception as err:
        if is_out_of_space(err):
            raise OSError(errno.ENOSPC, f"no space left on device writing a checkpoint in {directory}", str(directory)) from err
        raise


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
