"""optimizer.weight_decay is torch Adam's L2 term; optimizer.decoupled_weight_decay is AdamW's decay."""

import json

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from feratt_jax import configs, factory, validation

LR, STEPS = 1e-2, 12


def _params_and_grads():
    rng = np.random.default_rng(0)
    params = {"conv": rng.normal(size=(3, 4)).astype(np.float32), "bias": rng.normal(size=(4,)).astype(np.float32)}
    # Shrinking gradients, so the AMSGrad maximum matters too.
    grads = [{k: (rng.normal(size=v.shape) * 0.8**i).astype(np.float32) for k, v in params.items()} for i in range(STEPS)]
    return params, grads


def _ours(weight_decay: float, decoupled: float, amsgrad: bool) -> dict:
    c = configs.base_config("ferattention").optimizer
    c.learning_rate, c.amsgrad, c.weight_decay, c.decoupled_weight_decay = LR, amsgrad, weight_decay, decoupled
    tx = factory.make_optimizer(c, factory.make_learning_rate(c, STEPS))  # the trainer's own optimizer
    params, grads = _params_and_grads()
    p = {k: jnp.asarray(v) for k, v in params.items()}
    state = tx.init(p)
    for g in grads:
        updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, p)
        p = optax.apply_updates(p, updates)
    return {k: np.asarray(v) for k, v in p.items()}


def _torch(optimizer: str, weight_decay: float, amsgrad: bool) -> dict:
    torch = pytest.importorskip("torch")
    params, grads = _params_and_grads()
    tp = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    opt = getattr(torch.optim, optimizer)(list(tp.values()), lr=LR, weight_decay=weight_decay, amsgrad=amsgrad)
    for g in grads:
        for k, v in tp.items():
            v.grad = torch.tensor(g[k])
        opt.step()
    return {k: v.detach().numpy() for k, v in tp.items()}


@pytest.mark.parametrize("amsgrad", [True, False])
def test_weight_decay_is_torch_adam_and_decoupled_is_adamw(amsgrad):
    adam_l2, adamw = _torch("Adam", 0.5, amsgrad), _torch("AdamW", 0.5, amsgrad)
    ours_l2, ours_w = _ours(0.5, 0.0, amsgrad), _ours(0.0, 0.5, amsgrad)
    for k in adam_l2:
        # The two decays differ by far more than the tolerance, so a swap cannot pass.
        assert np.abs(adam_l2[k] - adamw[k]).max() > 1e-3
        np.testing.assert_allclose(ours_l2[k], adam_l2[k], rtol=1e-5, atol=1e-6, err_msg=f"weight_decay vs torch Adam: {k}")
        np.testing.assert_allclose(ours_w[k], adamw[k], rtol=1e-5, atol=1e-6, err_msg=f"decoupled_weight_decay vs torch AdamW: {k}")


def _stored(weight_decay: float) -> dict:
    """A config.json written before optimizer.decoupled_weight_decay existed."""
    c = configs.load_config("ferattention:tiny").to_dict()
    del c["optimizer"]["decoupled_weight_decay"]
    c["optimizer"]["weight_decay"] = weight_decay
    return json.loads(json.dumps(c))


def test_stored_config_before_the_split_meant_adamw(tmp_path):
    old = _stored(0.01)
    assert validation.upgrade_stored_config(old)["optimizer.decoupled_weight_decay"] == 0.01
    assert validation.upgrade_stored_config(old)["optimizer.weight_decay"] == 0.0
    # Resuming with the old command line would now mean Adam's L2 term: refused, naming the fix.
    same_words = configs.load_config("ferattention:tiny", ["--config.optimizer.weight_decay=0.01"])
    with pytest.raises(ValueError, match=r"--config.optimizer.decoupled_weight_decay=0.01 --config.optimizer.weight_decay=0.0"):
        validation.check_resume(old, same_words, tmp_path)
    same_run = configs.load_config("ferattention:tiny", ["--config.optimizer.decoupled_weight_decay=0.01"])
    validation.check_resume(old, same_run, tmp_path)  # the same trajectory: accepted
    # Without decay the old and new configs mean the same.
    validation.check_resume(_stored(0.0), configs.load_config("ferattention:tiny"), tmp_path)


def test_without_decay_the_optimizer_state_has_the_layout_checkpoints_had_before_the_split():
    """Workdirs saved before the two decays existed hold (TorchAdamState, scale-by-lr state): a resume restores into that tree."""
    import jax

    from feratt_jax import optimizers

    c = configs.base_config("ferattention").optimizer
    schedule = factory.make_learning_rate(c, STEPS)
    params = {k: jnp.asarray(v) for k, v in _params_and_grads()[0].items()}
    before_split = optax.chain(optimizers.scale_by_torch_adam(amsgrad=c.amsgrad), optax.scale_by_learning_rate(schedule))
    ours = factory.make_optimizer(c, schedule)
    assert jax.tree.structure(ours.init(params)) == jax.tree.structure(before_split.init(params))
    c.weight_decay = 0.01  # with a decay the chain gains a link, and that is a new layout
    assert jax.tree.structure(factory.make_optimizer(c, schedule).init(params)) != jax.tree.structure(before_split.init(params))
