"""Worker for test_distributed: one train step under jax.distributed on CPU.

Run as ``python distributed_step_worker.py OUT.npz CACHE_DIR NUM_PROCESSES PROCESS_ID PORT``.
Each process owns 8 / NUM_PROCESSES CPU devices; the mesh spans all 8.
"""

from __future__ import annotations

import os
import sys

out_path, cache_dir, num_processes, process_id, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // num_processes}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from trainer_runs import tiny_config  # noqa: E402

from feratt_jax import factory, sharding  # noqa: E402

config = tiny_config(cache_dir)
mesh = sharding.make_mesh()
assert mesh.devices.size == 8, mesh
data = factory.make_inputs(config, process_index=jax.process_index(), process_count=jax.process_count())
training = factory.setup_training(config, data, mesh)
state = jax.jit(training.init_state, out_shardings=training.state_sharding)()
batch = sharding.host_to_global(next(data.train), mesh)
state, metrics = training.train_step(state, batch)
leaves = sharding.to_host(jax.tree.leaves((state.params, state.batch_stats)))
if jax.process_index() == 0:
    np.savez(out_path, loss=np.asarray(jax.device_get(metrics["loss/total"])), *[np.asarray(x) for x in leaves])
if num_processes > 1:
    jax.distributed.shutdown()
