"""The one trainer: ``train_and_evaluate(config, workdir)``.

Every model (the four FERAtt variants and the baselines) trains through this
loop; what differs is the config (model name, loss variant, sizes). The step
itself is :mod:`feratt_jax.step`'s, built from the config by
:mod:`feratt_jax.factory`; this module holds the loop only: checkpoints and
resume, preemption, logging, periodic and final evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import pathlib
import signal
import threading
import time
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from feratt_jax import EXPRESSION_NAMES, factory, figures, plots, precise_bn, runs, sharding, stopping, validation, workdir_lock
from feratt_jax.checkpointing import Checkpointer
from feratt_jax.data import pipeline, sampling
from feratt_jax.metric_writer import MetricWriter
from feratt_jax.step import TrainState, as_rgb, evaluate_split, predict_dataset

log = logging.getLogger(__name__)


# ==========================================================================
# Preemption: finish the step, save, exit cleanly
# ==========================================================================


class StopRequested:
    """Set by SIGTERM/SIGINT; the loop checks it between steps."""

    def __init__(self):
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {}

        def handler(signum, _frame):
            self.signal_name = signal.Signals(signum).name

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


# ==========================================================================
# The loop
# ==========================================================================


@contextlib.contextmanager
def _full_disk_stops_the_run(checkpointer: Checkpointer, current_step: Callable[[], int], progress: Any):
    """A full disk (ENOSPC from a checkpoint or metrics write) stops the run with one line naming the file."""
    try:
        yield
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        progress.close()
        checkpointer.abandon()
        committed = checkpointer.committed_steps()
        kept = f"the checkpoint at step {committed[-1]} is intact" if committed else "no checkpoint was committed yet"
        raise OSError(
            errno.ENOSPC,
            f"{err.strerror}: training stopped at step {current_step()}; {kept}. Free space and rerun the same command to resume",
            err.filename,
        ) from err


def _check_finite(metrics: Mapping[str, float], step: int, last_checkpoint: int | None) -> None:
    for name, value in metrics.items():
        if name.startswith("loss/") and not math.isfinite(value):
            raise FloatingPointError(
                f"loss term {name.removeprefix('loss/')!r} became {value} at step {step}; training stopped. "
                f"The last good checkpoint (step {last_checkpoint}) is intact."
            )


@dataclasses.dataclass
class _Timer:
    data_s: float = 0.0
    total_s: float = 0.0
    images: int = 0
    precise_bn_s: float = 0.0  # re-estimating BN statistics before evaluations


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Train ``config`` in ``workdir`` (resuming if it holds checkpoints), then evaluate.

    Returns the final summary (also written to ``workdir/eval/metrics.json``):
    validation and test metrics of the best checkpoint, and timings.
    """
    # Every check before any work, and before anything is written to the workdir.
    validation.validate(config, device_count=jax.device_count())
    workdir = pathlib.Path(workdir)
    if jax.process_index() != 0:  # process 0 holds the lock for the run
        return _train_and_evaluate(config, workdir)
    provenance = factory.data_config(config).provenance()
    provenance_path = workdir / validation.DATA_PROVENANCE_FILE
    with workdir_lock.exclusive_writer(workdir):
        resuming = Checkpointer.has_checkpoints(workdir)
        if resuming and (workdir / "config.json").is_file():
            stored = json.loads((workdir / "config.json").read_text())
            validation.check_resume(stored, config, workdir)
            if config.optimizer.schedule == "cosine" and stored.get("train", {}).get("num_steps") != config.train.num_steps:
                print(f"warning: train.num_steps changed on resume; the cosine schedule now decays over {config.train.num_steps} steps", flush=True)
        if resuming and provenance_path.is_file():
            try:
                stored_provenance = json.loads(provenance_path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{provenance_path} is not valid JSON ({err}); delete it to resume without the check, or use a new --workdir") from err
            validation.check_resume_data(stored_provenance, provenance, workdir)
        elif resuming:
            print(f"warning: {workdir} predates {provenance_path.name}; whether its images are drawn as before cannot be checked", flush=True)
        runs.write_json(workdir / "config.json", config.to_dict())
        if not resuming or provenance_path.is_file():
            runs.write_json(provenance_path, provenance)
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0

    # ---------------------------------------------------------------- mesh
    mesh = sharding.make_mesh()
    tc = config.train
    sharding.check_batch_size(tc.batch_size, mesh, "train.batch_size")
    sharding.check_batch_size(tc.eval_batch_size, mesh, "train.eval_batch_size")
    repl = sharding.replicated(mesh)

    # --------------------------------------------------------------- input
    data = factory.make_inputs(config, process_index=jax.process_index(), process_count=jax.process_count())
    train_iter = data.train

    # -------------------------------- model, optimizer and the jitted steps
    training = factory.setup_training(config, data, mesh)
    eval_step = training.eval_step

    # -------------------------------------------------- checkpoint/resume
    checkpointer = Checkpointer(workdir, keep=tc.keep_checkpoints)
    restored = checkpointer.restore_latest(training.abstract_state)
    best_val_accuracy = -1.0
    # --- issue 17: early stopping and the plateau schedule (feratt_jax.stopping)
    early = stopping.EarlyStopping(int(tc.get("early_stopping_patience", 0)))
    plateau = factory.make_plateau(config.optimizer)  # the optimizer's own link (None without the plateau schedule)
    init_state_s = None  # a resumed run builds no initial state
    if restored is not None:
        state, data_state, meta = restored
        train_iter.set_state(data_state)
        best_val_accuracy = float(meta.get("best_val_accuracy", -1.0))
        early.load(meta)
        print(f"resumed from {workdir / 'checkpoints'} at step {int(state.step)}", flush=True)
    else:
        t_init = time.perf_counter()
        state = jax.block_until_ready(jax.jit(training.init_state, out_shardings=training.state_sharding)())
        init_state_s = time.perf_counter() - t_init  # mostly XLA compiling the init program
        if tc.init_from:
            state = _initialise_from(state, tc.init_from, repl)
            print(f"initialised weights from {tc.init_from}", flush=True)

    recalibrate_bn = make_bn_recalibration(training.model, config, data, mesh)

    writer = MetricWriter(workdir)
    stop = StopRequested()
    start_step = int(state.step)
    timer = _Timer()
    compile_s = None
    last_saved = checkpointer.latest_step()
    history: list[dict[str, float]] = []
    latest_val: dict[int, dict[str, Any]] = {}  # the last evaluation's report, by step

    def meta() -> dict[str, Any]:
        return {"best_val_accuracy": best_val_accuracy, "config": config.to_dict(), "early_stopping": early.state_dict()}

    def run_eval(step: int) -> float:
        nonlocal best_val_accuracy, state
        report = evaluate_split(eval_step, state, data.val, tc.eval_batch_size, mesh, config.model.num_classes)
        latest_val.clear()
        latest_val[step] = report
        writer.scalars(step, {k: report[k] for k in ("accuracy", "macro_precision", "macro_recall", "reference_f1", "macro_f1")}, prefix="val/")
        _log_confusion_matrix(writer, report, config.model.num_classes, step)
        improved = report["accuracy"] > best_val_accuracy
        early.record(step, improved)
        if improved:
            best_val_accuracy = report["accuracy"]
            checkpointer.save_best(step, state, next_position, meta())
        if plateau is not None:
            state = state.replace(opt_state=stopping.plateau_update(plateau, state.opt_state, report["accuracy"]))
            writer.scalars(step, {"learning_rate_scale": float(stopping.lr_scale(state.opt_state))}, prefix="val/")
        return report["accuracy"]

    progress = _progress(start_step, tc.num_steps, enabled=is_main)
    step = start_step
    with _full_disk_stops_the_run(checkpointer, lambda: step, progress):
        with stop.installed():
            # Checkpoints record the input position of the batch the *next* step
            # consumes, taken before that batch is prefetched: the iterator's own
            # state is one batch ahead then, and a run resumed from it would skip
            # a batch.
            next_position = train_iter.get_state()
            host_batch = next(train_iter) if start_step < tc.num_steps else None
            while step < tc.num_steps and not early.should_stop:
                t0 = time.perf_counter()
                global_batch = sharding.host_to_global(host_batch, mesh)
                state, metrics = training.step_at(step)(state, global_batch)
                # Prepare the next host batch while the device computes this step.
                t_data = time.perf_counter()
                next_position = train_iter.get_state()
                host_batch = next(train_iter) if step + 1 < tc.num_steps else None
                data_s = time.perf_counter() - t_data
                metrics = jax.device_get(metrics)  # blocks on this step
                elapsed = time.perf_counter() - t0
                step += 1
                if compile_s is None:
                    compile_s = elapsed
                    writer.scalars(step, {"perf/first_step_s": compile_s})
                else:
                    timer.data_s += data_s
                    timer.total_s += elapsed
                    timer.images += tc.batch_size
                metrics = {k: float(v) for k, v in metrics.items()}
                _check_finite(metrics, step, last_saved)
                history.append(metrics)
                progress.update(1)

                if step % tc.log_every == 0 or step == tc.num_steps:
                    means = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
                    history.clear()
                    if timer.total_s > 0:
                        means["perf/images_per_s"] = timer.images / timer.total_s
                        means["perf/data_wait_fraction"] = timer.data_s / timer.total_s
                    writer.scalars(step, means, prefix="train/")
                    progress.set_postfix(loss=f"{means['loss/total']:.3f}", acc=f"{means['accuracy']:.2f}")
                if tc.image_log_every and step % tc.image_log_every == 0:
                    log_images(writer, eval_step, state, data.val, step, tc.eval_batch_size, mesh)
                if step % tc.eval_every == 0 or step == tc.num_steps:
                    if recalibrate_bn is not None:
                        # Training never reads the running averages, so replacing
                        # them changes what evaluation (and the checkpoint) sees only.
                        t_bn = time.perf_counter()
                        state = state.replace(batch_stats=jax.block_until_ready(recalibrate_bn(state)))
                        timer.precise_bn_s += time.perf_counter() - t_bn
                    run_eval(step)
                if step % tc.checkpoint_every == 0 or step == tc.num_steps or stop or early.should_stop:
                    checkpointer.save(step, state, next_position, meta(), force=True)
                    last_saved = step
                if stop:
                    break
                if early.should_stop:
                    writer.scalars(step, {"early_stopped": 1.0}, prefix="train/")
        progress.close()
        checkpointer.wait()

    if stop:
        print(f"received {stop.signal_name}: saved a checkpoint at step {step} in {workdir / 'checkpoints'}; exiting", flush=True)
        writer.close()
        checkpointer.close()
        return {"stopped_at_step": step, "signal": stop.signal_name}

    stopped_early = early.reason(step, best_val_accuracy) if early.should_stop else None
    if stopped_early:
        print(stopped_early, flush=True)

    # --------------------------------------------------- final evaluation
    best = checkpointer.restore_best(training.abstract_state)
    final_state = best[0] if best is not None else state
    # The best checkpoint is usually the state the last evaluation saw (the
    # checkpoint was saved from it): its validation report is reused.
    val_report = latest_val.get(int(final_state.step))
    if val_report is None:
        val_report = evaluate_split(eval_step, final_state, data.val, tc.eval_batch_size, mesh, config.model.num_classes)
    summary = {
        "step": step,
        "best_val_accuracy": best_val_accuracy,
        "val": dict(val_report),
        "test": evaluate_split(eval_step, final_state, data.test, tc.eval_batch_size, mesh, config.model.num_classes),
        "precise_bn_batches": int(tc.get("precise_bn_batches", 0)),
        "precise_bn_seconds": timer.precise_bn_s,
        "first_step_s": compile_s,
        "data_seconds": dict(data.info["seconds"]),  # face bank (drawn or read), backgrounds, eval sets
        "init_state_s": init_state_s,
        "train_images_per_s": timer.images / timer.total_s if timer.total_s else None,
        # What the figures were computed on: GPUs run float32 matmuls and convolutions
        # in TF32 unless the precision is raised (JAX_DEFAULT_MATMUL_PRECISION=highest).
        "device_kind": jax.devices()[0].device_kind,
        "default_matmul_precision": jax.config.jax_default_matmul_precision or "default",
    }
    summary["val"]["checkpoint_step"] = summary["test"]["checkpoint_step"] = int(final_state.step)
    if early.patience:
        summary["early_stopping"] = {**early.state_dict(), "patience": early.patience, "stopped": stopped_early}
    if tc.get("final_figures", False):
        summary["figures"] = _final_figures(eval_step, final_state, data.test, summary["test"], config, mesh, workdir / "eval", write=is_main)
    writer.scalars(step, {"accuracy": summary["test"]["accuracy"], "reference_f1": summary["test"]["reference_f1"]}, prefix="test/")
    if is_main:
        runs.write_json(workdir / "eval" / "metrics.json", summary)
    writer.close()
    checkpointer.close()
    return summary


def make_bn_recalibration(model: Any, config: ml_collections.ConfigDict, data: pipeline.Datasets, mesh: Any):
    """``recalibrate(state) -> batch_stats`` re-estimated over fixed training batches, or None.

    None when ``train.precise_bn_batches`` is 0. The batches come from the
    training subjects through :data:`feratt_jax.data.sampling.PRECISE_BN_STREAM` (none taken
    from the training stream) and are rendered as the train step renders
    them after any curriculum (``data.render_preset``), once: evaluation
    reads the statistics of the data the run is for.
    """
    num_batches = int(config.train.get("precise_bn_batches", 0))
    if num_batches < 0:
        raise ValueError(f"train.precise_bn_batches must be >= 0, got {num_batches}")
    if num_batches == 0:
        return None
    if data.train_batches is None:
        raise ValueError("train.precise_bn_batches needs the data's batch maker (Datasets.train_batches)")
    # Rendered once and kept on the device: every evaluation sees the same
    # composites, and none is copied or rendered again.
    render = factory.make_render(data)
    render_images = jax.jit(lambda batch: render(batch)["image"])
    images = [
        render_images(sharding.host_to_global(data.train_batches(i, stream=sampling.PRECISE_BN_STREAM), mesh)) for i in range(num_batches)
    ]
    statistics = precise_bn.make_batch_statistics_fn(model, factory.model_input_fn(config))
    repl = sharding.replicated(mesh)

    def recalibrate(state: TrainState) -> Any:
        stats = precise_bn.average_batch_stats(statistics, state.params, state.batch_stats, images)
        return jax.device_put(stats, jax.tree.map(lambda _: repl, stats))

    return recalibrate


def _initialise_from(state: TrainState, source: str, repl: Any) -> TrainState:
    """Load params (and BN statistics) from a model export or another run's workdir."""
    _, variables, _ = runs.load_any(source)
    params = _merge_checked(state.params, variables["params"], "params")
    batch_stats = _merge_checked(state.batch_stats, variables.get("batch_stats", {}), "batch_stats")
    return state.replace(params=jax.device_put(params, repl), batch_stats=jax.device_put(batch_stats, repl))


def _merge_checked(target: Any, source: Any, what: str) -> Any:
    flat_t = flax.traverse_util.flatten_dict(flax.core.unfreeze(target), sep="/")
    flat_s = flax.traverse_util.flatten_dict(flax.core.unfreeze(source), sep="/")
    missing = sorted(set(flat_t) - set(flat_s))
    unexpected = sorted(set(flat_s) - set(flat_t))
    if missing or unexpected:
        raise ValueError(f"init_from {what}: missing {missing[:5]} unexpected {unexpected[:5]}")
    for k, v in flat_s.items():
        if tuple(np.shape(v)) != tuple(flat_t[k].shape):
            raise ValueError(f"init_from {what}/{k}: shape {np.shape(v)} does not match the model's {flat_t[k].shape}")
    return flax.traverse_util.unflatten_dict({k: jnp.asarray(v, flat_t[k].dtype) for k, v in flat_s.items()}, sep="/")


def log_images(writer: MetricWriter, eval_step, state: TrainState, arrays: Mapping[str, np.ndarray], step: int, batch_size: int, mesh: Any, n: int = 8) -> None:
    """The first ``n`` images of ``arrays`` with the model's reconstruction and attention, to TensorBoard.

    The images go through :func:`predict_dataset` at the evaluation batch size:
    the program the evaluations compiled is reused (8 images would compile the
    forward pass again), and every process takes part in the sharded call.
    """
    outputs = predict_dataset(eval_step, state, {"image": arrays["image"][:n]}, batch_size, mesh, keep=figures.GRID_OUTPUTS)
    if not writer.enabled:
        return
    panels = {"images/composite": as_rgb(np.asarray(arrays["image"][:n], np.float32))}
    if "x_org" in arrays:
        panels["images/target_face"] = np.asarray(arrays["x_org"][:n])
    if "reconstruction" in outputs:
        recon = outputs["reconstruction"]
        panels["images/reconstruction"] = recon / max(float(recon.max()), 1e-6)
    if "attention" in outputs:
        panels["images/attention"] = jax.nn.sigmoid(outputs["attention"]).mean(-1)
    writer.images(step, panels)


def _final_figures(eval_step, state: TrainState, arrays, report, config, mesh, out: pathlib.Path, *, write: bool, n: int = 8) -> list[str]:
    """The test split's confusion matrix and attention grid (``feratt eval``'s pictures), with the step already compiled.

    Every process runs the prediction (it is collective); ``write`` says which one draws.
    """
    outputs = predict_dataset(eval_step, state, {"image": arrays["image"][:n]}, int(config.train.eval_batch_size), mesh, keep=figures.GRID_OUTPUTS)
    paths = [out / "confusion_test.png", out / "attention_test.png"]
    if write:
        out.mkdir(parents=True, exist_ok=True)
        class_names = EXPRESSION_NAMES[: int(config.model.num_classes)]
        figures.confusion_png(paths[0], report, class_names, "test")
        figures.attention_grid_png(paths[1], arrays, outputs, class_names)
    return [str(p) for p in paths]


def _log_confusion_matrix(writer: MetricWriter, report: Mapping[str, Any], num_classes: int, step: int) -> None:
    """The validation confusion matrix as a TensorBoard image (``val/confusion_matrix``)."""
    if not writer.enabled:
        return
    title = f"val step {step}: accuracy {report['accuracy']:.3f}"
    image = plots.confusion_matrix_image(np.asarray(report["confusion_matrix"]), EXPRESSION_NAMES[:num_classes], title)
    writer.images(step, {"val/confusion_matrix": image[None]})


def _progress(start: int, total: int, *, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True, mininterval=2.0)
