"""step.py on its own: the model input and one train/eval step of a linear model, checked by hand.

No config and no data pipeline: the step takes a module, an optimizer, loss
options and an input function (the trainer's full step, built by factory.py,
has its golden values in test_train.py).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from feratt_jax import optimizers
from feratt_jax.step import TrainState, make_eval_step, make_train_step, model_input

C, B, S = 3, 4, 4  # classes, batch, image side


class Linear(nn.Module):
    """logits = flatten(x) @ W: its cross-entropy gradient is written out below."""

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        return {"logits": nn.Dense(C, use_bias=False, name="dense")(x.reshape(x.shape[0], -1))}


def _fixed_batch():
    rng = np.random.default_rng(0)
    image = rng.random((B, S, S, 1), dtype=np.float32)  # grey: the input function makes it RGB
    label = np.array([0, 1, 2, 1], np.int32)
    return image, label


def test_model_input_makes_rgb_then_standardizes_then_pools():
    image, _ = _fixed_batch()
    rgb = np.repeat(image.astype(np.float64), 3, axis=-1)
    mean = rgb.mean(axis=(1, 2, 3), keepdims=True)
    std = rgb.std(axis=(1, 2, 3), keepdims=True)
    standardized = (rgb - mean) / (std + 1e-3)
    pooled = standardized.reshape(B, S // 2, 2, S // 2, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(model_input(jnp.asarray(image), 2, standardize=True), pooled, rtol=1e-5, atol=1e-6)
    # Size 0 or the image's own: RGB only, values untouched.
    np.testing.assert_array_equal(model_input(jnp.asarray(image), 0), rgb.astype(np.float32))
    np.testing.assert_array_equal(model_input(jnp.asarray(image), S), rgb.astype(np.float32))


def test_one_train_step_of_a_linear_model_by_hand():
    image, label = _fixed_batch()
    model = Linear()
    lr = 0.01
    schedule = optax.constant_schedule(lr)
    tx = optimizers.make_optimizer(schedule)  # the reference's Adam with AMSGrad
    params = model.init(jax.random.key(0), jnp.zeros((1, S, S, 3)))["params"]
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={}, opt_state=tx.init(params))
    step = make_train_step(
        model, tx, schedule, prepare=lambda x: model_input(x, 0), loss_options={"variant": "classifier", "num_classes": C}, seed=0
    )
    new_state, metrics = jax.jit(step)(state, {"image": jnp.asarray(image), "label": jnp.asarray(label)})

    # By hand: softmax cross-entropy of x @ W and its gradient X^T (softmax - onehot) / B.
    x = np.repeat(image.astype(np.float64), 3, axis=-1).reshape(B, -1)
    w = np.asarray(params["dense"]["kernel"], np.float64)
    logits = x @ w
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    onehot = np.eye(C)[label]
    ce = -np.mean(np.log(p[np.arange(B), label]))
    grad = x.T @ (p - onehot) / B
    # Adam's first step (bias-corrected m = g, v = g^2): w - lr * g / (|g| + eps).
    new_w = w - lr * grad / (np.abs(grad) + 1e-8)

    np.testing.assert_allclose(metrics["loss/cross_entropy"], ce, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss/total"], ce, rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(grad), rtol=1e-5)
    np.testing.assert_allclose(metrics["param_norm"], np.linalg.norm(new_w), rtol=1e-5)
    assert float(metrics["accuracy"]) == np.mean(logits.argmax(-1) == label)
    np.testing.assert_allclose(metrics["learning_rate"], lr, rtol=1e-7)
    assert int(new_state.step) == 1
    np.testing.assert_allclose(new_state.params["dense"]["kernel"], new_w, rtol=1e-5, atol=1e-7)

    # The eval step applies the same input function to the new weights.
    eval_step = make_eval_step(model, lambda x: model_input(x, 0))
    outputs = jax.jit(eval_step)(new_state.params, new_state.batch_stats, jnp.asarray(image))
    np.testing.assert_allclose(outputs["logits"], x @ new_w, rtol=1e-5, atol=1e-6)


def test_the_step_draws_its_randomness_from_the_seed_and_the_step_count():
    """Same seed and step: the same dropout mask; another step count: another one."""

    class Dropped(nn.Module):
        @nn.compact
        def __call__(self, x, *, train: bool = False):
            h = nn.Dropout(0.5, deterministic=not train)(x.reshape(x.shape[0], -1))
            return {"logits": nn.Dense(C, name="dense")(h)}

    image, label = _fixed_batch()
    model = Dropped()
    schedule = optax.constant_schedule(0.01)
    tx = optimizers.make_optimizer(schedule)
    params = model.init(jax.random.key(0), jnp.zeros((1, S, S, 3)))["params"]
    batch = {"image": jnp.asarray(image), "label": jnp.asarray(label)}

    def loss_at(step_count: int, seed: int) -> float:
        state = TrainState(step=jnp.asarray(step_count, jnp.int32), params=params, batch_stats={}, opt_state=tx.init(params))
        options = {"variant": "classifier", "num_classes": C}
        step = make_train_step(model, tx, schedule, prepare=lambda x: model_input(x, 0), loss_options=options, seed=seed)
        return float(jax.jit(step)(state, batch)[1]["loss/total"])

    assert loss_at(5, 0) == loss_at(5, 0)
    assert loss_at(5, 0) != loss_at(6, 0)
    assert loss_at(5, 0) != loss_at(5, 1)
