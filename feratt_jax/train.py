"""The one trainer: ``train_and_evaluate(config, workdir)``.

Every model (the four FERAtt variants and the baselines) trains through this
loop; what differs is the config (model name, loss variant, sizes).

Sections: set-up | input | model and optimizer | step functions | checkpoint
and resume | loop | final evaluation.
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
from typing import Any, Callable, Iterator, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from feratt_jax import losses as losses_lib
from feratt_jax import metrics as metrics_lib
from feratt_jax import EXPRESSION_NAMES, plots, precise_bn, sharding, stopping, validation, workdir_lock
from feratt_jax.checkpointing import Checkpointer, abstract_like
from feratt_jax.data import pipeline
from feratt_jax.metric_writer import MetricWriter
from feratt_jax.models import FERATT_VARIANTS, PAPER_ERA_MODELS, build_model
from feratt_jax.models.layers import avg_pool, resize_bilinear
from feratt_jax.models.summary import DEFAULT_IMAGE_SIZE
from feratt_jax.optimizers import scale_by_torch_adam

log = logging.getLogger(__name__)


# ==========================================================================
# Train state, model and optimizer from a config
# ==========================================================================


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def build_model_from_config(model_config: ml_collections.ConfigDict) -> Any:
    """The Flax module a config names (see :func:`feratt_jax.models.build_model`)."""
    options: dict[str, Any] = {}
    if model_config.name in FERATT_VARIANTS or model_config.name in PAPER_ERA_MODELS:
        options["backbone"] = model_config.backbone
        options["num_filters"] = model_config.num_filters
        options["backbone_width"] = model_config.backbone_width
        options["num_feature_blocks"] = model_config.get("num_feature_blocks", 8)
        if model_config.name in PAPER_ERA_MODELS:  # its STN's last layer is sized by the input
            options["image_size"] = model_config.input_size or DEFAULT_IMAGE_SIZE[model_config.name]
        elif model_config.attention_channels:
            options["attention_channels"] = model_config.attention_channels
    elif model_config.name == "preactresnet18" and model_config.get("baseline_width", 0):
        options["initial_channels"] = model_config.baseline_width
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(model_config.compute_dtype)
    if dtype is None:
        raise ValueError(f"model.compute_dtype must be float32 or bfloat16, got {model_config.compute_dtype!r}")
    return build_model(model_config.name, num_classes=model_config.num_classes, dim=model_config.dim, dtype=dtype, **options)


def standardize_per_image(image_BHWC: jax.Array, eps: float = 1e-3) -> jax.Array:
    """Each image to zero mean and unit standard deviation over its pixels and channels.

    The renderer matches the face's illumination to the background and the
    composites vary widely in brightness and contrast; removing that per
    image lets a network start learning the expression several times sooner
    (docs/training.md). ``eps`` keeps flat images finite.
    """
    mean = jnp.mean(image_BHWC, axis=(1, 2, 3), keepdims=True)
    std = jnp.std(image_BHWC, axis=(1, 2, 3), keepdims=True)
    return (image_BHWC - mean) / (std + eps)


def model_input(image_BHWC: jax.Array, input_size: int, standardize: bool = False) -> jax.Array:
    """The rendered image as the model takes it: resized to ``input_size`` (0 = as is), optionally standardized.

    Downsampling by an integer factor is an average pool (the paper's 32x32
    baseline sees the 64x64 composite pooled by 2, like FERAtt's backbone);
    upsampling (224 for resnet18) is bilinear. ``standardize``
    (``config.model.input_standardization``): see :func:`standardize_per_image`.
    """
    if standardize:
        image_BHWC = standardize_per_image(image_BHWC)
    size = image_BHWC.shape[1]
    if not input_size or input_size == size:
        return image_BHWC
    if input_size < size:
        if size % input_size:
            raise ValueError(f"model.input_size={input_size} must divide the image size {size}")
        return avg_pool(image_BHWC, size // input_size)
    return resize_bilinear(image_BHWC, input_size, input_size)


def model_input_fn(config: ml_collections.ConfigDict) -> Callable[[jax.Array], jax.Array]:
    """:func:`model_input` with ``config.model``'s input size and standardization bound."""
    input_size = config.model.input_size
    standardize = bool(config.model.get("input_standardization", False))
    return lambda image_BHWC: model_input(image_BHWC, input_size, standardize)


def make_learning_rate(opt_config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """The learning rate per step: constant, cosine decay, or step decay (PyTorch's StepLR),
    after ``warmup_steps`` of linear warmup.

    "step" multiplies the rate by ``step_gamma`` every ``step_size`` optimizer
    steps (the paper-era reference steps it per epoch: ``step_size`` = epochs
    times batches per epoch).
    """
    lr = opt_config.learning_rate
    # "plateau": a constant base rate; the plateau scale is a link of the optimizer chain (feratt_jax.stopping).
    if opt_config.schedule in ("constant", stopping.PLATEAU_SCHEDULE):
        schedule = optax.constant_schedule(lr)
    elif opt_config.schedule == "cosine":
        schedule = optax.cosine_decay_schedule(lr, max(num_steps - opt_config.warmup_steps, 1))
    elif opt_config.schedule == "step":
        step_size, gamma = opt_config.get("step_size", 0), opt_config.get("step_gamma", 0.1)
        if not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"optimizer.step_size must be a positive number of steps for schedule 'step', got {step_size!r}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"optimizer.step_gamma must be in (0, 1], got {gamma!r}")
        schedule = optax.exponential_decay(lr, transition_steps=step_size, decay_rate=gamma, staircase=True)
    else:
        raise ValueError(f"optimizer.schedule must be constant, cosine, step or plateau, got {opt_config.schedule!r}")
    if opt_config.warmup_steps:
        warmup = optax.linear_schedule(0.0, lr, opt_config.warmup_steps)
        schedule = optax.join_schedules([warmup, schedule], [opt_config.warmup_steps])
    return schedule


def make_optimizer(opt_config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """PyTorch's Adam (amsgrad by default, as the reference), optional decay and clipping.

    ``optax.amsgrad`` keeps the maximum of the bias-corrected second moment
    where PyTorch keeps the maximum of the raw one, so it drifts from the
    reference within a few steps; :func:`scale_by_torch_adam` matches PyTorch.
    """
    if opt_config.name != "adam":
        raise ValueError(f"optimizer.name {opt_config.name!r} is not supported (adam)")
    chain = []
    if opt_config.grad_clip_norm:
        chain.append(optax.clip_by_global_norm(opt_config.grad_clip_norm))
    chain.append(scale_by_torch_adam(b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps, amsgrad=opt_config.amsgrad))
    if opt_config.weight_decay:
        chain.append(optax.add_decayed_weights(opt_config.weight_decay))
    chain.append(optax.scale_by_learning_rate(schedule))
    if opt_config.schedule == stopping.PLATEAU_SCHEDULE:
        chain.append(stopping.scale_by_plateau(stopping.make_plateau(opt_config)))  # last link: see stopping.lr_scale
    return optax.chain(*chain)


def loss_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    lc = config.loss
    return dict(
        variant=lc.variant,
        num_classes=config.model.num_classes,
        sigma=lc.sigma,
        mixup=lc.mixup,
        mixup_label_mode=lc.mixup_label_mode,
        cross_entropy_weight=lc.cross_entropy_weight,
        reconstruction_weight=lc.reconstruction_weight,
        stn_weight=lc.stn_weight,
        gaussian_space_weight=lc.gaussian_space_weight,
        embedding_norm_weight=None if lc.embedding_norm_weight < 0 else lc.embedding_norm_weight,
        scale_by_batch_size=lc.scale_by_batch_size,
    )


def build_training(config: ml_collections.ConfigDict, image_size: int):
    """Model, optimizer, schedule and a pure ``init_state()`` for a config.

    The init key is derived from ``config.seed`` inside the function, so the
    jitted init takes no host array: the same call works on every process of
    a multi-host run.
    """
    model = build_model_from_config(config.model)
    schedule = make_learning_rate(config.optimizer, config.train.num_steps)
    tx = make_optimizer(config.optimizer, schedule)
    sample = jnp.zeros((1, image_size, image_size, 3), jnp.float32)

    def init_state() -> TrainState:
        rng = jax.random.fold_in(jax.random.key(config.seed), 0)
        variables = model.init({"params": rng, "dropout": rng}, model_input_fn(config)(sample), train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
        )

    return model, tx, schedule, init_state


def abstract_train_state(init_state: Callable, mesh: Any) -> tuple[Any, Any]:
    """Shapes of the state with replicated shardings attached, and those shardings."""
    repl = sharding.replicated(mesh)
    shapes = jax.eval_shape(init_state)
    shardings = jax.tree.map(lambda _: repl, shapes)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)
    return abstract, shardings


def data_config(config: ml_collections.ConfigDict) -> pipeline.DataConfig:
    """The data side's config: ``config.data`` plus batch size and class count."""
    return pipeline.DataConfig.from_dict(
        config.data.to_dict(), batch_size=config.train.batch_size, num_classes=config.model.num_classes
    )


def make_inputs(config: ml_collections.ConfigDict, *, process_index: int = 0, process_count: int = 1) -> pipeline.Datasets:
    """Face bank, subject-independent split, train iterator and fixed val/test sets."""
    return pipeline.make_datasets(data_config(config), seed=config.seed, process_index=process_index, process_count=process_count)


# ==========================================================================
# Step functions
# ==========================================================================


def make_train_step(
    model: Any,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    render: Callable[[Mapping[str, jax.Array], jax.Array], dict[str, jax.Array]],
    config: ml_collections.ConfigDict,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """``train_step(state, batch) -> (state, scalar metrics)``.

    The composite is rendered on the device inside the step, so the host
    only ships raw faces and background crops. The step's randomness is
    ``fold_in(key(seed), step)``: a resumed run draws exactly what an
    uninterrupted one would, with no RNG state in the checkpoint.
    """
    loss_kwargs = loss_options(config)
    prepare = model_input_fn(config)
    seed = config.seed

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
        # Built inside the step from the static seed: no key crosses the
        # host/device boundary, which keeps multi-host calls trivially global.
        base_rng = jax.random.fold_in(jax.random.key(seed), 1)
        rng = jax.random.fold_in(base_rng, state.step)
        render_rng, dropout_rng, loss_rng = jax.random.split(rng, 3)
        rendered = render(batch, render_rng)

        def loss_of(params):
            outputs, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                prepare(rendered["image"]),
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_rng},
            )
            outputs = {k: v.astype(jnp.float32) for k, v in outputs.items()}
            terms = losses_lib.feratt_losses(outputs, rendered, loss_rng, **loss_kwargs)
            return terms["total"], (terms, outputs, updates.get("batch_stats", {}))

        (_, (terms, outputs, new_batch_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {f"loss/{k}": v for k, v in terms.items()}
        metrics["accuracy"] = jnp.mean(jnp.argmax(outputs["logits"], -1) == rendered["label"])
        if "embedding" in outputs:
            metrics["gmm_accuracy"] = metrics_lib.nearest_class_mean_accuracy(outputs["embedding"], rendered["label"]) / 100.0
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["param_norm"] = optax.tree.norm(params)
        metrics["learning_rate"] = schedule(state.step) * stopping.lr_scale(state.opt_state)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_batch_stats, opt_state=opt_state)
        return new_state, metrics

    return train_step


def make_eval_step(model: Any, config: ml_collections.ConfigDict):
    """``eval_step(variables, images) -> outputs`` in eval mode (running BN stats)."""
    prepare = model_input_fn(config)

    def eval_step(params, batch_stats, image_BHWC):
        outputs = model.apply({"params": params, "batch_stats": batch_stats}, prepare(image_BHWC), train=False)
        return {k: v.astype(jnp.float32) for k, v in outputs.items()}

    return eval_step


def as_rgb(x_BHWC: np.ndarray) -> np.ndarray:
    """Evaluation sets store grey images with one channel; models take three."""
    x_BHWC = np.asarray(x_BHWC, np.float32)
    return np.repeat(x_BHWC, 3, axis=-1) if x_BHWC.shape[-1] == 1 else x_BHWC


def predict_dataset(
    eval_step: Callable,
    state: TrainState,
    arrays: Mapping[str, np.ndarray],
    batch_size: int,
    mesh: Any,
    keep: tuple[str, ...] = ("logits", "embedding"),
) -> dict[str, np.ndarray]:
    """Run ``eval_step`` over a fixed evaluation set; returns host arrays.

    Every process holds the whole (seeded) evaluation set and feeds its
    slice of each global batch; the last batch is padded and the padding
    dropped from the result.
    """
    images = arrays["image"]
    n = images.shape[0]
    per_process = batch_size // jax.process_count()
    lo = jax.process_index() * per_process
    collected: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, batch_size):
        chunk = as_rgb(images[start : start + batch_size])
        valid = chunk.shape[0]
        if valid < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - valid,) + chunk.shape[1:], chunk.dtype)])
        local = chunk[lo : lo + per_process]
        global_images = sharding.host_to_global({"image": local}, mesh)["image"]
        outputs = eval_step(state.params, state.batch_stats, global_images)
        outputs = sharding.to_host({k: v for k, v in outputs.items() if k in keep})
        for k, v in outputs.items():
            collected.setdefault(k, []).append(np.asarray(v)[:valid])
    return {k: np.concatenate(v) for k, v in collected.items()}


def evaluate_split(eval_step, state, arrays, batch_size, mesh, num_classes) -> dict[str, Any]:
    """Accuracy, macro P/R, reference-F1, macro-F1, per class and the confusion matrix."""
    predictions = predict_dataset(eval_step, state, arrays, batch_size, mesh)
    labels = np.asarray(arrays["label"]).astype(np.int64)
    preds = np.argmax(predictions["logits"], axis=-1)
    report = metrics_lib.classification_report(labels, preds, num_classes)
    report["num_examples"] = int(labels.shape[0])
    return report


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


def _write_json(path: pathlib.Path, payload: Any) -> None:
    """Write JSON atomically: a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    except OSError as err:  # name the file: a full disk's OSError carries no path
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, f"{err.strerror} writing {path}", str(path)) from err
    tmp.replace(path)


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
    with workdir_lock.exclusive_writer(workdir):
        if Checkpointer.has_checkpoints(workdir) and (workdir / "config.json").is_file():
            stored = json.loads((workdir / "config.json").read_text())
            validation.check_resume(stored, config, workdir)
            if config.optimizer.schedule == "cosine" and stored.get("train", {}).get("num_steps") != config.train.num_steps:
                print(f"warning: train.num_steps changed on resume; the cosine schedule now decays over {config.train.num_steps} steps", flush=True)
        _write_json(workdir / "config.json", config.to_dict())
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
    data = make_inputs(config, process_index=jax.process_index(), process_count=jax.process_count())
    train_iter = data.train
    render = make_render(data)

    # ----------------------------------------------- model and optimizer
    model, tx, schedule, init_state = build_training(config, data.config.image_size)
    abstract_state, state_sharding = abstract_train_state(init_state, mesh)

    # -------------------------------------------------- checkpoint/resume
    checkpointer = Checkpointer(workdir, keep=tc.keep_checkpoints)
    restored = checkpointer.restore_latest(abstract_state)
    best_val_accuracy = -1.0
    # --- issue 17: early stopping and the plateau schedule (feratt_jax.stopping)
    early = stopping.EarlyStopping(int(tc.get("early_stopping_patience", 0)))
    plateau = stopping.make_plateau(config.optimizer) if config.optimizer.schedule == stopping.PLATEAU_SCHEDULE else None
    if restored is not None:
        state, data_state, meta = restored
        train_iter.set_state(data_state)
        best_val_accuracy = float(meta.get("best_val_accuracy", -1.0))
        early.load(meta)
        print(f"resumed from {workdir / 'checkpoints'} at step {int(state.step)}", flush=True)
    else:
        state = jax.jit(init_state, out_shardings=state_sharding)()
        if tc.init_from:
            state = _initialise_from(state, tc.init_from, repl)
            print(f"initialised weights from {tc.init_from}", flush=True)

    # -------------------------------------------------------- step functions
    train_step = jax.jit(
        make_train_step(model, tx, schedule, render, config),
        in_shardings=(state_sharding, sharding.data_sharded(mesh)),
        out_shardings=(state_sharding, repl),
        donate_argnums=(0,),  # the old state's buffers become the new state's
    )
    eval_step = jax.jit(make_eval_step(model, config), out_shardings=repl)
    recalibrate_bn = make_bn_recalibration(model, config, data, render, mesh)

    writer = MetricWriter(workdir)
    stop = StopRequested()
    start_step = int(state.step)
    timer = _Timer()
    compile_s = None
    last_saved = checkpointer.latest_step()
    history: list[dict[str, float]] = []

    def meta() -> dict[str, Any]:
        return {"best_val_accuracy": best_val_accuracy, "config": config.to_dict(), "early_stopping": early.state_dict()}

    def run_eval(step: int) -> float:
        nonlocal best_val_accuracy, state
        report = evaluate_split(eval_step, state, data.val, tc.eval_batch_size, mesh, config.model.num_classes)
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
                state, metrics = train_step(state, global_batch)
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
                    _log_images(writer, eval_step, state, data.val, step)
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
    best = checkpointer.restore_best(abstract_state)
    final_state = best[0] if best is not None else state
    summary = {
        "step": step,
        "best_val_accuracy": best_val_accuracy,
        "val": evaluate_split(eval_step, final_state, data.val, tc.eval_batch_size, mesh, config.model.num_classes),
        "test": evaluate_split(eval_step, final_state, data.test, tc.eval_batch_size, mesh, config.model.num_classes),
        "precise_bn_batches": int(tc.get("precise_bn_batches", 0)),
        "precise_bn_seconds": timer.precise_bn_s,
        "first_step_s": compile_s,
        "train_images_per_s": timer.images / timer.total_s if timer.total_s else None,
    }
    if early.patience:
        summary["early_stopping"] = {**early.state_dict(), "patience": early.patience, "stopped": stopped_early}
    writer.scalars(step, {"accuracy": summary["test"]["accuracy"], "reference_f1": summary["test"]["reference_f1"]}, prefix="test/")
    if is_main:
        _write_json(workdir / "eval" / "metrics.json", summary)
    writer.close()
    checkpointer.close()
    return summary


def make_render(data: pipeline.Datasets) -> Callable[[Mapping[str, Any], jax.Array], dict[str, jax.Array]]:
    """The train step's ``render(batch, rng)``: a host batch to its composites, on the device.

    Per-sample render keys come from seeds drawn by the (checkpointed) host
    iterator, so the composite of a given step is reproducible on resume;
    ``rng`` (fold_in of the step) drives dropout and mixup only.
    """
    render_config = data.render_config
    return lambda batch, rng: pipeline.render_train_batch(batch, render_config)


def make_bn_recalibration(model: Any, config: ml_collections.ConfigDict, data: pipeline.Datasets, render: Callable, mesh: Any):
    """``recalibrate(state) -> batch_stats`` re-estimated over fixed training batches, or None.

    None when ``train.precise_bn_batches`` is 0. The batches come from the
    training subjects through :data:`pipeline.PRECISE_BN_STREAM` (none taken
    from the training stream) and are rendered as the train step renders
    them, once.
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
    render_images = jax.jit(lambda batch: render(batch, None)["image"])
    images = [
        render_images(sharding.host_to_global(data.train_batches(i, stream=pipeline.PRECISE_BN_STREAM), mesh)) for i in range(num_batches)
    ]
    statistics = precise_bn.make_batch_statistics_fn(model, config)
    repl = sharding.replicated(mesh)

    def recalibrate(state: TrainState) -> Any:
        stats = precise_bn.average_batch_stats(statistics, state.params, state.batch_stats, images)
        return jax.device_put(stats, jax.tree.map(lambda _: repl, stats))

    return recalibrate


def _initialise_from(state: TrainState, source: str, repl: Any) -> TrainState:
    """Load params (and BN statistics) from a model export or another run's workdir."""
    from feratt_jax import model_io

    _, variables, _ = model_io.load_any(source)
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


def _log_images(writer: MetricWriter, eval_step, state: TrainState, arrays: Mapping[str, np.ndarray], step: int) -> None:
    if not writer.enabled:
        return
    images = as_rgb(arrays["image"][:8])
    outputs = jax.device_get(eval_step(state.params, state.batch_stats, jnp.asarray(images)))
    panels = {"images/composite": images}
    if "x_org" in arrays:
        panels["images/target_face"] = np.asarray(arrays["x_org"][:8])
    if "reconstruction" in outputs:
        recon = outputs["reconstruction"]
        panels["images/reconstruction"] = recon / max(float(recon.max()), 1e-6)
    if "attention" in outputs:
        panels["images/attention"] = jax.nn.sigmoid(outputs["attention"]).mean(-1)
    writer.images(step, panels)


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
