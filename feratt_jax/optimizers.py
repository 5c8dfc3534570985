"""``torch.optim.Adam`` (with or without AMSGrad) as an optax transformation, step for step.

Why not ``optax.amsgrad``: it takes the running maximum of the
*bias-corrected* second moment, ``nu_max = max(nu_max, nu / (1 - b2^t))``,
whereas PyTorch keeps the maximum of the *raw* moment and bias-corrects that
maximum at every step::

    v_max = max(v_max, v_t)
    p -= lr / (1 - b1^t) * m_t / (sqrt(v_max) / sqrt(1 - b2^t) + eps)

Because ``1 - b2^t`` grows with t, the two maxima differ as soon as a
gradient shrinks (e.g. after g_1 = 1, g_2 = 0, optax divides by ~1.0 and
PyTorch by ~0.71), so optax's AMSGrad drifts from the reference within a few
steps. ``optax.adam`` (no AMSGrad) does match PyTorch's Adam up to rounding;
:func:`torch_adam` covers both. ``eps`` is added outside the square root,
as in both libraries. The reference trains with
``Adam(lr=1e-4, amsgrad=True)``, betas (0.9, 0.999), eps 1e-8, no weight
decay (docs/reference.md 4.1). Both of PyTorch's weight decays are here:
Adam's L2 term and AdamW's decoupled decay (:func:`scale_by_torch_adam_with_decay`).
"""

from __future__ import annotations

import math

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from feratt_jax import stopping


class TorchAdamState(NamedTuple):
    """Step count and the first, second and max-second moments (max only with AMSGrad)."""

    count: jax.Array
    mu: Any
    nu: Any
    nu_max: Any


def scale_by_torch_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, amsgrad: bool = False) -> optax.GradientTransformation:
    """Direction of ``torch.optim.Adam``: ``m_hat / (sqrt(v or v_max) / sqrt(1 - b2^t) + eps)``.

    Args:
      b1, b2: moment decay rates (PyTorch's betas).
      eps: added to the denominator after the square root.
      amsgrad: keep the running max of the raw second moment, as PyTorch does.

    Returns:
      An optax GradientTransformation (chain with a learning-rate scale).
    """

    def init_fn(params: Any) -> TorchAdamState:
        zeros = jax.tree.map(jnp.zeros_like, params)
        nu_max = jax.tree.map(jnp.zeros_like, params) if amsgrad else None
        return TorchAdamState(jnp.zeros([], jnp.int32), zeros, jax.tree.map(jnp.zeros_like, params), nu_max)

    def update_fn(updates: Any, state: TorchAdamState, params: Any = None) -> tuple[Any, TorchAdamState]:
        del params
        count = state.count + 1
        # float64 when the parameters are (x64 parity runs), float32 otherwise.
        dtype = jnp.promote_types(jnp.float32, jax.tree.leaves(updates)[0].dtype)
        t = count.astype(dtype)
        mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * g * g, state.nu, updates)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu) if amsgrad else None
        # PyTorch computes 1 - beta^t in Python doubles. In float32, 1 - 0.999**t
        # loses ~1e-5 of relative precision to cancellation (0.999 itself is
        # rounded), which moved every update by ~6e-6; -expm1(t * log(beta))
        # with log(beta) taken in double keeps it within ~1e-7.
        bc1 = -jnp.expm1(t * jnp.asarray(math.log(b1), dtype))
        bc2_sqrt = jnp.sqrt(-jnp.expm1(t * jnp.asarray(math.log(b2), dtype)))
        second = nu_max if amsgrad else nu
        direction = jax.tree.map(lambda m, v: (m / bc1) / (jnp.sqrt(v) / bc2_sqrt + eps), mu, second)
        return direction, TorchAdamState(count, mu, nu, nu_max)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_torch_adam_with_decay(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    amsgrad: bool = False,
    weight_decay: float = 0.0,
    decoupled_weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """The Adam direction with PyTorch's two kinds of weight decay (to be scaled by the learning rate).

    Args:
      b1, b2, eps, amsgrad: as :func:`scale_by_torch_adam`.
      weight_decay: ``torch.optim.Adam(weight_decay=...)``: the L2 term
        ``weight_decay * p`` is added to the gradient *before* the moments, so
        Adam's normalisation rescales it like any gradient.
      decoupled_weight_decay: ``torch.optim.AdamW(weight_decay=...)``:
        ``decoupled_weight_decay * p`` is added *after* the Adam direction, so
        the step shrinks every weight by ``lr * decoupled_weight_decay * p``
        whatever its gradient history (Loshchilov & Hutter).
    """
    adam = scale_by_torch_adam(b1, b2, eps, amsgrad)
    if not (weight_decay or decoupled_weight_decay):
        # Without decay the optimizer state keeps the layout it had before the
        # two decays were split, so workdirs checkpointed then still resume.
        return adam
    chain = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    chain.append(adam)
    if decoupled_weight_decay:
        chain.append(optax.add_decayed_weights(decoupled_weight_decay))
    return optax.chain(*chain)


def torch_adam(
    learning_rate: float | optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    amsgrad: bool = False,
) -> optax.GradientTransformation:
    """``torch.optim.Adam(params, lr, betas=(b1, b2), eps, amsgrad)`` without weight decay.

    Args:
      learning_rate: constant or optax schedule.
      b1, b2, eps, amsgrad: as PyTorch.

    Returns:
      An optax GradientTransformation whose updates are to be *added* to the params.
    """
    return optax.chain(
        scale_by_torch_adam(b1, b2, eps, amsgrad),
        optax.scale_by_learning_rate(learning_rate),
    )


def learning_rate_schedule(
    name: str,
    learning_rate: float,
    num_steps: int,
    *,
    warmup_steps: int = 0,
    step_size: Any = 0,
    step_gamma: float = 0.1,
) -> optax.Schedule:
    """The learning rate per step: constant, cosine decay, or step decay (PyTorch's StepLR),
    after ``warmup_steps`` of linear warmup.

    "plateau" is a constant base rate here: its reductions are a link of the
    optimizer chain (``make_optimizer(plateau=...)``, :mod:`feratt_jax.stopping`).

    "step" multiplies the rate by ``step_gamma`` every ``step_size`` optimizer
    steps (the paper-era reference steps it per epoch: ``step_size`` = epochs
    times batches per epoch). Messages name the ``optimizer.*`` config fields.
    """
    if name in ("constant", stopping.PLATEAU_SCHEDULE):
        schedule = optax.constant_schedule(learning_rate)
    elif name == "cosine":
        schedule = optax.cosine_decay_schedule(learning_rate, max(num_steps - warmup_steps, 1))
    elif name == "step":
        if not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"optimizer.step_size must be a positive number of steps for schedule 'step', got {step_size!r}")
        if not 0.0 < step_gamma <= 1.0:
            raise ValueError(f"optimizer.step_gamma must be in (0, 1], got {step_gamma!r}")
        schedule = optax.exponential_decay(learning_rate, transition_steps=step_size, decay_rate=step_gamma, staircase=True)
    else:
        raise ValueError(f"optimizer.schedule must be constant, cosine, step or plateau, got {name!r}")
    if warmup_steps:
        warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
        schedule = optax.join_schedules([warmup, schedule], [warmup_steps])
    return schedule


def make_optimizer(
    schedule: optax.Schedule,
    *,
    name: str = "adam",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    amsgrad: bool = True,
    grad_clip_norm: float = 0.0,
    weight_decay: float = 0.0,
    decoupled_weight_decay: float = 0.0,
    plateau: optax.GradientTransformationExtraArgs | None = None,
) -> optax.GradientTransformation:
    """PyTorch's Adam (amsgrad by default, as the reference), optional decay and clipping.

    The defaults are the reference's ``Adam(lr, amsgrad=True)``.
    ``weight_decay`` is torch Adam's L2 term, ``decoupled_weight_decay``
    AdamW's decay (:func:`scale_by_torch_adam_with_decay`).
    ``plateau`` (:func:`feratt_jax.stopping.make_plateau`) appends its scale
    as the last link, where :func:`feratt_jax.stopping.lr_scale` and
    :func:`~feratt_jax.stopping.plateau_update` find its state; the trainer
    advances it once per evaluation.
    """
    if name != "adam":
        raise ValueError(f"optimizer.name {name!r} is not supported (adam)")
    chain = []
    if grad_clip_norm:
        chain.append(optax.clip_by_global_norm(grad_clip_norm))
    chain.append(scale_by_torch_adam_with_decay(b1, b2, eps, amsgrad, weight_decay, decoupled_weight_decay))
    chain.append(optax.scale_by_learning_rate(schedule))
    if plateau is not None:
        chain.append(stopping.scale_by_plateau(plateau))
    return optax.chain(*chain)


__all__ = ["TorchAdamState", "learning_rate_schedule", "make_optimizer", "scale_by_torch_adam", "scale_by_torch_adam_with_decay", "torch_adam"]
