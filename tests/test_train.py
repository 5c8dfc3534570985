"""The trainer: golden first step, sharded == unsharded, resume, preemption, NaN, corrupt checkpoints.

Runs use the smallest real model (PreActResNet18 on 32x32 from the 64x64
composite) and a 16-subject face bank, so each run is seconds of compute;
the face bank is cached once per session.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from feratt_jax import configs, factory, sharding, validation
from feratt_jax import losses as losses_lib
from feratt_jax import train as train_lib
from feratt_jax.checkpointing import Checkpointer
from feratt_jax.data import synthfaces
from feratt_jax.step import as_rgb, evaluate_split

from trainer_runs import restored_params, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- one step


def _one_step(config, mesh):
    """One train step of ``config`` on ``mesh``; returns (new state, metrics) on host."""
    data = factory.make_inputs(config)
    training = factory.setup_training(config, data, mesh, donate=False)  # the old state is returned too
    state = jax.jit(training.init_state, out_shardings=training.state_sharding)()
    batch = sharding.host_to_global(next(data.train), mesh)
    new_state, metrics = training.train_step(state, batch)
    return jax.device_get(new_state), jax.device_get(metrics), jax.device_get(state)


# Golden values of the first step of preactresnet18:tiny (seed 0). They change
# when the model init, the face generator, the renderer or the loss change;
# if such a change is intended, update them deliberately and say so in the
# commit message.
GOLDEN_FIRST_STEP = {"loss/cross_entropy": 2.0800107, "grad_norm": 11.806664, "param_norm": 70.671455}


def test_one_step_changes_params_and_matches_golden_values(cache_dir):
    config = tiny_config(cache_dir)
    new_state, metrics, old_state = _one_step(config, sharding.make_mesh())
    assert int(new_state.step) == 1
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), old_state.params, new_state.params)
    assert all(jax.tree.leaves(changed))
    # With 8 classes and a fresh model the CE starts near log(8).
    assert abs(float(metrics["loss/cross_entropy"]) - np.log(8)) < 0.7
    for key, golden in GOLDEN_FIRST_STEP.items():
        np.testing.assert_allclose(
            float(metrics[key]),
            golden,
            rtol=1e-4,
            err_msg=f"golden value of {key} changed: update GOLDEN_FIRST_STEP only if the change is intended",
        )


def _adam_moments(opt_state):
    """The first moments of the TorchAdamState inside the optimizer chain (its nesting depends on the decays)."""
    states = jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: hasattr(x, "mu"))
    return next(s for s in states if hasattr(s, "mu")).mu


def test_sharded_step_equals_unsharded_step(cache_dir):
    assert jax.device_count() == 8, "conftest forces 8 CPU devices"
    config = tiny_config(cache_dir)
    sharded, m8, _ = _one_step(config, Mesh(np.asarray(jax.devices()), ("data",)))
    single, m1, _ = _one_step(config, Mesh(np.asarray(jax.devices()[:1]), ("data",)))
    np.testing.assert_allclose(m8["loss/total"], m1["loss/total"], rtol=1e-5)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)
    # Compare gradients through Adam's first moment (= 0.1 * grad after one
    # step): the first Adam update itself is ~lr * sign(grad), whose sign is
    # arbitrary for gradients at float-noise level, so params can only be
    # compared to within 2 * lr.
    # Relative to the norm, not per element: elements are sums of cancelling
    # terms whose float32 error depends on the reduction order. The stem
    # conv's kernel gradient sums 8*32*32 products per element and differs by
    # ~2.5e-3 between 1 and 8 devices; per-device BatchNorm statistics (the bug
    # this guards against) would move it by tens of percent, and the BN
    # running statistics are checked tightly below.
    mu8, mu1 = _adam_moments(sharded.opt_state), _adam_moments(single.opt_state)
    flat8 = np.concatenate([np.ravel(a) for a in jax.tree.leaves(mu8)])
    flat1 = np.concatenate([np.ravel(a) for a in jax.tree.leaves(mu1)])
    assert np.linalg.norm(flat8 - flat1) / np.linalg.norm(flat1) < 5e-3
    for path, a, b in zip(_paths(mu8), jax.tree.leaves(mu8), jax.tree.leaves(mu1)):
        rel = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)
        assert rel < 1e-2, f"gradient of {path} differs by {rel:.2e} (relative norm)"
    lr = config.optimizer.learning_rate
    for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(single.params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=2.01 * lr)
    # BatchNorm running statistics are those of the global batch in both.
    for a, b in zip(jax.tree.leaves(sharded.batch_stats), jax.tree.leaves(single.batch_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _paths(tree):
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


# ------------------------------------------------------------------ resume


def test_resume_is_bit_identical_to_a_straight_run(cache_dir, tmp_path):
    straight = tiny_config(cache_dir, num_steps=4, checkpoint_every=4)
    train_lib.train_and_evaluate(straight, tmp_path / "straight")

    resumed_dir = tmp_path / "resumed"
    for stop_at in (2, 3, 4):  # two resumes
        c = tiny_config(cache_dir, num_steps=stop_at, checkpoint_every=1)
        train_lib.train_and_evaluate(c, resumed_dir)
    assert Checkpointer(resumed_dir).latest_step() == 4

    a, data_a = restored_params(tmp_path / "straight", straight)
    b, data_b = restored_params(resumed_dir, straight)
    assert int(a.step) == int(b.step) == 4
    for x, y in zip(jax.tree.leaves((a.params, a.batch_stats, a.opt_state)), jax.tree.leaves((b.params, b.batch_stats, b.opt_state))):
        np.testing.assert_array_equal(x, y)
    assert data_a == data_b


def _train_losses(workdir) -> dict[int, float]:
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss/total"] for r in rows if "train/loss/total" in r}


def test_curriculum_trains_on_its_preset_for_its_steps_then_on_the_run_preset(cache_dir, tmp_path):
    def config(render_preset, curriculum_steps=0):
        c = tiny_config(cache_dir, num_steps=2, log_every=1, checkpoint_every=2)
        c.data.render_preset = render_preset
        if curriculum_steps:
            c.data.curriculum_preset, c.data.curriculum_steps = "identity", curriculum_steps
        return c

    train_lib.train_and_evaluate(config("train", curriculum_steps=1), tmp_path / "curriculum")
    train_lib.train_and_evaluate(config("identity"), tmp_path / "identity")
    curriculum, identity = _train_losses(tmp_path / "curriculum"), _train_losses(tmp_path / "identity")
    # Same initial state, same batch and seeds: step 1 renders with the curriculum's preset ...
    assert curriculum[1] == identity[1]
    # ... and step 2 with the run's own ("train": rotated and shifted), so it no longer matches.
    assert curriculum[2] != identity[2]


class _RecordingWriter:
    enabled = True

    def __init__(self):
        self.logged = []

    def images(self, step, panels):
        self.logged.append((step, panels))


def test_image_log_reuses_the_evaluation_program(cache_dir):
    # 8 images at an evaluation batch of 16: called on them directly, the
    # forward pass would compile a second time (the quick config logs images
    # at its last step, in the README's timed main job).
    config = tiny_config(cache_dir, eval_batch_size=16)
    mesh = sharding.make_mesh()
    data = factory.make_inputs(config)
    training = factory.setup_training(config, data, mesh)
    state = jax.jit(training.init_state, out_shardings=training.state_sharding)()
    evaluate_split(training.eval_step, state, data.val, 16, mesh, config.model.num_classes)
    compiled = training.eval_step._cache_size()
    writer = _RecordingWriter()
    train_lib.log_images(writer, training.eval_step, state, data.val, 3, 16, mesh)
    assert training.eval_step._cache_size() == compiled
    [(step, panels)] = writer.logged
    assert step == 3 and sorted(panels) == ["images/composite", "images/target_face"]  # the baseline has no attention
    np.testing.assert_array_equal(panels["images/composite"], as_rgb(np.asarray(data.val["image"][:8], np.float32)))


# --------------------------------------------------------- failure handling


def test_sigterm_finishes_the_step_saves_and_exits(cache_dir, tmp_path):
    config = tiny_config(cache_dir, num_steps=10_000, checkpoint_every=10_000, log_every=1)
    metrics_file = tmp_path / "metrics.jsonl"

    def send_sigterm_after_first_step():
        deadline = time.time() + 300
        while time.time() < deadline:
            if metrics_file.exists() and "train/" in metrics_file.read_text():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.2)

    threading.Thread(target=send_sigterm_after_first_step, daemon=True).start()
    result = train_lib.train_and_evaluate(config, tmp_path)
    assert result["signal"] == "SIGTERM"
    saved = Checkpointer(tmp_path).latest_step()
    assert saved == result["stopped_at_step"] >= 1
    # The stop-on-signal checkpoint records the batch the next step consumes
    # (step k consumes batch k - 1), not the one prefetched after it.
    _, data_state = restored_params(tmp_path, config)
    assert data_state == {"next_index": saved}


def test_injected_nan_stops_with_the_term_name_and_keeps_the_checkpoint(cache_dir, tmp_path, monkeypatch):
    train_lib.train_and_evaluate(tiny_config(cache_dir, num_steps=2), tmp_path)
    good, _ = restored_params(tmp_path, tiny_config(cache_dir))

    real = losses_lib.feratt_losses

    def poisoned(outputs, batch, rng=None, **kwargs):
        terms = real(outputs, batch, rng, **kwargs)
        terms["cross_entropy"] = terms["cross_entropy"] * jnp.nan
        return terms

    monkeypatch.setattr(losses_lib, "feratt_losses", poisoned)
    with pytest.raises(FloatingPointError, match=r"'cross_entropy' became nan at step 3.*step 2\) is intact"):
        train_lib.train_and_evaluate(tiny_config(cache_dir, num_steps=4), tmp_path)
    assert Checkpointer(tmp_path).latest_step() == 2
    after, _ = restored_params(tmp_path, tiny_config(cache_dir))
    for x, y in zip(jax.tree.leaves(good.params), jax.tree.leaves(after.params)):
        np.testing.assert_array_equal(x, y)


def test_truncated_newest_checkpoint_falls_back_to_the_previous(cache_dir, tmp_path, capsys):
    config = tiny_config(cache_dir, num_steps=2, checkpoint_every=1)
    train_lib.train_and_evaluate(config, tmp_path)
    newest = tmp_path / "checkpoints" / "2"
    files = sorted(p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 0 and "state" in p.parts)
    assert files, "expected array files in the newest checkpoint"
    for p in files:
        p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 3)])
    state, _ = restored_params(tmp_path, config)
    assert int(state.step) == 1
    assert "step 2" in capsys.readouterr().out


def test_bad_override_and_batch_size_errors(cache_dir, tmp_path):
    config = tiny_config(cache_dir)
    with pytest.raises(ValueError, match="unknown config field 'train.nope'"):
        configs.apply_overrides(config, ["--config.train.nope=1"])
    with pytest.raises(ValueError, match="expects int"):
        configs.apply_overrides(config, ["--config.train.batch_size=1.5"])
    config.train.batch_size = 12  # 8 devices
    with pytest.raises(ValueError, match="train.batch_size=12 is not divisible by the 8 devices"):
        train_lib.train_and_evaluate(config, tmp_path)


def test_generator_and_render_overrides_reach_the_data_config():
    config = configs.load_config(
        "preactresnet18:tiny",
        ["--config.data.generator.posing_variation=0.5", "--config.data.generator.gain_range=(0.5, 0.9)", "--config.data.render.angle=5"],
    )
    data = factory.data_config(config)
    assert data.generator_config().posing_variation == 0.5
    assert data.generator_config().gain_range == (0.5, 0.9)
    assert data.generator_config().au_noise == synthfaces.GeneratorConfig().au_noise  # the rest keep their defaults
    assert data.render_config().angle == 5
    # A misspelt field is named before any work is done; a deeper path is no field at all.
    bad = configs.load_config("preactresnet18:tiny", ["--config.data.generator.posing_variaton=0.5"])
    with pytest.raises(ValueError, match="posing_variaton"):
        validation.validate(bad, device_count=1)
    with pytest.raises(ValueError, match="unknown config field 'data.generator.a.b'"):
        configs.apply_overrides(bad, ["--config.data.generator.a.b=1"])


# ------------------------------------------------- early stopping, plateau


def test_plateau_scale_and_early_stopping_count_evaluations_by_hand():
    from feratt_jax import stopping

    plateau = stopping.make_plateau(factor=0.5, patience=2)
    tx = optax.chain(optax.sgd(1.0), stopping.scale_by_plateau(plateau))
    params = {"w": jnp.ones(3)}
    opt_state = tx.init(params)
    early = stopping.EarlyStopping(patience=3)
    best, scales = -1.0, []
    # Accuracy 0.5, 0.6, then three evaluations without a better one, then a better one, then two more.
    for step, acc in enumerate([0.5, 0.6, 0.6, 0.55, 0.6, 0.7, 0.7, 0.7], start=1):
        early.record(step, acc > best)
        best = max(best, acc)
        opt_state = stopping.plateau_update(plateau, opt_state, acc)
        scales.append(float(stopping.lr_scale(opt_state)))
        if step == 5:
            assert early.should_stop and early.best_step == 2 and early.evals_without_improvement == 3
    # Patience 2: the 2nd evaluation without improvement (step 4) halves the scale, the count restarts,
    # and step 8 (2nd without improvement after step 6's best) halves it again.
    assert scales == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25]
    assert not early.should_stop and early.state_dict() == {"best_step": 6, "evals_without_improvement": 2}
    # The train step's updates carry the scale; the plateau state itself only moves at evaluations.
    updates, after = tx.update({"w": jnp.ones(3)}, opt_state, params)
    np.testing.assert_allclose(updates["w"], -0.25 * np.ones(3))
    assert after[-1] == opt_state[-1]


def test_early_stopping_and_plateau_survive_resume(cache_dir, tmp_path, capsys):
    def config(num_steps):
        c = tiny_config(cache_dir, num_steps=num_steps, checkpoint_every=100, eval_every=1, early_stopping_patience=2)
        c.optimizer.schedule = "plateau"
        c.optimizer.plateau_patience = 1
        c.optimizer.plateau_factor = 0.5
        return c

    straight = train_lib.train_and_evaluate(config(12), tmp_path / "straight")
    said = capsys.readouterr().out
    stop = straight["early_stopping"]
    assert stop["stopped"] and straight["step"] < 12, straight
    assert f"early stopping at step {straight['step']}: validation accuracy has not improved for 2 evaluations" in said
    assert stop["evals_without_improvement"] == 2 and stop["best_step"] == straight["step"] - 2
    a, _ = restored_params(tmp_path / "straight", config(12))
    assert float(a.opt_state[-1].scale) < 1.0  # the plateau cut the rate at least once
    # The validation confusion matrix went to TensorBoard as an image at each evaluation (eval_every=1).
    events = b"".join(p.read_bytes() for p in (tmp_path / "straight" / "tensorboard").glob("events*"))
    assert events.count(b"val/confusion_matrix") == straight["step"]
    assert '"train/early_stopped": 1.0' in (tmp_path / "straight" / "metrics.jsonl").read_text()

    # The same run, stopped one step before the early stop and resumed: it stops at the same step
    # with the same weights and plateau state.
    resumed_dir = tmp_path / "resumed"
    first = train_lib.train_and_evaluate(config(straight["step"] - 1), resumed_dir)
    assert "stopped" not in first.get("early_stopping", {}) or not first["early_stopping"]["stopped"]
    again = train_lib.train_and_evaluate(config(12), resumed_dir)
    assert again["step"] == straight["step"] and again["early_stopping"] == stop
    b, _ = restored_params(resumed_dir, config(12))
    for x, y in zip(jax.tree.leaves((a.params, a.opt_state)), jax.tree.leaves((b.params, b.opt_state))):
        np.testing.assert_array_equal(x, y)
    # Resuming a run that already stopped early trains no further.
    capsys.readouterr()
    third = train_lib.train_and_evaluate(config(12), resumed_dir)
    assert third["step"] == straight["step"] and "early stopping at step" in capsys.readouterr().out
