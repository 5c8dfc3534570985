"""BatchNorm statistics re-estimated for the current weights ("precise BN").

The reference evaluates with PyTorch's running averages (momentum 0.1), which
trail the weights by a few dozen steps. Early in training, at lr 1e-3, the
weights move faster than the averages follow, and the mismatch compounds
through FERAtt's 53 BatchNorm layers: the eval-mode network can sit at
chance while the same weights classify well with fresh statistics
(``experiments/feratt_diagnostics.py`` measured 10 % -> 28 % on one fold).
Re-estimating the statistics before evaluation removes that artifact without
touching the weights; training itself never reads the running averages, so
the optimisation is the same with or without it.

The statistics of one batch are read off the model itself: a train-mode pass
from all-zero running statistics leaves ``(1 - m) * batch`` in every BN
layer, and a pass over a zero image from zero and from one statistics gives
each layer's ``m``, so no layer's momentum is assumed.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp


def make_batch_statistics_fn(model: Any, prepare: Callable[[jax.Array], jax.Array]) -> Callable:
    """``fn(params, batch_stats, image_BHWC) -> batch_stats`` holding that one batch's statistics.

    ``image_BHWC`` is a training composite (B, H, W, 3) or a grey batch
    (B, H, W, 1) before ``prepare``, the model's input function (e.g.
    :func:`feratt_jax.factory.model_input_fn`: RGB, resize, standardisation),
    which ``fn`` applies. The result has the structure of ``batch_stats``:
    per BN layer the batch mean and the unbiased batch variance, as PyTorch
    would add to its averages.
    """

    @jax.jit
    def fn(params, batch_stats, image_BHWC):
        x = prepare(jnp.asarray(image_BHWC, jnp.float32))

        def updated(start_value: float, inputs: jax.Array):
            start = jax.tree.map(lambda v: jnp.full_like(v, start_value), batch_stats)
            _, mutated = model.apply(
                {"params": params, "batch_stats": start}, inputs, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
            )
            return mutated["batch_stats"]

        scaled = updated(0.0, x)  # (1 - m) * batch statistics
        # On a zero image the batch statistics are small, so one - zero = m
        # without cancellation against large values.
        zero_image = jnp.zeros_like(x[:2])
        momentum = jax.tree.map(jnp.subtract, updated(1.0, zero_image), updated(0.0, zero_image))
        return jax.tree.map(lambda s, m: s / (1.0 - m), scaled, momentum)

    return fn


def average_batch_stats(batch_statistics_fn: Callable, params: Any, batch_stats: Any, images: Iterable[Any]) -> Any:
    """The mean over ``images`` (an iterable of batches) of each batch's statistics.

    ``batch_statistics_fn`` comes from :func:`make_batch_statistics_fn`;
    ``batch_stats`` only gives the structure. Returns a tree like it.
    """
    total, count = None, 0
    for image in images:
        image = jnp.asarray(image, jnp.float32)
        if image.ndim != 4:
            raise ValueError(f"precise BN batches must be (B, H, W, C) images, got shape {image.shape}")
        stats = batch_statistics_fn(params, batch_stats, image)
        total = stats if total is None else _tree_add(total, stats)
        count += 1
    if count == 0:
        raise ValueError("precise BN needs at least one batch of images")
    return _tree_divide(total, count)


# One compiled program per tree instead of an eager op per BatchNorm leaf
# (hundreds of small dispatches, each a compile on a new sharding).
_tree_add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))
_tree_divide = jax.jit(lambda a, n: jax.tree.map(lambda t: t / n, a), static_argnums=1)

