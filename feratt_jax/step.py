"""The train and eval steps, and the model's input: what one step computes, nothing else.

Everything here takes explicit arguments (a model, an optimizer, loss
options, an input function): this module reads no config and knows no data
pipeline, so the trainer, ``feratt bench`` and the tests run the same step.
:mod:`feratt_jax.factory` builds those arguments from a config.

Sections: train state | model input | train step | eval step and evaluation
over a fixed set.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from feratt_jax import losses as losses_lib
from feratt_jax import metrics as metrics_lib
from feratt_jax import sharding, stopping
from feratt_jax.models.layers import avg_pool, resize_bilinear


# ==========================================================================
# Train state
# ==========================================================================


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


# ==========================================================================
# Model input
# ==========================================================================


def as_rgb(x_BHWC: Any) -> Any:
    """Grey images (one channel, as the evaluation sets store them) repeated to the three channels models take.

    Works on NumPy and JAX arrays alike (the copy is exact either way).
    """
    return x_BHWC.repeat(3, axis=-1) if x_BHWC.shape[-1] == 1 else x_BHWC


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
    """The image as the model takes it: RGB, resized to ``input_size`` (0 = as is), optionally standardized.

    Grey images become RGB first (:func:`as_rgb`). Downsampling by an
    integer factor is an average pool (the paper's 32x32 baseline sees the
    64x64 composite pooled by 2, like FERAtt's backbone); upsampling (224
    for resnet18) is bilinear. ``standardize``
    (``config.model.input_standardization``): see :func:`standardize_per_image`.
    """
    image_BHWC = as_rgb(image_BHWC)
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


# ==========================================================================
# Train step
# ==========================================================================


def make_train_step(
    model: Any,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    prepare: Callable[[jax.Array], jax.Array],
    loss_options: Mapping[str, Any],
    seed: int,
    render: Callable[[Mapping[str, jax.Array]], Mapping[str, jax.Array]] | None = None,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """``train_step(state, batch) -> (state, scalar metrics)``.

    Args:
      model: a Flax module returning a dict of named outputs (``logits`` at least).
      tx: the optimizer; ``schedule`` only feeds the logged learning rate.
      prepare: the model's input function (e.g. :func:`model_input` with its options bound).
      loss_options: keyword arguments of :func:`feratt_jax.losses.feratt_losses`.
      seed: the run's seed; the step's randomness is ``fold_in(key(seed), step)``,
        so a resumed run draws exactly what an uninterrupted one would, with
        no RNG state in the checkpoint.
      render: ``render(batch) -> rendered`` run on the device inside the step
        (the trainer ships raw faces and background crops and composites
        here); None takes ``batch`` as already rendered (``image``, ``x_org``,
        ``label``, ``theta``), as the bench does.
    """

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
        # Built inside the step from the static seed: no key crosses the
        # host/device boundary, which keeps multi-host calls trivially global.
        base_rng = jax.random.fold_in(jax.random.key(seed), 1)
        rng = jax.random.fold_in(base_rng, state.step)
        # Three keys, the first unused since composites draw from per-sample
        # seeds: splitting in two would change every dropout and mixup draw.
        _, dropout_rng, loss_rng = jax.random.split(rng, 3)
        rendered = render(batch) if render is not None else batch

        def loss_of(params):
            outputs, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                prepare(rendered["image"]),
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_rng},
            )
            outputs = {k: v.astype(jnp.float32) for k, v in outputs.items()}
            terms = losses_lib.feratt_losses(outputs, rendered, loss_rng, **loss_options)
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
        # The plateau scale lives in the optimizer state (1.0 without a plateau link).
        metrics["learning_rate"] = schedule(state.step) * stopping.lr_scale(state.opt_state)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_batch_stats, opt_state=opt_state)
        return new_state, metrics

    return train_step


# ==========================================================================
# Eval step and evaluation over a fixed set
# ==========================================================================


def make_eval_step(model: Any, prepare: Callable[[jax.Array], jax.Array]):
    """``eval_step(params, batch_stats, images) -> outputs`` in eval mode (running BN statistics)."""

    def eval_step(params, batch_stats, image_BHWC):
        outputs = model.apply({"params": params, "batch_stats": batch_stats}, prepare(image_BHWC), train=False)
        return {k: v.astype(jnp.float32) for k, v in outputs.items()}

    return eval_step


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
        # RGB on the host: grey and RGB sets then share one compiled eval step.
        chunk = as_rgb(np.asarray(images[start : start + batch_size], np.float32))
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
