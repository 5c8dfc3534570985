"""Precise BN: per-batch BatchNorm statistics read off a model, and the trainer option that uses them."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from feratt_jax import factory, precise_bn, sharding
from feratt_jax import train as train_lib
from feratt_jax.step import model_input
from feratt_jax.checkpointing import Checkpointer
from feratt_jax.kfold import config_differences
from feratt_jax.models.layers import BatchNorm2d

from trainer_runs import restored_params, tiny_config


class TwoNorms(nn.Module):
    """BN -> ReLU -> 1x1 conv -> BN, with momenta that differ from each other and from PyTorch's."""

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = nn.relu(BatchNorm2d(momentum=0.5, name="bn1")(x, train=train))
        x = nn.Conv(4, (1, 1), name="conv")(x)
        return {"logits": BatchNorm2d(momentum=0.8, name="bn2")(x, train=train).mean(axis=(1, 2))}


def _plain_input(image_BHWC):
    """The model input of a config with no resize and no standardization."""
    return model_input(image_BHWC, 0)


def _by_hand(variables, x):
    """Each BN's batch mean and unbiased variance, from numpy alone."""
    x = np.asarray(x, np.float64)
    n = x.shape[0] * x.shape[1] * x.shape[2]
    m1, v1 = x.mean((0, 1, 2)), x.var((0, 1, 2))
    p = variables["params"]
    h = np.maximum((x - m1) / np.sqrt(v1 + 1e-5) * np.asarray(p["bn1"]["scale"]) + np.asarray(p["bn1"]["bias"]), 0.0)
    h = h @ np.asarray(p["conv"]["kernel"])[0, 0] + np.asarray(p["conv"]["bias"])
    m2, v2 = h.mean((0, 1, 2)), h.var((0, 1, 2))
    return {"bn1": {"mean": m1, "var": v1 * n / (n - 1)}, "bn2": {"mean": m2, "var": v2 * n / (n - 1)}}


def test_batch_statistics_are_the_batch_mean_and_unbiased_variance_whatever_the_momentum():
    model = TwoNorms()
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(1), (6, 5, 5, 3))
    variables = model.init(jax.random.key(0), x)
    # Running averages far from the batch: the result must not depend on them.
    stale = jax.tree.map(lambda v: v + 7.0, variables["batch_stats"])
    got = precise_bn.make_batch_statistics_fn(model, _plain_input)(variables["params"], stale, x)
    want = _by_hand(variables, x)
    for layer in ("bn1", "bn2"):
        for stat in ("mean", "var"):
            np.testing.assert_allclose(got[layer][stat], want[layer][stat], rtol=2e-5, atol=2e-5, err_msg=f"{layer}.{stat}")


def test_average_over_batches_is_the_mean_of_each_batch_statistics():
    model = TwoNorms()
    xs = [jax.random.uniform(jax.random.key(i), (4, 5, 5, 3)) * (i + 1) for i in range(3)]
    variables = model.init(jax.random.key(0), xs[0])
    fn = precise_bn.make_batch_statistics_fn(model, _plain_input)
    got = precise_bn.average_batch_stats(fn, variables["params"], variables["batch_stats"], xs)
    singles = [_by_hand(variables, x) for x in xs]
    for layer in ("bn1", "bn2"):
        for stat in ("mean", "var"):
            np.testing.assert_allclose(got[layer][stat], np.mean([s[layer][stat] for s in singles], axis=0), rtol=2e-5, atol=2e-5)


def test_average_rejects_no_batches_and_bad_shapes():
    model = TwoNorms()
    x = jnp.ones((2, 5, 5, 3))
    variables = model.init(jax.random.key(0), x)
    fn = precise_bn.make_batch_statistics_fn(model, _plain_input)
    with pytest.raises(ValueError, match="at least one batch"):
        precise_bn.average_batch_stats(fn, variables["params"], variables["batch_stats"], [])
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        precise_bn.average_batch_stats(fn, variables["params"], variables["batch_stats"], [jnp.ones((5, 5, 3))])


def test_trainer_option_changes_the_statistics_and_nothing_else(cache_dir, tmp_path):
    plain = tiny_config(cache_dir, num_steps=3, eval_every=2, checkpoint_every=3)
    precise = tiny_config(cache_dir, num_steps=3, eval_every=2, checkpoint_every=3, precise_bn_batches=2)
    summary = train_lib.train_and_evaluate(precise, tmp_path / "precise")
    train_lib.train_and_evaluate(plain, tmp_path / "plain")
    assert summary["precise_bn_batches"] == 2 and summary["precise_bn_seconds"] > 0
    # The summary also says where the start-up went (read by experiments/main_job_time.py).
    assert set(summary["data_seconds"]) == {"bank", "backgrounds", "eval_render"} and min(summary["data_seconds"].values()) >= 0
    assert summary["init_state_s"] > 0

    a, data_a = restored_params(tmp_path / "plain", plain)
    b, data_b = restored_params(tmp_path / "precise", precise)
    # The optimisation never reads the running averages: same weights, same data position.
    for x, y in zip(jax.tree.leaves((a.params, a.opt_state)), jax.tree.leaves((b.params, b.opt_state))):
        np.testing.assert_array_equal(x, y)
    assert data_a == data_b
    # The evaluated (and saved) statistics are the re-estimated ones of the final weights.
    data = factory.make_inputs(precise)
    model, *_ = factory.build_training(precise, data.config.image_size)
    recalibrate = train_lib.make_bn_recalibration(model, precise, data, sharding.make_mesh())
    want = jax.device_get(recalibrate(b))
    for x, y in zip(jax.tree.leaves(b.batch_stats), jax.tree.leaves(want)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a.batch_stats), jax.tree.leaves(b.batch_stats)))


def test_negative_batch_count_is_refused(cache_dir, tmp_path):
    config = tiny_config(cache_dir, precise_bn_batches=-1)
    with pytest.raises(ValueError, match="precise_bn_batches"):
        train_lib.train_and_evaluate(config, tmp_path)
    assert not Checkpointer(tmp_path).latest_step()


def test_kfold_treats_a_config_without_the_field_as_evaluating_with_running_averages(cache_dir):
    config = tiny_config(cache_dir)
    stored = config.to_dict()
    del stored["train"]["precise_bn_batches"]
    assert config_differences(stored, config) == []
    config.train.precise_bn_batches = 4
    assert config_differences(stored, config) == ["train.precise_bn_batches"]
