"""The one reader of the config object: a config in, the pieces of a run out.

Every module above this one asks here for the model, optimizer, initial
state, model input function, loss options and data config of a config, and
the inverse for exports (a ``model.json`` spec back to a config). A new
config option is read in one place.

Below this module nothing reads a config: :mod:`feratt_jax.step`,
:mod:`feratt_jax.optimizers`, :mod:`feratt_jax.models` and
:mod:`feratt_jax.losses` take explicit arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

from feratt_jax import configs, optimizers, sharding, step, stopping
from feratt_jax.data import device, pipeline
from feratt_jax.models import FERATT_VARIANTS, PAPER_ERA_MODELS, build_model
from feratt_jax.models.summary import DEFAULT_IMAGE_SIZE


# ==========================================================================
# Model
# ==========================================================================


def model_options(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The :func:`feratt_jax.models.build_model` options ``config.model`` sets, besides name, classes, dim and dtype."""
    options: dict[str, Any] = {}
    if model_config.name in FERATT_VARIANTS or model_config.name in PAPER_ERA_MODELS:
        options["backbone"] = model_config.backbone
        options["num_filters"] = model_config.num_filters
        options["backbone_width"] = model_config.backbone_width
        options["num_feature_blocks"] = model_config.get("num_feature_blocks", 8)
        if not model_config.get("reconstruction_relu", True):
            options["reconstruction_relu"] = False
        if model_config.name in PAPER_ERA_MODELS:  # its STN's last layer is sized by the input
            options["image_size"] = model_config.input_size or DEFAULT_IMAGE_SIZE[model_config.name]
        elif model_config.attention_channels:
            options["attention_channels"] = model_config.attention_channels
    elif model_config.name == "preactresnet18" and model_config.get("baseline_width", 0):
        options["initial_channels"] = model_config.baseline_width
    return options


def build_model_from_config(model_config: ml_collections.ConfigDict) -> Any:
    """The Flax module a config names (see :func:`feratt_jax.models.build_model`)."""
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(model_config.compute_dtype)
    if dtype is None:
        raise ValueError(f"model.compute_dtype must be float32 or bfloat16, got {model_config.compute_dtype!r}")
    return build_model(
        model_config.name, num_classes=model_config.num_classes, dim=model_config.dim, dtype=dtype, **model_options(model_config)
    )


def config_from_spec(spec: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The inverse for exports: a ``model.json`` spec to a config (its model's base config, data defaults)."""
    config = configs.base_config(spec["model_name"])
    config.model.num_classes = int(spec["num_classes"])
    config.model.dim = int(spec["dim"])
    config.model.input_size = DEFAULT_IMAGE_SIZE.get(spec["model_name"], 0)
    return config


def spec_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The spec fields a config determines (``model.json``'s model name, classes, dim; preprocessing in ``extra``)."""
    return {
        "model_name": str(config.model.name),
        "num_classes": int(config.model.num_classes),
        "dim": int(config.model.dim),
        # Preprocessing outside the module that its users must repeat.
        "extra": {"input_standardization": bool(config.model.get("input_standardization", False))},
    }


def model_input_fn(config: ml_collections.ConfigDict) -> Callable[[jax.Array], jax.Array]:
    """:func:`feratt_jax.step.model_input` with ``config.model``'s input size and standardization bound."""
    input_size = config.model.input_size
    standardize = bool(config.model.get("input_standardization", False))
    return lambda image_BHWC: step.model_input(image_BHWC, input_size, standardize)


# ==========================================================================
# Optimizer and losses
# ==========================================================================


def make_learning_rate(opt_config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """``config.optimizer``'s schedule (:func:`feratt_jax.optimizers.learning_rate_schedule`)."""
    return optimizers.learning_rate_schedule(
        opt_config.schedule,
        opt_config.learning_rate,
        num_steps,
        warmup_steps=opt_config.warmup_steps,
        step_size=opt_config.get("step_size", 0),
        step_gamma=opt_config.get("step_gamma", 0.1),
    )


def make_optimizer(opt_config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """``config.optimizer``'s optimizer (:func:`feratt_jax.optimizers.make_optimizer`)."""
    return optimizers.make_optimizer(
        schedule,
        name=opt_config.name,
        b1=opt_config.b1,
        b2=opt_config.b2,
        eps=opt_config.eps,
        amsgrad=opt_config.amsgrad,
        grad_clip_norm=opt_config.grad_clip_norm,
        weight_decay=opt_config.weight_decay,
        decoupled_weight_decay=opt_config.decoupled_weight_decay,
        plateau=make_plateau(opt_config),
    )


def make_plateau(opt_config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs | None:
    """``config.optimizer``'s reduce-on-plateau for schedule "plateau" (None otherwise).

    The optimizer holds its scale; the trainer advances its state with
    :func:`feratt_jax.stopping.plateau_update` after each evaluation.
    """
    if opt_config.schedule != stopping.PLATEAU_SCHEDULE:
        return None
    return stopping.make_plateau(opt_config.plateau_factor, opt_config.plateau_patience)


def loss_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The keyword arguments of :func:`feratt_jax.losses.feratt_losses` that ``config.loss`` sets."""
    lc = config.loss
    return dict(
        variant=lc.variant,
        num_classes=config.model.num_classes,
        sigma=lc.sigma,
        mixup=lc.mixup,
        mixup_label_mode=lc.mixup_label_mode,
        class_mean_includes_self=lc.class_mean_includes_self,
        cross_entropy_weight=lc.cross_entropy_weight,
        reconstruction_weight=lc.reconstruction_weight,
        stn_weight=lc.stn_weight,
        gaussian_space_weight=lc.gaussian_space_weight,
        embedding_norm_weight=None if lc.embedding_norm_weight < 0 else lc.embedding_norm_weight,
        scale_by_batch_size=lc.scale_by_batch_size,
        reconstruction_form=lc.reconstruction_form,
    )


# ==========================================================================
# Initial state
# ==========================================================================


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
    prepare = model_input_fn(config)

    def init_state() -> step.TrainState:
        rng = jax.random.fold_in(jax.random.key(config.seed), 0)
        variables = model.init({"params": rng, "dropout": rng}, prepare(sample), train=False)
        params = variables["params"]
        return step.TrainState(
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


# ==========================================================================
# Data
# ==========================================================================


def data_config(config: ml_collections.ConfigDict) -> pipeline.DataConfig:
    """The data side's config: ``config.data`` plus batch size and class count."""
    return pipeline.DataConfig.from_dict(
        config.data.to_dict(), batch_size=config.train.batch_size, num_classes=config.model.num_classes
    )


def make_inputs(config: ml_collections.ConfigDict, *, process_index: int = 0, process_count: int = 1) -> pipeline.Datasets:
    """Face bank, subject-independent split, train iterator and fixed val/test sets."""
    return pipeline.make_datasets(data_config(config), seed=config.seed, process_index=process_index, process_count=process_count)


def make_render(data: pipeline.Datasets, *, curriculum: bool = False) -> Callable[[Mapping[str, Any]], dict[str, jax.Array]]:
    """The train step's ``render(batch)``: a host batch to its composites, on the device.

    Per-sample render keys come from seeds drawn by the (checkpointed) host
    iterator, so the composite of a given step is reproducible on resume.
    ``curriculum`` renders with the data's curriculum preset instead.
    """
    render_config = data.curriculum_render_config if curriculum else data.render_config
    if render_config is None:
        raise ValueError("make_render(curriculum=True) needs data.curriculum_preset")
    return lambda batch: device.render_train_batch(batch, render_config)


# ==========================================================================
# The whole set-up: config + data + mesh -> jitted steps
# ==========================================================================


@dataclasses.dataclass(frozen=True)
class Training:
    """What a run trains with: the module, optimizer, initial state and the jitted steps."""

    model: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    init_state: Callable[[], step.TrainState]
    abstract_state: Any  # shapes with shardings, for restoring checkpoints
    state_sharding: Any
    train_step: Callable  # jitted train_step(state, global_batch) -> (state, metrics)
    eval_step: Callable  # jitted eval_step(params, batch_stats, images) -> outputs
    curriculum_step: Callable | None = None  # train_step on the curriculum preset's composites
    curriculum_steps: int = 0

    def step_at(self, step: int) -> Callable:
        """The jitted train step for the batch of (0-based) step ``step``."""
        return self.curriculum_step if step < self.curriculum_steps else self.train_step


def setup_training(config: ml_collections.ConfigDict, data: pipeline.Datasets, mesh: Any, *, donate: bool = True) -> Training:
    """:func:`build_training`, the state's shardings and the jitted train and eval steps of a config.

    ``donate`` lets the new state reuse the old state's buffers (the
    trainer); pass False to keep the state a step was given readable.
    """
    model, tx, schedule, init_state = build_training(config, data.config.image_size)
    abstract, state_sharding = abstract_train_state(init_state, mesh)
    repl = sharding.replicated(mesh)
    prepare = model_input_fn(config)

    def jitted_train_step(render: Callable) -> Callable:
        return jax.jit(
            step.make_train_step(model, tx, schedule, prepare=prepare, loss_options=loss_options(config), seed=config.seed, render=render),
            in_shardings=(state_sharding, sharding.data_sharded(mesh)),
            out_shardings=(state_sharding, repl),
            donate_argnums=(0,) if donate else (),
        )

    train_step = jitted_train_step(make_render(data))
    eval_step = jax.jit(step.make_eval_step(model, prepare), out_shardings=repl)
    # A curriculum is a second compiled step (its renderer config is static), used while step < curriculum_steps.
    curriculum = data.curriculum_render_config is not None
    curriculum_step = jitted_train_step(make_render(data, curriculum=True)) if curriculum else None
    curriculum_steps = data.config.curriculum_steps if curriculum else 0
    return Training(model, tx, schedule, init_state, abstract, state_sharding, train_step, eval_step, curriculum_step, curriculum_steps)
