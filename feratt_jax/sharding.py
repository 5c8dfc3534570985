"""Data parallelism: one ("data",) mesh over every device of every process.

State is replicated (``P()``) and batches are split along their first axis
(``P("data")``); ``jax.jit`` then inserts the gradient all-reduce and
computes BatchNorm statistics over the global batch. This is the modern form
of a pmap'ed step and runs unchanged on several hosts after
``jax.distributed.initialize()``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh() -> Mesh:
    """A 1-D mesh named "data" over all global devices.

    ``jax.sharding.Mesh`` is built directly because ``jax.make_mesh`` defaults
    to Explicit axis types, under which a plain data-parallel step fails to
    resolve shardings; this constructor keeps the Auto default.
    """
    return Mesh(np.asarray(jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def check_batch_size(global_batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
    """The global batch must split evenly over devices and processes."""
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ValueError(f"{name}={global_batch_size} is not divisible by the {devices} devices of the mesh")
    if global_batch_size % jax.process_count():
        raise ValueError(f"{name}={global_batch_size} is not divisible by {jax.process_count()} processes")


def host_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turn this process's slice of a batch into global arrays sharded on "data"."""
    sharding = data_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def to_host(tree: Any) -> Any:
    """Fetch a (possibly sharded, possibly multi-host) pytree to numpy on every process."""
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)
