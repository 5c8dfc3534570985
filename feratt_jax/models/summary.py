"""Parameter counts, output shapes and FLOPs of a model, for ``feratt info``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from feratt_jax.models import PAPER_ERA_MODELS, build_model

# Input side each model is normally fed (HEAD's FERAtt variants always see 64).
DEFAULT_IMAGE_SIZE = {"preactresnet18": 32, "resnet18": 224, "ferattention_2019": 128}


def count_parameters(tree: Any) -> int:
    """Number of scalars in a pytree of arrays (or ShapeDtypeStructs)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def model_summary(
    name: str,
    *,
    num_classes: int,
    dim: int = 32,
    image_size: int | None = None,
    with_flops: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Describe a model without training it.

    Args:
      name, num_classes, dim, **options: as :func:`feratt_jax.models.build_model`.
      image_size: input side; defaults to 64 (32 for preactresnet18, 224 for resnet18, 128 for ferattention_2019).
      with_flops: compile the eval-mode forward once and read XLA's cost analysis.

    Returns:
      A JSON-serialisable dict: ``params`` (trainable count), ``batch_stats``
      (BatchNorm statistics count), ``output_shapes`` (per image, batch axis
      dropped), ``flops_per_image`` (forward, eval mode; None if XLA gives
      no figure), and the arguments used.
    """
    size = image_size or DEFAULT_IMAGE_SIZE.get(name, 64)
    if name in PAPER_ERA_MODELS:  # its STN regressor is sized for one input side
        options.setdefault("image_size", size)
    model = build_model(name, num_classes=num_classes, dim=dim, **options)
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x))
    outputs = jax.eval_shape(lambda v: model.apply(v, x), variables)
    summary: dict[str, Any] = {
        "model": name,
        "num_classes": num_classes,
        "dim": dim,
        "options": options,
        "image_size": size,
        "params": count_parameters(variables["params"]),
        "batch_stats": count_parameters(variables.get("batch_stats", {})),
        "output_shapes": {k: list(v.shape[1:]) for k, v in sorted(outputs.items())},
        "flops_per_image": None,
    }
    if with_flops:
        summary["flops_per_image"] = forward_flops(model, variables, x)
    return summary


def forward_flops(model: Any, abstract_variables: Any, x_BHWC: jax.Array) -> float | None:
    """FLOPs of one eval-mode forward over ``x_BHWC`` divided by its batch size."""
    compiled = jax.jit(lambda v, x: model.apply(v, x)).lower(abstract_variables, x_BHWC).compile()
    analysis = compiled.cost_analysis()
    # Older jax returns a list with one dict per computation.
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"]) / x_BHWC.shape[0]
